"""A LoRA run saves a peft adapter in final/, and evaluate loads it onto its base model."""

from __future__ import annotations

import json

import pytest

from vqa_grpo.config_load import load_config
from vqa_grpo.data.loader import load_examples
from vqa_grpo.evaluation.evaluate import evaluate
from vqa_grpo.models.loading import load_model
from vqa_grpo.training.loop import run


@pytest.mark.slow
def test_lora_adapter_trains_saves_and_evaluates(synth_dir, tiny_model_dir, tmp_path):
    cfg = load_config(
        None,
        [
            f"data.path={synth_dir}",
            f"model.name_or_path={tiny_model_dir}",
            f"train.output_dir={tmp_path / 'run'}",
            "model.lora=true",
            "model.lora_r=4",
            "train.max_steps=2",
            "train.per_device_batch_size=4",
            "train.learning_rate=1e-2",
            "train.cpu_threads=1",
            "train.progress=false",
            "data.eval_fraction=0",
        ],
    )
    final = run(cfg, "sft").final_dir
    assert (final / "adapter_config.json").is_file() and not (final / "config.json").exists()
    assert json.loads((final / "adapter_config.json").read_text())["base_model_name_or_path"] == str(tiny_model_dir)

    lm = load_model(load_config(None, [f"model.name_or_path={final}"]).model, trainable=False)
    lora_b = [p for n, p in lm.model.named_parameters() if "lora_B" in n]
    assert lora_b and all(n.startswith("base_model") for n, _ in lm.model.named_parameters())
    assert any(p.abs().sum() > 0 for p in lora_b)  # the adapter learned (lora_B starts at zero)
    # Only the language model is adapted by default: no LoRA layer in the vision tower.
    assert not [n for n, _ in lm.model.named_parameters() if "lora_" in n and "visual" in n]

    examples, _ = load_examples(str(synth_dir), cfg.data)
    metrics = evaluate(
        str(final), examples[:16], load_config(None, ["train.cpu_threads=1", "train.progress=false"]), tmp_path / "eval"
    )
    assert metrics["n"] == 16
    rows = (tmp_path / "eval" / "predictions.jsonl").read_text().splitlines()
    assert len(rows) == 16
