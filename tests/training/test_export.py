"""What a LoRA run leaves for the ecosystem: the peft adapter in final/ with its model card, the
adapter merged into its base (train.merge_lora and `vqa-grpo merge`), and wandb's offline log."""

from __future__ import annotations

import json
import re

import pytest
import torch
from safetensors.torch import load_file

from vqa_grpo.cli import main
from vqa_grpo.config import ConfigError
from vqa_grpo.config_load import load_config
from vqa_grpo.models.loading import load_model
from vqa_grpo.training.loop import run


@pytest.fixture(scope="module")
def lora_run(synth_dir, tiny_model_dir, tmp_path_factory):
    """Two LoRA SFT steps with merge_lora and wandb (offline), on the tiny Qwen2-VL."""
    mp = pytest.MonkeyPatch()
    mp.setenv("WANDB_MODE", "offline")
    mp.setenv("WANDB_SILENT", "true")
    out = tmp_path_factory.mktemp("lora") / "run"
    cfg = load_config(
        None,
        [
            f"data.path={synth_dir}",
            f"model.name_or_path={tiny_model_dir}",
            f"train.output_dir={out}",
            "model.lora=true",
            "model.lora_r=4",
            "model.lora_alpha=8",
            "train.max_steps=2",
            "train.per_device_batch_size=4",
            "train.learning_rate=1e-2",
            "train.cpu_threads=1",
            "train.progress=false",
            "data.max_eval_samples=4",
            "eval.max_new_tokens=2",
            "train.merge_lora=true",
            "train.report_to=wandb",
        ],
    )
    result = run(cfg, "sft")
    mp.undo()
    return result


def logits(model, lm, synth_dir) -> torch.Tensor:
    from PIL import Image

    rows = [json.loads(s) for s in (synth_dir / "data.jsonl").read_text().splitlines()[:2]]
    images = [Image.open(synth_dir / r["image"]).convert("RGB") for r in rows]
    batch = lm.adapter.encode_prompts(lm.processor, images, [r["question"] for r in rows])
    with torch.no_grad():
        return model(**batch.model_inputs()).logits


@pytest.mark.slow
def test_merged_model_is_the_adapter_folded_into_the_base(lora_run, tiny_model_dir, synth_dir):
    from transformers import AutoModelForImageTextToText

    final, merged_dir = lora_run.final_dir, lora_run.run_dir / "merged"
    assert (final / "adapter_config.json").is_file() and (merged_dir / "config.json").is_file()
    merged = AutoModelForImageTextToText.from_pretrained(merged_dir)  # plain transformers, no peft
    assert not [n for n, _ in merged.named_parameters() if "lora_" in n]
    # W' = W + (alpha / r) B A, layer by layer; here one layer by hand.
    adapter = load_file(final / "adapter_model.safetensors")
    a_key = next(k for k in adapter if k.endswith("q_proj.lora_A.weight") and ".layers.0." in k)
    A, B = adapter[a_key], adapter[a_key.replace("lora_A", "lora_B")]
    base, out = load_file(tiny_model_dir / "model.safetensors"), load_file(merged_dir / "model.safetensors")
    w_key = next(k for k in out if k.endswith("layers.0.self_attn.q_proj.weight"))
    assert B.abs().sum() > 0
    torch.testing.assert_close(out[w_key], base[w_key] + (8 / 4) * B @ A, rtol=0, atol=1e-6)
    # The merged model answers as the adapter on its base does.
    lm = load_model(load_config(None, [f"model.name_or_path={final}"]).model, trainable=False)
    torch.testing.assert_close(
        logits(merged.eval(), lm, synth_dir), logits(lm.model.eval(), lm, synth_dir), rtol=0, atol=1e-5
    )


@pytest.mark.slow
def test_cli_merge_writes_the_same_weights_and_rejects_a_non_adapter(lora_run, tiny_model_dir, tmp_path, capsys):
    assert main(["merge", str(lora_run.final_dir), "--out", str(tmp_path / "m")]) == 0
    a, b = load_file(lora_run.run_dir / "merged" / "model.safetensors"), load_file(tmp_path / "m" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    capsys.readouterr()
    assert main(["merge", str(tiny_model_dir), "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "no adapter_config.json" in err and "\n" not in err
    assert not (tmp_path / "x").exists()

    # A second merge into the same folder is refused, untouched; --overwrite replaces it whole.
    (tmp_path / "m" / "stale.bin").write_bytes(b"an earlier model's file")
    before = sorted(p.name for p in (tmp_path / "m").iterdir())
    assert main(["merge", str(lora_run.final_dir), "--out", str(tmp_path / "m")]) == 2
    err = capsys.readouterr().err.strip()
    assert (
        err == f"error: --out {tmp_path / 'm'} is not empty; pass --overwrite (overwrite=True in Python) to replace it"
    )
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == before
    assert main(["merge", str(lora_run.final_dir), "--out", str(tmp_path / "m"), "--overwrite"]) == 0
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == sorted(set(before) - {"stale.bin"})
    c = load_file(tmp_path / "m" / "model.safetensors")
    assert all(torch.equal(a[k], c[k]) for k in a)
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("m.")) == []


@pytest.mark.slow
def test_lora_model_card_names_peft_and_the_base_model(lora_run, tiny_model_dir):
    import yaml

    card = (lora_run.final_dir / "README.md").read_text()
    header = yaml.safe_load(card.split("---")[1])
    assert header["library_name"] == "peft" and header["base_model"] == str(tiny_model_dir)
    assert "PeftModel.from_pretrained" in card


@pytest.mark.slow
def test_wandb_offline_run_logs_the_metrics_of_metrics_jsonl(lora_run):
    run_dir = lora_run.run_dir
    run_id = (run_dir / "wandb_run_id.txt").read_text().strip()
    (log,) = (run_dir / "wandb").glob(f"offline-run-*-{run_id}/run-{run_id}.wandb")
    data = log.read_bytes()
    lines = [json.loads(s) for s in (run_dir / "metrics.jsonl").read_text().splitlines()]
    for key in ("loss", "eval/vqa_accuracy"):
        # A history item in the protobuf log: the key (field 2), then its value as JSON text (field 16).
        found = [
            float(data[m.end() : m.end() + m.group(1)[0]])
            for m in re.finditer(re.escape(key.encode()) + rb"\x82\x01(.)", data, re.S)
        ]
        assert set(found) == {r[key] for r in lines if key in r}  # (the run summary repeats the last value)


def test_merge_lora_needs_lora():
    with pytest.raises(ConfigError, match="train.merge_lora=true needs model.lora=true"):
        load_config(None, ["train.merge_lora=true"])


def test_report_to_takes_only_known_sinks():
    with pytest.raises(ConfigError, match="train.report_to='mlflow' is not allowed"):
        load_config(None, ["train.report_to=mlflow"])


def test_merge_refuses_an_out_that_holds_the_adapter_or_its_base(tmp_path, capsys):
    """--overwrite replaces --out whole: the adapter's own folder, its run's, or the base model's is
    refused before anything loads."""
    adapter, base = tmp_path / "run" / "final", tmp_path / "models" / "base"
    adapter.mkdir(parents=True)
    base.mkdir(parents=True)
    (adapter / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": str(base)}))
    for out, what, inside in [(adapter, "adapter", adapter), (tmp_path / "run", "adapter", adapter)] + [
        (base, "base model", base),
        (tmp_path / "models", "base model", base),
    ]:
        assert main(["merge", str(adapter), "--out", str(out), "--overwrite"]) == 2
        assert capsys.readouterr().err.strip() == (
            f"error: --out {out} holds the {what} {inside}, which the merge would replace; choose another folder"
        )
    assert sorted(p.name for p in adapter.iterdir()) == ["adapter_config.json"] and base.is_dir()
