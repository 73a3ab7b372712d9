"""Every model family through the same prompt, generation, SFT, GRPO and save code, on tiny
randomly initialised models built offline from each family's transformers config classes
(``vqa-grpo model tiny --family F``), with their real processors.

Every batch here holds images of different sizes, and for the families whose image-token count
depends on the image (Qwen2-VL, LLaVA-NeXT, Idefics3, Phi-4-multimodal) prompts of different
lengths, hence different left padding. Shapes: B prompts, P prompt tokens, C completion tokens,
G completions per prompt, R = B*G rows.
"""

from __future__ import annotations

import json
import re

import pytest
import torch
from family_models import model_config
from PIL import Image, ImageDraw
from plans import rollout

from vqa_grpo.config import ModelConfig
from vqa_grpo.config_load import load_config
from vqa_grpo.models.adapters import (
    Gemma3Adapter,
    Idefics3Adapter,
    LlavaAdapter,
    Phi3VisionAdapter,
    Phi4MultimodalAdapter,
    Qwen2VLAdapter,
)
from vqa_grpo.models.generation import generate
from vqa_grpo.models.loading import load_model
from vqa_grpo.models.plan import PLAIN
from vqa_grpo.models.scoring import answer_ids, completion_logprobs
from vqa_grpo.models.tiny import TINY_FAMILIES, build_tiny
from vqa_grpo.training.checkpoint import save_model

CPU = torch.device("cpu")
QUESTIONS = ["Is there a red circle?", "How many objects are there left of the blue square?"]

# family -> (adapter class, processor outputs besides input_ids and attention_mask)
EXPECTED = {
    "qwen2_vl": (Qwen2VLAdapter, {"pixel_values", "image_grid_thw", "mm_token_type_ids"}),
    "qwen2_5_vl": (Qwen2VLAdapter, {"pixel_values", "image_grid_thw", "mm_token_type_ids"}),
    "llava": (LlavaAdapter, {"pixel_values"}),
    "llava_next": (LlavaAdapter, {"pixel_values", "image_sizes"}),
    "idefics3": (Idefics3Adapter, {"pixel_values", "pixel_attention_mask"}),
    "smolvlm": (Idefics3Adapter, {"pixel_values", "pixel_attention_mask"}),
    "gemma3": (Gemma3Adapter, {"pixel_values", "token_type_ids"}),
    "phi4_multimodal": (Phi4MultimodalAdapter, {"image_pixel_values", "image_sizes", "image_attention_mask"}),
    "phi3_v": (Phi3VisionAdapter, {"pixel_values", "image_sizes"}),
}

# Parameters that get no gradient by design: LLaVA and Phi-4 take the vision features of the
# second-to-last layer (the last layer and the final norm are unused), SigLIP's pooling head is
# unused by Gemma 3 and Phi-4, and Phi-4's audio encoder sees no audio.
UNUSED = {
    "llava": r"model\.vision_tower\.(encoder\.layers\.1|post_layernorm)\..*",
    "llava_next": r"model\.vision_tower\.(encoder\.layers\.1|post_layernorm)\..*",
    "gemma3": r"model\.vision_tower\.head\..*",
    "phi3_v": r"model\.vision_embed_tokens\.img_processor\.vision_model\.(encoder\.layers\.1|post_layernorm)\..*",
    "phi4_multimodal": (
        r"model\.embed_tokens_extend\.(image_embed\.img_processor\.(encoder\.layers\.1|post_layernorm|head)"
        r"|audio_embed)\..*"
    ),
}


def test_every_tiny_family_is_tested_here_and_offered_by_the_cli(tmp_path, capsys):
    from vqa_grpo.cli import build_parser, main

    assert set(TINY_FAMILIES) == set(EXPECTED)
    tiny_help = build_parser().parse_args(["model", "tiny", "--out", "x"])  # the default family
    assert tiny_help.family == "qwen2_vl"
    assert main(["model", "tiny", "--family", "phi3", "--out", str(tmp_path / "m")]) == 2
    assert capsys.readouterr().err.strip() == (
        "error: no tiny builder for family 'phi3'; choose one of " + ", ".join(TINY_FAMILIES)
    )
    assert not (tmp_path / "m").exists()
    assert main(["model", "tiny", "--family", "gemma3", "--out", str(tmp_path / "g")]) == 0
    assert (tmp_path / "g" / "config.json").is_file() and (tmp_path / "g" / "processor_config.json").is_file()


def image(width: int, height: int, colour=(220, 40, 40)) -> Image.Image:
    im = Image.new("RGB", (width, height), (128, 128, 128))
    ImageDraw.Draw(im).ellipse([width // 4, height // 4, width // 2, height // 2], fill=colour)
    return im


# Two sizes and shapes: a 112 px square and a 28 x 56 portrait.
IMAGES = [image(112, 112), image(28, 56, (40, 80, 230))]


@pytest.fixture(scope="module", params=list(EXPECTED))
def family(request, tmp_path_factory):
    """(name, model directory, loaded model) for each family, built once for this module. Phi-3-vision
    is the tiny copy of the hub's download (conftest.py: family_dirs), loaded at num_crops 1."""
    name = request.param
    if name == "phi3_v":
        model_dir = request.getfixturevalue("family_dirs")(name)
    else:
        model_dir = build_tiny(name, tmp_path_factory.mktemp(name) / "model", seed=0)
    return name, model_dir, load_model(model_config(model_dir), CPU)


def test_adapter_is_detected_and_prompts_carry_the_family_tensors(family):
    name, _, lm = family
    adapter_cls, keys = EXPECTED[name]
    assert type(lm.adapter) is adapter_cls
    batch = lm.adapter.encode_prompts(lm.processor, IMAGES, QUESTIONS)
    assert set(batch.extra) == keys
    B, P = batch.input_ids.shape
    assert B == 2 and batch.attention_mask.shape == (B, P)
    # Left padding: every row ends with a real token; padding only at the start of a row.
    mask = batch.attention_mask
    assert mask[:, -1].tolist() == [1, 1]
    assert torch.equal(mask, mask.cummax(dim=1).values)
    for key in ("mm_token_type_ids", "token_type_ids"):
        if key in batch.extra:  # per-token: shaped like input_ids, 1 exactly on the image tokens
            image_id = lm.processor.tokenizer.convert_tokens_to_ids(lm.processor.tokenizer.image_token)
            assert torch.equal(batch.extra[key] == 1, batch.input_ids == image_id)
    if name in ("qwen2_vl", "qwen2_5_vl"):
        # Flattened across images: one row per 14 px patch. 112 px -> 8x8 patches; 28 x 56
        # (w x h) is 1568 px, scaled up past min_pixels (56*56) in 28 px steps to 56 x 84 ->
        # 6 rows x 4 columns of patches. One image token per 2x2 patches: 16 and 6.
        assert batch.extra["image_grid_thw"].tolist() == [[1, 8, 8], [1, 6, 4]]
        assert batch.extra["pixel_values"].shape[0] == 64 + 24
        assert (batch.input_ids == lm.model.config.image_token_id).sum(1).tolist() == [16, 6]
    if name == "idefics3":
        # 112 px -> 2x2 tiles of 32 px + the whole image; 28x56 -> 1x2 tiles + the whole image;
        # zero-padded to 5 tiles, 4 image tokens a tile.
        assert batch.extra["pixel_values"].shape == (2, 5, 3, 32, 32)
        assert batch.extra["pixel_attention_mask"].flatten(2).any(-1).sum(1).tolist() == [5, 3]
        assert (batch.input_ids == lm.model.config.image_token_id).sum(1).tolist() == [20, 12]
    if name == "llava_next":
        assert batch.extra["image_sizes"].tolist() == [[112, 112], [56, 28]]
    if name == "phi4_multimodal":
        # Both fit one 448 px crop (+ the global view). Image tokens: 256 (global) + 1 + the
        # crop's 2x-downsampled attention mask + its first column + 16. 112 px fills the whole
        # crop: 256 + 1 + 16*16 + 16 + 16 = 545; 28 x 56 fills half its width: 256 + 1 + 16*8 +
        # 16 + 16 = 417.
        assert batch.extra["image_sizes"].tolist() == [[448, 448], [448, 448]]
        assert (batch.input_ids == lm.processor.image_token_id).sum(1).tolist() == [545, 417]


def test_generation_never_emits_image_tokens_and_scoring_matches_generation(family):
    name, _, lm = family
    prompts = lm.adapter.encode_prompts(lm.processor, IMAGES, QUESTIONS)
    suppressed = lm.adapter.suppressed_token_ids(lm.processor)
    image_tokens = lm.adapter.image_token_mask(lm.processor, prompts.input_ids)
    assert image_tokens.any(dim=1).all()  # every prompt holds its image
    layout = prompts.input_ids[image_tokens]
    if name == "phi3_v":  # the official layout: image k's tokens are -k, never a vocabulary id
        assert set(layout.tolist()) == {-1}
    else:
        assert set(layout.tolist()) <= set(suppressed)

    # The log-probs that scoring computes for a greedy completion are those generate saw.
    lm.model.eval()
    with torch.no_grad():
        out = lm.model.generate(
            **prompts.model_inputs(),
            max_new_tokens=3,
            do_sample=False,
            output_logits=True,
            return_dict_in_generate=True,
            suppress_tokens=suppressed,
            eos_token_id=[],
            pad_token_id=lm.processor.tokenizer.pad_token_id,
        )
        ids = out.sequences[:, prompts.input_ids.shape[1] :]  # [B, 3]
        seen = torch.stack([torch.log_softmax(x.float(), -1) for x in out.logits], 1).gather(-1, ids[..., None])[..., 0]
        scored, _ = completion_logprobs(
            lm.model, lm.adapter, prompts, ids, torch.ones_like(ids), PLAIN, with_entropy=False
        )
    torch.testing.assert_close(scored, seen, atol=1e-5, rtol=0)

    # Image-layout tokens pushed to the top of every step's logits are still never generated.
    def boost(module, args, output):
        output = output.clone()
        output[..., suppressed] += 1e4
        return output

    handle = lm.model.get_output_embeddings().register_forward_hook(boost)
    try:
        comp = generate(lm.model, lm.adapter, lm.processor, lm.adapter.repeat(prompts, 2), PLAIN, max_new_tokens=3)
    finally:
        handle.remove()
    assert comp.ids.shape == (4, 3)
    assert not torch.isin(comp.ids, torch.tensor(suppressed)).any()


def test_sft_and_grpo_gradients_reach_text_and_vision_and_save_reloads_exactly(family, tmp_path):
    from vqa_grpo.config import GRPOConfig, RewardConfig
    from vqa_grpo.data.types import VQAExample
    from vqa_grpo.grpo.rollout import grpo_objective

    name, _, lm = family
    model, adapter, processor = lm.model, lm.adapter, lm.processor
    model.train()
    prompts = adapter.encode_prompts(processor, IMAGES, QUESTIONS)
    stop = adapter.stop_token_ids(processor, model)[0]

    # SFT: the NLL of the answers; every parameter the architecture uses gets a gradient.
    ids, mask = answer_ids(processor.tokenizer, ["yes", "two"], stop)
    model.zero_grad()
    logp, _ = completion_logprobs(model, adapter, prompts, ids, mask, PLAIN, with_entropy=False)
    (-(logp * mask).sum() / mask.sum()).backward()
    no_grad = {n for n, p in model.named_parameters() if p.grad is None or not p.grad.any()}
    unused = re.compile(UNUSED.get(name, r"$^"))
    assert no_grad == {n for n, _ in model.named_parameters() if unused.fullmatch(n)}
    assert any(re.fullmatch(adapter.vision_pattern, n) and p.grad.any() for n, p in model.named_parameters())

    # GRPO: a rollout of G = 2 sampled completions per prompt (B = 2, mixed image sizes), then the
    # clipped objective with advantages +1 / -1 inside each group, so the gradient is not zero.
    examples = [
        VQAExample(
            id=str(i),
            image_loader=lambda im=im: im,
            question=q,
            answer="yes",
            answers=["yes"],
            question_type="is there",
            answer_type="yes/no",
        )
        for i, (im, q) in enumerate(zip(IMAGES, QUESTIONS))
    ]
    cfg = GRPOConfig(num_generations=2, max_completion_length=3, temperatures=[1.0], top_ps=[1.0])
    torch.manual_seed(0)
    ro = rollout(model, adapter, processor, examples, IMAGES, cfg, RewardConfig(), CPU)
    assert ro.completion_ids.shape[0] == 4
    assert not torch.isin(ro.completion_ids, torch.tensor(adapter.suppressed_token_ids(processor))).any()
    ro.advantages = torch.tensor([1.0, -1.0, 1.0, -1.0])
    ro.completion_mask[:, 0] = 1  # at least one scored token per completion
    model.zero_grad()
    loss, stats = grpo_objective(model, adapter, processor, ro, cfg)
    loss.backward()
    assert torch.isfinite(loss)
    assert any(
        re.fullmatch(adapter.vision_pattern, n) and p.grad is not None and p.grad.any()
        for n, p in model.named_parameters()
    )

    # One optimiser step, save, reload: the reloaded model computes the same logits.
    torch.optim.SGD(model.parameters(), lr=0.1).step()
    model.zero_grad()
    model.eval()
    with torch.no_grad():
        before = model(**prompts.model_inputs(), use_cache=False).logits
    save_model(model, processor, tmp_path / "saved")
    again = load_model(ModelConfig(name_or_path=str(tmp_path / "saved")), CPU, trainable=False)
    assert type(again.adapter) is type(adapter) and type(again.model) is type(model)
    with torch.no_grad():
        inputs = again.adapter.encode_prompts(again.processor, IMAGES, QUESTIONS).model_inputs()
        after = again.model(**inputs, use_cache=False).logits
    torch.testing.assert_close(after, before, atol=1e-5, rtol=0)


# ---- the training loop, family by family ----------------------------------------------------------


@pytest.fixture(scope="module")
def mixed_sizes_dir(tmp_path_factory):
    """12 synthetic questions whose images all differ in size and shape (28 x 140 up to 116 x 84)."""
    from vqa_grpo.data.synthetic import synthesize

    data = synthesize(tmp_path_factory.mktemp("mixed"), n=12, seed=0)
    for i, row in enumerate(json.loads(s) for s in data.read_text().splitlines()):
        path = data.parent / row["image"]
        Image.open(path).convert("RGB").resize((28 + 8 * i, 140 - 5 * i)).save(path)
    return data.parent


@pytest.mark.slow
def test_one_sft_step_then_one_grpo_step_through_the_loop_and_the_model_reloads(family, mixed_sizes_dir, tmp_path):
    from vqa_grpo.training.loop import run

    name, model_dir, _ = family
    base = [
        f"data.path={mixed_sizes_dir}",
        "data.eval_fraction=0.25",
        "data.max_eval_samples=2",
        "train.device=cpu",
        "train.cpu_threads=1",
        "train.progress=false",
        "train.max_steps=1",
        "train.save_steps=0",
        "train.learning_rate=1e-3",
        "train.report_to=none",
        "eval.batch_size=2",
        "eval.max_new_tokens=2",
        *(["model.num_crops=1"] if name == "phi3_v" else []),  # the download's preprocessor says 16
    ]
    sft = run(
        load_config(
            None,
            [
                *base,
                f"model.name_or_path={model_dir}",
                f"train.output_dir={tmp_path / 'sft'}",
                "train.per_device_batch_size=3",
            ],
        ),
        "sft",
    )
    grpo = run(
        load_config(
            None,
            [
                *base,
                f"model.name_or_path={sft.final_dir}",
                f"train.output_dir={tmp_path / 'grpo'}",
                "train.per_device_batch_size=2",
                "grpo.num_generations=2",
                "grpo.max_completion_length=3",
                "grpo.temperatures=[1.0]",
                "grpo.top_ps=[1.0]",
            ],
        ),
        "grpo",
    )
    for result in (sft, grpo):
        steps = [json.loads(s) for s in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
        assert [r["step"] for r in steps if "loss" in r] == [1]
        assert all(torch.isfinite(torch.tensor(r["loss"])) for r in steps if "loss" in r)
        assert [r["step"] for r in steps if "eval/vqa_accuracy" in r] == [1]
    groups = [json.loads(s) for s in (grpo.run_dir / "completions.jsonl").read_text().splitlines()]
    assert [g["step"] for g in groups] == [1, 1]  # each question group of the step (batch 2)
    reloaded = load_model(ModelConfig(name_or_path=str(grpo.final_dir)), CPU, trainable=False)
    assert type(reloaded.adapter) is EXPECTED[name][0]
    assert reloaded.model.config.model_type == name


# ---- LoRA targets and the frozen vision tower, family by family -------------------------------------


def test_default_lora_targets_are_the_language_models_projections_only(family):
    from peft import LoraConfig, get_peft_model

    name, model_dir, lm = family
    model = load_model(ModelConfig(name_or_path=str(model_dir)), CPU, trainable=False).model  # a fresh copy
    peft_model = get_peft_model(model, LoraConfig(r=2, lora_alpha=4, target_modules=lm.adapter.lora_targets()))
    adapted = sorted({n.split(".lora_A")[0] for n, _ in peft_model.named_parameters() if ".lora_A" in n})
    leaves = {n.rsplit(".", 1)[1] for n in adapted}
    fused = name in ("phi4_multimodal", "phi3_v")  # Phi-3/Phi-4 fuse q, k, v and gate, up
    assert leaves == (
        {"qkv_proj", "o_proj", "gate_up_proj", "down_proj"}
        if fused
        else {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
    )
    layers = 4 if name == "qwen2_vl" else 2  # the demo's Qwen2-VL has 4 text layers, the others 2
    assert len(adapted) == layers * len(leaves)
    assert not any(re.fullmatch(lm.adapter.vision_pattern, n + ".weight") for n in adapted)


def test_freeze_vision_freezes_the_vision_tower_and_nothing_else(family):
    name, model_dir, lm = family
    model = load_model(ModelConfig(name_or_path=str(model_dir), freeze_vision=True), CPU).model
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    vision = {n for n, _ in model.named_parameters() if re.fullmatch(lm.adapter.vision_pattern, n)}
    assert frozen == vision and len(vision) > 0
    assert not any(
        re.search(r"(^|\.)embed_tokens\.", n) or "lm_head" in n or "language_model" in n or "text_model" in n
        for n in frozen
    )
