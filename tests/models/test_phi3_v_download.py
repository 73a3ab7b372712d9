"""The seed's own model as it is downloaded: a tiny random Phi-3-vision whose files are the hub's
(tests/models/conftest.py: phi3_v_download), evaluated and trained through the CLI.

The download's config.json asks for flash_attention_2 and bfloat16; the user's
``model.attn_implementation`` (sdpa by default) and ``model.dtype`` are what the model gets, in
the text model and in the CLIP tower. What vqa-grpo saves keeps the hub's tokenizer files as
they are (the official code under transformers 4.40.2 reads them: docs/models.md), and an image
the processor cannot lay out is a skipped, counted row.
"""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from family_models import PHI3_V_HUB
from PIL import Image

from vqa_grpo.config import ModelConfig
from vqa_grpo.errors import UserError
from vqa_grpo.models.loading import load_model
from vqa_grpo.models.phi3_v.processing import Phi3VImageProcessor, layout_problem
from vqa_grpo.models.phi3_v.tiny import HUB_FILES, HUB_TINY_TEXT, TINY_VISION

CPU = torch.device("cpu")
WIDE = "wide-3000x2"  # the row whose image Phi-3-vision cannot lay out


def implementations(model) -> set[tuple[str, str]]:
    """(module class, attention implementation) of the model and every submodel (the CLIP tower)."""
    from transformers import PreTrainedModel

    return {
        (type(m).__name__, m.config._attn_implementation) for m in model.modules() if isinstance(m, PreTrainedModel)
    }


def test_the_tiny_download_carries_the_hubs_files(phi3_v_download):
    hub = json.loads((PHI3_V_HUB / "config.json").read_text())
    config = json.loads((phi3_v_download / "config.json").read_text())
    assert config["_attn_implementation"] == "flash_attention_2" and config["torch_dtype"] == "bfloat16"
    sizes = {
        **HUB_TINY_TEXT,
        "img_processor": {**hub["img_processor"], "image_dim_out": 32, "vision_config": TINY_VISION},
    }
    assert config == {**hub, **sizes} and list(config) == list(hub)  # only the sizes differ, keys in order
    for name in HUB_FILES:
        assert (phi3_v_download / name).read_bytes() == (PHI3_V_HUB / name).read_bytes(), name
    index = json.loads((phi3_v_download / "model.safetensors.index.json").read_text())["weight_map"]
    hub_index = json.loads((PHI3_V_HUB / "model.safetensors.index.json").read_text())["weight_map"]
    assert all(hub_index[k] == shard for k, shard in index.items()) and len(set(index.values())) == 2


@pytest.mark.parametrize("attn, dtype", [("sdpa", "fp32"), ("eager", "bf16")])
def test_the_users_attention_and_dtype_win_over_the_config_json(phi3_v_download, attn, dtype):
    lm = load_model(ModelConfig(name_or_path=str(phi3_v_download), attn_implementation=attn, dtype=dtype), CPU)
    assert implementations(lm.model) == {("Phi3VForCausalLM", attn), ("Phi3VModel", attn), ("CLIPVisionModel", attn)}
    want = {"fp32": torch.float32, "bf16": torch.bfloat16}[dtype]
    assert {p.dtype for p in lm.model.parameters()} == {want} and lm.model.config.dtype == want
    assert lm.model.config.vision_config is lm.model.model.vision_embed_tokens.img_processor.vision_model.config


def test_flash_attention_asked_for_and_absent_is_named_as_asked(phi3_v_download):
    try:
        import flash_attn  # noqa: F401
    except ImportError:
        pass
    else:
        pytest.skip("flash-attn is installed")
    with pytest.raises(UserError) as err:
        load_model(ModelConfig(name_or_path=str(phi3_v_download), attn_implementation="flash_attention_2"), CPU)
    message = str(err.value)
    assert message.startswith("model.attn_implementation=flash_attention_2 cannot be used (")
    assert message.endswith("; install flash-attn or set model.attn_implementation=sdpa") and "\n" not in message


def test_an_implementation_the_architecture_does_not_support_is_named_as_asked(family_dirs):
    path = family_dirs("gemma3")
    with pytest.raises(UserError) as err:
        load_model(ModelConfig(name_or_path=str(path), attn_implementation="flash_attention_2"), CPU)
    assert str(err.value) == (
        f"model.attn_implementation=flash_attention_2 cannot be used with {path} (Gemma3ForConditionalGeneration "
        "does not support Flash Attention 2 yet); set model.attn_implementation=sdpa"
    )


def test_an_image_too_elongated_to_lay_out_is_named():
    assert layout_problem(3000, 2, 1) == (
        "a 3000x2 image is too elongated for Phi-3-vision at num_crops 1 (its short side resizes to 0 px)"
    )
    assert layout_problem(2, 3000, 4) is not None and layout_problem(3000, 2, 16) is None  # 5376 x 3 px
    assert layout_problem(1000, 200, 1) is None
    with pytest.raises(ValueError, match="too elongated"):
        Phi3VImageProcessor(num_crops=4)([Image.new("RGB", (3000, 2))])


@pytest.fixture(scope="module")
def wide_data(synth_dir, tmp_path_factory):
    """train.jsonl: 6 synthetic rows and the 3000 x 2 one; eval.jsonl: 2 other rows and the 3000 x 2 one."""
    d = tmp_path_factory.mktemp("wide")
    rows = [json.loads(line) for line in (synth_dir / "data.jsonl").read_text().splitlines()[:8]]
    (d / "images").mkdir()
    for r in rows:
        shutil.copyfile(synth_dir / r["image"], d / r["image"])
    Image.new("RGB", (3000, 2), (200, 30, 30)).save(d / "images" / "wide.png")
    wide = {**rows[0], "id": WIDE, "image": "images/wide.png"}
    (d / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in [*rows[:3], wide, *rows[3:6]]))
    (d / "eval.jsonl").write_text("".join(json.dumps(r) + "\n" for r in [rows[6], wide, rows[7]]))
    return d


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_evaluate_and_two_grpo_steps_through_the_cli(phi3_v_download, wide_data, tmp_path, monkeypatch, capsys, attn):
    import vqa_grpo.evaluation.evaluate as evaluation
    import vqa_grpo.training.loop as loop
    from vqa_grpo.cli import main

    loaded = []

    def recorded(*args, **kwargs):  # the real loader; the test reads what the run's model got
        lm = load_model(*args, **kwargs)
        loaded.append(implementations(lm.model))
        return lm

    monkeypatch.setattr(evaluation, "load_model", recorded)
    monkeypatch.setattr(loop, "load_model", recorded)
    # eager: with LoRA too, whose model card loads the base from the download's own config.json
    common = ["model.num_crops=1"] + (
        [] if attn == "sdpa" else [f"model.attn_implementation={attn}", "model.lora=true"]
    )
    evaluated = tmp_path / "eval"
    model = str(phi3_v_download)
    args = ["evaluate", "--model", model, "--data", str(wide_data / "eval.jsonl"), "--out", str(evaluated)]
    assert main([*args, *common, "eval.max_new_tokens=3"]) == 0
    metrics = json.loads((evaluated / "metrics.json").read_text())
    assert metrics["n"] == 2 and metrics["skipped"] == 1  # the 3000 x 2 image: skipped, counted
    run = tmp_path / "run"
    train = [
        "train",
        f"model.name_or_path={model}",
        f"data.path={wide_data / 'train.jsonl'}",
        f"data.eval_path={wide_data / 'eval.jsonl'}",
        f"train.output_dir={run}",
        "train.max_steps=2",
        "train.per_device_batch_size=2",
        "grpo.num_generations=2",
        "grpo.max_completion_length=3",
        "eval.max_new_tokens=3",
        "train.save_steps=0",
        "train.progress=false",
        *common,
    ]
    assert main(train) == 0, capsys.readouterr().err
    want = {("Phi3VForCausalLM", attn), ("Phi3VModel", attn), ("CLIPVisionModel", attn)}
    assert loaded == [want, want]
    assert [len(json.loads(line)) > 0 for line in (run / "metrics.jsonl").read_text().splitlines()][:2] == [True] * 2
    skipped = json.loads((run / "skipped.json").read_text())
    assert [(e["id"], e["reason"]) for e in skipped["examples"]] == [(WIDE, "unsupported_image")]
    for saved in (run / "final", run / "best"):
        for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
            assert (saved / name).read_bytes() == (PHI3_V_HUB / name).read_bytes(), (saved, name)
    assert json.loads((run / "final" / "special_tokens_map.json").read_text())["additional_special_tokens"]
    if attn == "eager":  # the model card's loading code, run as written
        card = (run / "final" / "README.md").read_text().split("```python\n")[1].split("```")[0]
        scope = {}
        exec(card.replace("path/to/this/directory", str(run / "final")), scope)
        assert type(scope["model"]).__name__ == "PeftModel" and scope["base"].config._attn_implementation == attn


def test_a_checkpoint_that_asks_for_an_absent_implementation_loads_each_family_with_the_users(family_dirs, tmp_path):
    """Every family: a config.json (and each sub-config in it) naming flash_attention_2 and bfloat16."""
    from vqa_grpo.models.tiny import TINY_FAMILIES

    def ask_flash(d):
        if isinstance(d, dict):
            if "model_type" in d:
                d.update(_attn_implementation="flash_attention_2", torch_dtype="bfloat16")
            for v in d.values():
                ask_flash(v)

    for family in TINY_FAMILIES:
        ckpt = tmp_path / family
        shutil.copytree(family_dirs(family), ckpt)
        config = json.loads((ckpt / "config.json").read_text())
        ask_flash(config)
        (ckpt / "config.json").write_text(json.dumps(config))
        lm = load_model(ModelConfig(name_or_path=str(ckpt)), CPU, trainable=False)  # sdpa, fp32: the defaults
        assert {impl for _, impl in implementations(lm.model)} == {"sdpa"}, (family, implementations(lm.model))
        assert {p.dtype for p in lm.model.parameters()} == {torch.float32}, family
