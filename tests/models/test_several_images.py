"""Several images per prompt, and a video, on every tiny family with its real processor, in fp32
on the CPU.

One batch mixes prompts of 0, 1, 2 and 3 images of different sizes and shapes (56 px square,
28 x 84 portrait, 84 x 56 landscape), one question placing its images with ``<image>``
placeholders and the others with the images first. The adapter must place them where the
question says, repeat each prompt's per-image tensors as a block, and the shared prefix and the
fused prefill (models/prefix.py) must give the plain path's log-probs (within 1e-5) and
gradients (within 1e-4, as tests/models/test_prefix.py has them); two micro-batches with other
mixes of images must add up to the one batch's gradient.

Shapes: B = 4 prompts, G = 2 completions each, R = 8 rows, C = 3 completion tokens.
"""

from __future__ import annotations

import copy
import itertools
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from family_models import model_config
from PIL import Image, ImageDraw
from test_prefix import assert_grads_close

from vqa_grpo.data.types import BadExample, Video, VQAExample
from vqa_grpo.errors import UserError
from vqa_grpo.models.adapters import FamilyAdapter, adapter_for
from vqa_grpo.models.generation import generate
from vqa_grpo.models.loading import check_images, load_model
from vqa_grpo.models.plan import ForwardPlan
from vqa_grpo.models.prefix import encode_prefix
from vqa_grpo.models.scoring import completion_logprobs
from vqa_grpo.models.tiny import TINY_FAMILIES

CPU = torch.device("cpu")
G, C = 2, 3


def image(width: int, height: int, colour) -> Image.Image:
    im = Image.new("RGB", (width, height), (128, 128, 128))
    ImageDraw.Draw(im).ellipse([width // 4, height // 4, width // 2, height // 2], fill=colour)
    return im


SQUARE, PORTRAIT, LANDSCAPE = image(56, 56, (220, 40, 40)), image(28, 84, (40, 80, 230)), image(84, 56, (40, 200, 40))
VISUALS = [[], [SQUARE], [PORTRAIT, LANDSCAPE], [LANDSCAPE, SQUARE, PORTRAIT]]  # 0, 1, 2, 3 images
QUESTIONS = [
    "Is there a red circle?",
    "How many objects are there?",
    "Is <image> left or right of <image>?",
    "What color is the square?",
]
PATHS = {
    "shared prefix": ForwardPlan(sampling="shared prefix", loss="shared prefix"),
    "fused prefill": ForwardPlan(sampling="shared prefix", loss="fused prefill"),
}


@pytest.fixture(scope="module")
def models(family_dirs):
    """Each family's tiny model, loaded once per (family, LoRA) for this module, in eval mode (no dropout)."""
    loaded = {}

    def get(family, lora=False):
        if (family, lora) not in loaded:
            lm = load_model(model_config(family_dirs(family), lora=lora, lora_r=4), CPU)
            lm.model.eval()
            for name, p in lm.model.named_parameters():  # LoRA B starts at 0: move it so the adapter matters
                if "lora_B" in name:
                    torch.nn.init.normal_(p, std=0.05, generator=torch.Generator().manual_seed(0))
            loaded[family, lora] = lm
        return loaded[family, lora]

    return get


def completions(lm, rows: int, seed: int = 0):
    """``rows`` random word-token completions of C tokens, right-padded at different lengths: ids, mask."""
    tok = lm.processor.tokenizer
    words = torch.tensor(sorted(i for t, i in tok.get_vocab().items() if t.isalpha()))
    ids = words[torch.randint(len(words), (rows, C), generator=torch.Generator().manual_seed(seed))]
    lengths = torch.tensor([C, 1, 2, C, 2, C, 1, C])[:rows]
    mask = (torch.arange(C)[None, :] < lengths[:, None]).long()
    return ids.masked_fill(mask == 0, tok.pad_token_id), mask


def logprobs_and_grads(lm, prompts, ids, mask, path: str, weights: torch.Tensor):
    """Log-probs [R, C] on ``path`` and each parameter's gradient of sum(logp * mask * weights)."""
    lm.model.zero_grad(set_to_none=True)
    plan = replace(PATHS[path], position_rule=lm.adapter.position_rule) if path in PATHS else ForwardPlan()
    prefix = encode_prefix(lm.model, prompts, G, plan.position_rule) if path == "fused prefill" else None
    logp, _ = completion_logprobs(
        lm.model, lm.adapter, prompts, ids, mask, plan, with_entropy=False, group_size=G, prefix=prefix
    )
    (logp * mask * weights).sum().backward()
    return logp.detach() * mask, {n: p.grad.clone() for n, p in lm.model.named_parameters() if p.grad is not None}


def run_lengths(tokenizer, ids: list[int]) -> str:
    """A prompt's tokens, decoded, each run of one repeated token written once with its count."""
    out = []
    for token, run in itertools.groupby(ids):
        n = len(list(run))
        out.append(tokenizer.decode([token]) + (f"*{n}" if n > 1 else ""))
    return " ".join(out)


# The 2-image prompt with placeholders, the 3-image prompt without: as each family's chat template
# writes them, and (tokenised) with each image's tokens counted.
PLACED = {
    "qwen2_vl": (
        "<|im_start|>user\nIs <|vision_start|><|image_pad|><|vision_end|> left or right of "
        "<|vision_start|><|image_pad|><|vision_end|>?<|im_end|>\n<|im_start|>assistant\n",
        "<|im_start|>user\n"
        + "<|vision_start|><|image_pad|><|vision_end|>" * 3
        + "What color is the square?<|im_end|>\n<|im_start|>assistant\n",
        # 28 x 84 is scaled up past min_pixels to 56 x 112: 4 x 8 patches, 8 tokens; 84 x 56: 6 x 4 patches, 6.
        "<|im_start|> user is <|vision_start|> <|image_pad|>*8 <|vision_end|> left or right of <|vision_start|> "
        "<|image_pad|>*6 <|vision_end|> ? <|im_end|> <|im_start|> assistant",
    ),
    "llava": (  # the template shows every image first: the placeholders become the processor's image token
        "USER: Is <image> left or right of <image>? ASSISTANT:",
        "USER: <image>\n<image>\n<image>\nWhat color is the square? ASSISTANT:",
        "user : is <image>*16 left or right of <image>*16 ? assistant :",  # every image resized to 56 px
    ),
    "llava_next": (
        "USER: Is <image> left or right of <image>? ASSISTANT:",
        "USER: <image>\n<image>\n<image>\nWhat color is the square? ASSISTANT:",
        "user : is <image>*16 left or right of <image>*14 ? assistant :",  # anyres: by the image's shape
    ),
    "idefics3": (
        "<|im_start|>User:Is <image> left or right of <image>?<end_of_utterance>\nAssistant:",
        "<|im_start|>User:<image><image><image>What color is the square?<end_of_utterance>\nAssistant:",
        # 32 px tiles: the portrait 1 x 2 tiles and the whole image, the landscape 2 x 2 and the whole.
        "<|im_start|> user : is <fake_token_around_image> <row_1_col_1> <image>*4 <fake_token_around_image> "
        "<row_2_col_1> <image>*4 <fake_token_around_image> <global-img> <image>*4 <fake_token_around_image> left "
        "or right of <fake_token_around_image> <row_1_col_1> <image>*4 <fake_token_around_image> <row_1_col_2> "
        "<image>*4 <fake_token_around_image> <row_2_col_1> <image>*4 <fake_token_around_image> <row_2_col_2> "
        "<image>*4 <fake_token_around_image> <global-img> <image>*4 <fake_token_around_image> ? <end_of_utterance> "
        "assistant :",
    ),
    "gemma3": (
        "<bos><start_of_turn>user\nIs <start_of_image> left or right of <start_of_image>?<end_of_turn>\n"
        "<start_of_turn>model\n",
        "<bos><start_of_turn>user\n<start_of_image><start_of_image><start_of_image>What color is the square?"
        "<end_of_turn>\n<start_of_turn>model\n",
        "<bos> <start_of_turn> user is <start_of_image> <image_soft_token>*4 <end_of_image> left or right of "
        "<start_of_image> <image_soft_token>*4 <end_of_image> ? <end_of_turn> <start_of_turn> model",
    ),
    "phi4_multimodal": (
        "<|user|>Is <|image|> left or right of <|image|>?<|end|><|assistant|>",
        "<|user|><|image|><|image|><|image|>What color is the square?<|end|><|assistant|>",
        "<|user|> is <|image|>*385 left or right of <|image|>*460 ? <|end|> <|assistant|>",  # by the crop's fill
    ),
    "phi3_v": (
        "<|user|>\nIs <|image_1|> left or right of <|image_2|>?<|end|>\n<|assistant|>\n",
        "<|user|>\n<|image_1|>\n<|image_2|>\n<|image_3|>\nWhat color is the square?<|end|>\n<|assistant|>\n",
        None,  # the hub's tokenizer: the image ids are checked in test_phi3_v_two_images_from_the_hubs_files
    ),
}
PLACED["qwen2_5_vl"] = PLACED["qwen2_vl"]
PLACED["smolvlm"] = PLACED["idefics3"]


@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_images_are_placed_at_their_placeholders_or_first(family, models):
    lm = models(family)
    text, first, tokens = PLACED[family]
    assert lm.adapter.prompt_text(lm.processor, QUESTIONS[2], VISUALS[2]) == text
    assert lm.adapter.prompt_text(lm.processor, QUESTIONS[3], VISUALS[3]) == first
    batch = lm.adapter.encode_prompts(lm.processor, VISUALS, QUESTIONS)
    assert batch.images_per_prompt == (0, 1, 2, 3)
    if tokens is not None:
        row = batch.input_ids[2][batch.attention_mask[2].bool()].tolist()
        assert run_lengths(lm.processor.tokenizer, row) == tokens
    image_tokens = lm.adapter.image_token_mask(lm.processor, batch.input_ids)
    assert image_tokens[0].sum() == 0 and (image_tokens[1:].sum(1) > 0).all()  # the text-only prompt holds none


def test_llava_next_with_llava_hfs_own_template_keeps_the_placeholders(models):
    """llava-hf's LLaVA-NeXT template (TRL ships a copy) renders every image, then every text: the
    question's placeholders become the image token in place, which the processor expands."""
    import trl  # the bench extra, which CI installs: only for its copy of the template

    lm = models("llava_next")
    processor = copy.copy(lm.processor)
    processor.chat_template = (Path(trl.__file__).parent / "chat_templates" / "llava_next.jinja").read_text()
    adapter = lm.adapter
    assert (
        adapter.prompt_text(processor, QUESTIONS[2], VISUALS[2])
        == "[INST] Is <image> left or right of <image>? [/INST]"
    )
    assert adapter.prompt_text(processor, QUESTIONS[3], VISUALS[3]) == (
        "[INST] <image>\n<image>\n<image>\nWhat color is the square? [/INST]"
    )
    frames = [SQUARE, PORTRAIT]
    assert adapter.prompt_text(processor, "Is <image> in <video>?", [LANDSCAPE, Video(frames, 1.0)]) == (
        "[INST] Is <image> in <image><image>? [/INST]"
    )
    batch = adapter.encode_prompts(processor, VISUALS[2:3], QUESTIONS[2:3])
    # The tiny word vocabulary has no [INST]: unknown tokens; the image tokens are as in PLACED.
    assert run_lengths(processor.tokenizer, batch.input_ids[0].tolist()) == (
        "<|unk|>*3 is <image>*16 left or right of <image>*14 ? <|unk|>*4"
    )


@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_repeat_of_a_mixed_batch_equals_encoding_the_repeated_prompts(family, models):
    """Per-image tensors (first dimension N), Qwen's flattened patches and Idefics3's per-example
    tiles all follow their prompts: repeating the batch equals encoding each prompt G times."""
    lm = models(family)
    batch = lm.adapter.encode_prompts(lm.processor, VISUALS, QUESTIONS)
    repeated = lm.adapter.repeat(batch, 3)
    direct = lm.adapter.encode_prompts(
        lm.processor, [v for v in VISUALS for _ in range(3)], [q for q in QUESTIONS for _ in range(3)]
    )
    assert repeated.images_per_prompt == direct.images_per_prompt == (0,) * 3 + (1,) * 3 + (2,) * 3 + (3,) * 3
    assert torch.equal(repeated.input_ids, direct.input_ids)
    assert torch.equal(repeated.attention_mask, direct.attention_mask)
    assert repeated.extra.keys() == direct.extra.keys() == batch.extra.keys()
    for key, value in direct.extra.items():
        assert torch.equal(repeated.extra[key], value), key
    again = lm.adapter.repeat(repeated, 2)  # a repeated batch repeats again (generate's plain path does)
    assert again.input_ids.shape[0] == 24 and again.images_per_prompt == tuple(
        n for n in (0, 1, 2, 3) for _ in range(6)
    )


@pytest.mark.parametrize("lora", [False, True], ids=["full", "LoRA"])
@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_shared_prefix_and_fused_prefill_equal_the_plain_path(family, lora, models):
    lm = models(family, lora)
    prompts = lm.adapter.encode_prompts(lm.processor, VISUALS, QUESTIONS)
    ids, mask = completions(lm, 4 * G, seed=int(lora))
    weights = torch.linspace(-1.0, 1.0, ids.numel()).view_as(ids)
    plain_logp, plain_grads = logprobs_and_grads(lm, prompts, ids, mask, "plain", weights)
    assert (plain_logp.abs() > 0.1).sum() == mask.sum()  # real log-probs, not zeros compared with zeros
    if lora:
        assert plain_grads and all("lora" in n for n in plain_grads)
    else:
        vision = ("visual", "vision", "image_embed", "img_projection")
        assert any(v in n for n in plain_grads for v in vision)
    for path in PATHS:
        logp, grads = logprobs_and_grads(lm, prompts, ids, mask, path, weights)
        assert (logp - plain_logp).abs().max() < 1e-5, path
        assert_grads_close(plain_grads, grads)


@pytest.mark.parametrize("family", ["qwen2_vl", "llava_next", "gemma3"])
def test_sampling_a_mixed_batch_on_the_shared_prefix_draws_what_generate_draws(family, models):
    lm = models(family)
    prompts = lm.adapter.encode_prompts(lm.processor, VISUALS, QUESTIONS)
    out = []
    for plan in (ForwardPlan(), replace(PATHS["shared prefix"], position_rule=lm.adapter.position_rule)):
        torch.manual_seed(3)
        out.append(
            generate(lm.model, lm.adapter, lm.processor, prompts, plan, max_new_tokens=4, do_sample=True, group_size=G)
        )
    assert out[0].ids.shape == (4 * G, 4)
    assert torch.equal(out[0].ids, out[1].ids) and torch.equal(out[0].mask, out[1].mask)
    assert len({tuple(r) for r in out[0].ids.tolist()}) > 4  # the rows really differ


@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_two_micro_batches_of_other_image_mixes_add_up_to_the_plain_whole_batch(family, models):
    """Gradient accumulation: prompts {0, 2 images} then {1, 3 images}, each with its own padding
    (and, for Idefics3, its own tile padding), on the shared prefix and on the fused prefill, give
    the gradient of the four in one batch on the plain path."""
    lm = models(family)
    ids, mask = completions(lm, 4 * G, seed=2)
    weights = torch.linspace(-1.0, 1.0, ids.numel()).view_as(ids)
    whole = lm.adapter.encode_prompts(lm.processor, VISUALS, QUESTIONS)
    _, one = logprobs_and_grads(lm, whole, ids, mask, "plain", weights)
    for path in PATHS:
        total: dict[str, torch.Tensor] = {}
        for micro in ([0, 2], [1, 3]):
            prompts = lm.adapter.encode_prompts(
                lm.processor, [VISUALS[b] for b in micro], [QUESTIONS[b] for b in micro]
            )
            rows = torch.tensor([b * G + g for b in micro for g in range(G)])
            _, grads = logprobs_and_grads(lm, prompts, ids[rows], mask[rows], path, weights[rows])
            for name, g in grads.items():
                total[name] = total.get(name, 0) + g
        assert_grads_close(one, total)


def test_frame_families_show_a_video_as_its_frames():
    frames = [image(56, 56, (60 * i, 40, 40)) for i in range(3)]
    adapter = adapter_for("gemma3")
    parts = adapter.prompt_parts("Is <image> in <video>?", [SQUARE, Video(frames, fps=1.0)])
    assert [k for k, _ in parts] == ["text", "image", "text", "image", "image", "image", "text"]
    assert [v for k, v in parts if k == "image"] == [SQUARE, *frames]
    phi3 = adapter_for("phi3_v")
    assert phi3.prompt_text(None, "What moves?", [Video(frames[:2], fps=1.0)]) == (
        "<|user|>\n<|image_1|>\n<|image_2|>\nWhat moves?<|end|>\n<|assistant|>\n"
    )


def test_phi3_v_two_images_from_the_hubs_files(phi3_v_download):
    lm = load_model(model_config(phi3_v_download), CPU)
    prompts = lm.adapter.encode_prompts(lm.processor, [[SQUARE, PORTRAIT], []], ["Which is red?", "Is it red?"])
    row = prompts.input_ids[0][prompts.attention_mask[0].bool()].tolist()
    runs = [(t, len(list(r))) for t, r in itertools.groupby(row) if t < 0]
    # num_crops 1: each image one crop and its global view, (1 + 1) * 144 + 1 + 2 * 12 = 313 tokens.
    assert runs == [(-1, 313), (-2, 313)]
    assert prompts.extra["pixel_values"].shape == (2, 2, 3, 336, 336)
    assert prompts.extra["image_sizes"].tolist() == [[336, 336], [336, 336]]
    assert (prompts.input_ids[1] < 0).sum() == 0
    text = lm.processor.tokenizer.decode([t for t in row if t >= 0])
    # Each text chunk is tokenised on its own with its BOS, as the official processor does.
    assert text == "<s><|user|> \n<s> \n<s> \nWhich is red?<|end|> \n<|assistant|>"


def test_visual_problem_and_bad_placeholders():
    generic = FamilyAdapter()
    assert generic.visual_problem(1, False) is None
    assert generic.visual_problem(2, False) == (
        "the generic adapter shows at most 1 image per question, not 2 images: it cannot tell how this model's "
        "processor lays out several; where the checkpoint's family has an adapter of its own (docs/models.md lists "
        "them), set model.family=auto or its name"
    )
    assert generic.visual_problem(1, True).startswith(
        "the generic adapter shows at most 1 image per question, not 1 image and a video's frames: "
    )
    assert generic.visual_problem(0, True).startswith(
        "the generic adapter shows at most 1 image per question, not 0 images and a video's frames: "
    )
    for family in TINY_FAMILIES:
        assert adapter_for(family).visual_problem(3, True) is None, family
    with pytest.raises(UserError, match=r"^the generic adapter shows at most 1 image per question, not 2 images"):
        generic.encode_prompts(None, [[SQUARE, PORTRAIT]], ["Which is red?"])
    with pytest.raises(UserError, match=r"^a question holds 1 <image> and 0 <video> for 2 image\(s\) and 0 video"):
        adapter_for("llava").prompt_parts("Is <image> red?", [SQUARE, PORTRAIT])


def test_a_video_frame_phi3_v_cannot_lay_out_skips_the_question(models):
    """Phi-3-vision shows a video as its frames: each goes through image_problem like an image, so a
    frame too elongated to crop skips the question (BadExample, counted), not a ValueError mid-run."""
    lm = models("phi3_v")
    frames = [SQUARE, Image.new("RGB", (3000, 2)), PORTRAIT]
    clip = VQAExample(
        "clip", "What moves?", ["red"], "red", answer_type="other", video_loader=lambda: Video(frames, 1.0)
    )
    (checked,) = check_images([clip], lm)
    with pytest.raises(BadExample) as e:
        checked.load_visuals()
    assert (e.value.kind, e.value.reason) == (
        "unsupported_image",
        "frame 2 of 3: a 3000x2 image is too elongated for Phi-3-vision at num_crops 1 "
        "(its short side resizes to 0 px)",
    )
    frames[1] = LANDSCAPE  # every frame lays out: the clip loads
    assert len(checked.load_visuals()[0].frames) == 3


@pytest.mark.parametrize("family", ["qwen2_vl", "idefics3", "phi3_v"])
def test_a_batch_without_any_image_runs_on_both_paths(family, models):
    lm = models(family)
    prompts = lm.adapter.encode_prompts(lm.processor, [[], []], QUESTIONS[:2])
    assert prompts.images_per_prompt == (0, 0)
    assert not any(k in prompts.extra for k in ("pixel_values", "image_grid_thw"))
    ids, mask = completions(lm, 2 * G, seed=4)
    with torch.no_grad():
        plain, _ = completion_logprobs(lm.model, lm.adapter, prompts, ids, mask, ForwardPlan(), group_size=G)
        plan = replace(PATHS["shared prefix"], position_rule=lm.adapter.position_rule)
        shared, _ = completion_logprobs(lm.model, lm.adapter, prompts, ids, mask, plan, group_size=G)
    assert ((shared - plain) * mask).abs().max() < 1e-5
