"""Phi-3-vision, native (vqa_grpo.models.phi3_v): the official checkpoint's layout, config and
processor, loading without remote code, and what a bad checkpoint gets.

The shared folder holds microsoft/Phi-3-vision-128k-instruct's files without the weights
(config.json, preprocessor_config.json, the tokenizer, model.safetensors.index.json); the tiny
model here is built from them as they are (conftest.py: family_dirs). Comparison with the
official code itself: tests/models/test_phi3_v_reference.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from family_models import model_config
from safetensors.torch import load_file, save_file

from vqa_grpo.config import ModelConfig
from vqa_grpo.errors import UserError
from vqa_grpo.models.adapters import Phi3VisionAdapter
from vqa_grpo.models.loading import load_model
from vqa_grpo.models.phi3_v import Phi3VConfig, Phi3VForCausalLM
from vqa_grpo.models.phi3_v.processing import Phi3VProcessor, hd_size, num_image_tokens
from vqa_grpo.models.prefix import output_cache

OFFICIAL = Path(__file__).resolve().parents[3] / "shared" / "models" / "phi-3-vision-128k-instruct"
CPU = torch.device("cpu")
pytestmark = pytest.mark.skipif(not OFFICIAL.is_dir(), reason="../shared/models/phi-3-vision-128k-instruct is absent")


def official_config() -> dict:
    return json.loads((OFFICIAL / "config.json").read_text())


@pytest.fixture(scope="module")
def tiny_dir(family_dirs):
    """The tiny Phi-3-vision laid out as the download (sharded bf16 weights, the hub's files)."""
    return family_dirs("phi3_v")


def weights(directory: Path) -> dict[str, torch.Tensor]:
    """Every weight of a checkpoint, across its shards."""
    return {k: v for f in sorted(directory.glob("*.safetensors")) for k, v in load_file(str(f)).items()}


def test_the_full_size_model_has_every_official_weight_name_and_the_total_size():
    index = json.loads((OFFICIAL / "model.safetensors.index.json").read_text())
    config = Phi3VConfig.from_pretrained(OFFICIAL)  # the file as it is: flash_attention_2, bfloat16
    assert config._attn_implementation == "flash_attention_2"
    config._attn_implementation = "sdpa"  # what load_model sets from model.attn_implementation
    with torch.device("meta"):
        model = Phi3VForCausalLM(config)
    state = model.state_dict()
    assert set(state) == set(index["weight_map"]) and len(state) == 592
    assert sum(t.numel() for t in state.values()) * 2 == index["metadata"]["total_size"] == 8_293_242_880
    assert model.model.vision_embed_tokens.glb_GN.shape == (1, 1, 4096)
    assert model.model.vision_embed_tokens.sub_GN.shape == (1, 1, 1, 4096)
    assert [type(m).__name__ for m in model.model.vision_embed_tokens.img_projection] == ["Linear", "GELU", "Linear"]
    assert model.model.vision_embed_tokens.img_projection[0].weight.shape == (3072, 4096)


def test_the_official_config_reads_and_writes_back_in_its_own_layout():
    cfg = Phi3VConfig(**official_config())
    assert cfg.rope_parameters["rope_type"] == "longrope" and cfg.vision_config.num_hidden_layers == 24
    out = cfg.to_dict()
    assert "rope_parameters" not in out and out["rope_theta"] == 10000.0
    official = official_config()["rope_scaling"]
    assert out["rope_scaling"] == {
        "type": "su",
        "long_factor": official["long_factor"],
        "short_factor": official["short_factor"],
    }
    assert out["model_type"] == "phi3_v" and out["img_processor"] == official_config()["img_processor"]
    # Phi-3.5-vision names the same scaling "longrope": written back as it came.
    d = official_config()
    d["rope_scaling"]["type"] = "longrope"
    assert Phi3VConfig(**d).to_dict()["rope_scaling"]["type"] == "longrope"


@pytest.mark.parametrize(
    "size, crops, tokens",
    [
        ((200, 120), 4, 757),
        ((200, 120), 16, 2353),
        ((200, 120), 1, 313),
        ((120, 200), 4, 757),
        ((336, 336), 1, 313),
        ((336, 336), 16, 2509),
        ((1000, 200), 16, 2485),  # 4 x 4 crops; 2 x 8
    ],
)
def test_image_token_counts(size, crops, tokens):
    assert num_image_tokens(*hd_size(*size, crops)) == tokens


def test_the_processor_batches_texts_with_the_official_tokenizer():
    proc = Phi3VProcessor.from_pretrained(OFFICIAL, num_crops=4)
    from PIL import Image

    text = "<|user|>\n<|image_1|>\nWhat is it? Answer with a single word or short phrase.<|end|>\n<|assistant|>\n"
    enc = proc([text, text], [[Image.new("RGB", (200, 120))], [Image.new("RGB", (1000, 200))]], padding_side="left")
    assert enc["pixel_values"].shape == (2, 5, 3, 336, 336)
    assert enc["image_sizes"].tolist() == [[672, 672], [336, 1344]]  # 2 x 2 crops; 1 x 4
    assert (enc["input_ids"] < 0).sum(1).tolist() == [757, 745]
    assert enc["attention_mask"][1].sum() == enc["input_ids"].shape[1] - (757 - 745)
    assert enc["input_ids"][0, :4].tolist() == [1, 32010, 29871, 13]  # <s> <|user|> ▁ \n, then the image
    pad = 757 - 745  # the shorter row is padded on the side asked for: left here, right by default
    assert enc["attention_mask"][1, :pad].eq(0).all() and enc["attention_mask"][1, pad:].eq(1).all()
    assert enc["input_ids"][1, :pad].eq(proc.tokenizer.pad_token_id).all()
    right = proc([text, text], [[Image.new("RGB", (200, 120))], [Image.new("RGB", (1000, 200))]])
    assert proc.tokenizer.padding_side == "right" and right["attention_mask"][1, -pad:].eq(0).all()
    assert torch.equal(right["input_ids"][1, : enc["input_ids"].shape[1] - pad], enc["input_ids"][1, pad:])
    assert enc["input_ids"][0, 4:761].eq(-1).all() and enc["input_ids"][0, 761] == 1  # the next chunk's <s>
    assert proc.chat_template == json.loads((OFFICIAL / "tokenizer_config.json").read_text())["chat_template"]


def test_tiny_model_loads_natively_saves_in_the_official_layout_and_reloads_bitwise(tiny_dir, tmp_path):
    lm = load_model(model_config(tiny_dir), CPU)
    assert type(lm.adapter) is Phi3VisionAdapter and type(lm.model) is Phi3VForCausalLM
    assert not list(Path(tiny_dir).glob("*.py"))  # no remote-code files
    saved = weights(tiny_dir)
    assert set(saved) == set(lm.model.state_dict()) and not any(".wte." in k for k in saved)
    config = json.loads((tiny_dir / "config.json").read_text())
    assert config["model_type"] == "phi3_v" and config["architectures"] == ["Phi3VForCausalLM"]
    assert config["rope_scaling"]["type"] == "su" and "rope_parameters" not in config
    lm.model.save_pretrained(tmp_path / "saved")
    assert set(weights(tmp_path / "saved")) == set(saved)
    again = load_model(model_config(tiny_dir), CPU)
    for (n, a), (_, b) in zip(lm.model.state_dict().items(), again.model.state_dict().items()):
        assert torch.equal(a, b), n


def test_trust_remote_code_on_a_phi3_v_checkpoint_runs_none_of_its_code(tiny_dir, tmp_path, caplog):
    import shutil

    ckpt = tmp_path / "ckpt"
    shutil.copytree(tiny_dir, ckpt)
    marker = tmp_path / "ran"
    for name in ("configuration_phi3_v", "modeling_phi3_v"):
        (ckpt / f"{name}.py").write_text(f"open({str(marker)!r}, 'w').write('ran')\n")
    config = json.loads((ckpt / "config.json").read_text())
    config["auto_map"] = {
        "AutoConfig": "configuration_phi3_v.Phi3VConfig",
        "AutoModelForCausalLM": "modeling_phi3_v.Phi3VForCausalLM",
    }
    (ckpt / "config.json").write_text(json.dumps(config))
    with caplog.at_level("WARNING", logger="vqa_grpo"):
        lm = load_model(model_config(ckpt, trust_remote_code=True), CPU)
    assert type(lm.model) is Phi3VForCausalLM and not marker.exists()
    assert "model.trust_remote_code=true is ignored" in caplog.text


def _rewrite_weights(src: Path, dst: Path, edit) -> Path:
    import shutil

    shutil.copytree(src, dst)
    for shard in sorted(dst.glob("*.safetensors")):  # the shard that holds the key is changed
        tensors = load_file(str(shard))
        edit(tensors)
        save_file(tensors, str(shard), metadata={"format": "pt"})
    return dst


def test_a_missing_weight_is_named_and_refused(tiny_dir, tmp_path):
    key = "model.vision_embed_tokens.glb_GN"
    bad = _rewrite_weights(tiny_dir, tmp_path / "bad", lambda w: w.pop(key, None))
    with pytest.raises(UserError) as err:
        load_model(ModelConfig(name_or_path=str(bad)), CPU)
    assert str(err.value) == f"{bad}: weight {key} is missing; the checkpoint is incomplete or not phi3_v"


def test_an_incomplete_checkpoint_is_one_line(tiny_dir, tmp_path):
    import shutil

    bad = tmp_path / "truncated"
    shutil.copytree(tiny_dir, bad)
    shard = bad / "model-00002-of-00002.safetensors"
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])
    with pytest.raises(UserError) as err:
        load_model(ModelConfig(name_or_path=str(bad)), CPU)
    message = str(err.value)
    assert message.startswith(f"cannot read the weights of {bad}: ") and "incomplete" in message and "\n" not in message


def test_a_misshaped_weight_is_named_and_refused(tiny_dir, tmp_path):
    key = "model.vision_embed_tokens.img_projection.0.weight"

    def shrink(w):
        if key in w:
            w[key] = w[key][:, :-1].contiguous()

    bad = _rewrite_weights(tiny_dir, tmp_path / "bad", shrink)
    with pytest.raises(UserError) as err:
        load_model(ModelConfig(name_or_path=str(bad)), CPU)
    message = str(err.value)
    assert "\n" not in message and key in message and "wrong shape" in message


def test_the_cli_builds_the_tiny_phi3_v(tmp_path, capsys):
    from vqa_grpo.cli import main

    assert main(["model", "tiny", "--family", "phi3_v", "--out", str(tmp_path / "m")]) == 0
    assert {"config.json", "model.safetensors", "preprocessor_config.json", "tokenizer.json"} <= {
        p.name for p in (tmp_path / "m").iterdir()
    }


def test_lora_targets_the_fused_projections_and_merges_back_into_the_official_layout(tiny_dir, tmp_path):
    from vqa_grpo.training.checkpoint import save_model
    from vqa_grpo.training.export import merge_adapter

    lm = load_model(model_config(tiny_dir, lora=True, lora_r=4), CPU)
    adapted = {n.split(".lora_A")[0] for n, _ in lm.model.named_parameters() if ".lora_A" in n}
    assert {n.rsplit(".", 1)[1] for n in adapted} == {"qkv_proj", "o_proj", "gate_up_proj", "down_proj"}
    assert len(adapted) == 2 * 4 and not any("vision_embed_tokens" in n for n in adapted)
    for name, p in lm.model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.05)
    save_model(lm.model, lm.processor, tmp_path / "final")
    merged = merge_adapter(tmp_path / "final", tmp_path / "merged", model_config(tiny_dir))
    assert set(weights(merged)) == set(weights(tiny_dir))
    again = load_model(model_config(merged), CPU, trainable=False)
    batch = again.adapter.encode_prompts(
        again.processor, [__import__("PIL.Image").Image.new("RGB", (60, 90))], ["Is it red?"]
    )
    lm.model.eval()
    with torch.no_grad():
        want = lm.model(**batch.model_inputs()).logits
        got = again.model(**batch.model_inputs()).logits
    assert (want - got).abs().max() < 1e-4


def test_sdpa_and_eager_give_the_same_logits(tiny_dir):
    from PIL import Image

    outs = []
    for attn in ("sdpa", "eager"):
        lm = load_model(model_config(tiny_dir, attn_implementation=attn), CPU, trainable=False)
        assert lm.model.config._attn_implementation == attn
        vision = lm.model.model.vision_embed_tokens.img_processor.vision_model
        assert vision.config._attn_implementation == attn  # the CLIP tower follows the setting
        batch = lm.adapter.encode_prompts(
            lm.processor,
            [Image.new("RGB", (200, 120)), Image.new("RGB", (90, 300))],
            ["What color?", "How many objects are there?"],
        )
        with torch.no_grad():
            outs.append(lm.model(**batch.model_inputs()).logits)
    mask = batch.attention_mask.bool()
    assert (outs[0] - outs[1])[mask].abs().max() < 1e-5


def test_gradient_checkpointing_gives_the_same_loss_and_vision_gradient(tiny_dir):
    from PIL import Image

    results = []
    for checkpointing in (False, True):
        lm = load_model(model_config(tiny_dir, gradient_checkpointing=checkpointing), CPU)
        lm.model.train()
        batch = lm.adapter.encode_prompts(lm.processor, [Image.new("RGB", (200, 120), (200, 10, 10))], ["What color?"])
        loss = lm.model(**batch.model_inputs(), labels=lm.adapter.prompt_labels(lm.processor, batch)).loss
        loss.backward()
        tower = lm.model.model.vision_embed_tokens.img_processor.vision_model
        layers = [*tower.encoder.layers, *lm.model.model.layers]
        assert all(layer.gradient_checkpointing for layer in layers) == checkpointing
        results.append((loss.detach(), tower.encoder.layers[0].mlp.fc1.weight.grad.clone()))
    (loss_a, grad_a), (loss_b, grad_b) = results
    assert torch.allclose(loss_a, loss_b, atol=1e-6) and float(grad_a.norm()) > 0
    assert torch.allclose(grad_a, grad_b, atol=1e-6, rtol=1e-5)


def test_a_cache_given_under_either_name_continues_the_prompt(tiny_dir):
    # Phi-3's forward reads the cache as ``cache`` (transformers >= 5.20) or ``past_key_values``
    # (5.19, vLLM's pin); handed on under the other name it was dropped without an error. Either
    # name must continue the cached prompt as the full forward does, and greedy ``generate`` (5.19
    # passes the cache as past_key_values) must give the tokens of the loop without a cache.
    model = load_model(model_config(tiny_dir), CPU, trainable=False).model.eval()
    ids = torch.tensor([[5, 17, 40, 9, 33, 21, 8, 60, 12, 7, 44, 3]])
    with torch.no_grad():
        full = model(input_ids=ids).logits
        for name in ("cache", "past_key_values"):
            cache = output_cache(model(input_ids=ids[:, :8], use_cache=True))
            after = model(input_ids=ids[:, 8:], position_ids=torch.arange(8, 12)[None], use_cache=True, **{name: cache})
            assert cache.get_seq_length() == 12
            assert (after.logits - full[:, 8:]).abs().max() < 1e-5
        greedy = ids[:, :8]
        for _ in range(6):
            greedy = torch.cat([greedy, model(input_ids=greedy).logits[:, -1:].argmax(-1)], dim=1)
        sampled = model.generate(input_ids=ids[:, :8], max_new_tokens=6, min_new_tokens=6, do_sample=False)
    assert sampled.tolist() == greedy.tolist()


def test_the_checkpoints_code_files_are_carried_to_saved_checkpoints_and_never_run(tiny_dir, tmp_path):
    # vLLM and the official code read configuration/processing_phi3_v.py beside the weights; a
    # checkpoint that had them keeps them when vqa-grpo saves it, as text.
    import shutil

    from vqa_grpo.training.checkpoint import save_model

    ckpt = tmp_path / "hub"
    shutil.copytree(tiny_dir, ckpt)
    marker = tmp_path / "ran"
    code = f"open({str(marker)!r}, 'w').write('ran')\n"
    (ckpt / "processing_phi3_v.py").write_text(code)
    lm = load_model(model_config(ckpt, trust_remote_code=True), CPU)
    save_model(lm.model, lm.processor, tmp_path / "saved")
    assert (tmp_path / "saved" / "processing_phi3_v.py").read_text() == code and not marker.exists()
    assert not (tmp_path / "saved" / "modeling_phi3_v.py").exists()  # only what the checkpoint had
