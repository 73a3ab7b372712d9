"""Outputs the ecosystem loads: the model card of ``final/`` and a LoRA adapter merged into its base."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from pathlib import Path

import yaml

from vqa_grpo.config import Config, ModelConfig, to_dict
from vqa_grpo.config_load import load_config
from vqa_grpo.data.prompts import prompt_template
from vqa_grpo.errors import UserError
from vqa_grpo.models.loading import load_model
from vqa_grpo.models.lora_base import adapter_base
from vqa_grpo.rewards.registry import reward_components, reward_weights
from vqa_grpo.training.checkpoint import save_model


def write_model_card(
    out: Path,
    cfg: Config,
    mode: str,
    *,
    steps: int,
    n_train: int,
    n_eval: int,
    metrics: dict[str, float] | None,
    auto_model: str = "AutoModelForImageTextToText",
    best: bool = False,
    changes: list[dict] | None = None,
) -> Path:
    """``out/README.md``: base model, data, training, final metrics and the full config.

    ``auto_model``: the transformers auto class that loads the family (the adapter's). ``best``:
    the card of ``best/``, whose metrics are those of the evaluation at step ``steps`` that made it best.
    ``changes``: the settings resumes changed (the trainer state's ``settings_changed``), each said
    with its step: the config shown is the one in force at the end.
    """
    lora = (out / "adapter_config.json").is_file()
    base = cfg.model.name_or_path
    if lora:
        base = json.loads((out / "adapter_config.json").read_text()).get("base_model_name_or_path") or base
    header = {
        "library_name": "peft" if lora else "transformers",
        "base_model": str(base),
        "pipeline_tag": "image-text-to-text",
        "tags": ["vqa-grpo", "visual-question-answering", "grpo" if mode == "grpo" else "sft"],
    }
    how = (
        "GRPO (group-relative policy optimization) with rewards computed against the ground-truth answer"
        if mode == "grpo"
        else "supervised fine-tuning on the ground-truth answers"
    )
    what = "a LoRA adapter (peft format)" if lora else "the full model weights (safetensors)"
    lines = [
        "---",
        yaml.safe_dump(header, sort_keys=False).strip(),
        "---",
        "",
        f"# {out.parent.name}",
        "",
        f"Fine-tuned for visual question answering with vqa-grpo: "
        f"{how}. This directory holds {what} and the processor.",
        "",
        "## Base model",
        "",
        f"`{base}`",
        "",
        "## Data",
        "",
        f"`{cfg.data.path}` ({cfg.data.format} format): {n_train} training and {n_eval} evaluation questions.",
        "",
        "## Training",
        "",
        f"{steps} optimiser steps, batch {cfg.train.per_device_batch_size} x {cfg.train.gradient_accumulation_steps} "
        f"accumulation, learning rate {cfg.train.learning_rate:g} ({cfg.train.lr_scheduler}), seed {cfg.train.seed}.",
    ]
    if mode == "grpo":
        g = cfg.grpo
        weighted = zip(reward_components(cfg.reward), reward_weights(cfg.reward))
        lines.append(
            f"G = {g.num_generations} completions per question, loss `{g.loss_type}`, beta {g.beta:g}, "
            f"rewards {', '.join(f'{w:g} x {c}' for c, w in weighted)}."
        )
    lines.append(f"Prompt (the user turn): `{prompt_template(cfg.data, cfg.reward.reasoning)}`.")
    for change in changes or []:
        said = ", ".join(f"`{k}` {old} -> {new}" for k, (old, new) in change["changed"].items())
        lines.append(f"Resumed at step {change['step']} with {said}.")
    title = f"Metrics at step {steps}, the best train.eval_metric={cfg.train.eval_metric}" if best else "Final metrics"
    lines += ["", f"## {title}", ""]
    if metrics:
        lines += ["| metric | value |", "|---|---|"] + [f"| {k} | {v:.4f} |" for k, v in metrics.items()]
        lines.append("")
        lines.append(f"On the evaluation split ({n_eval} questions), greedy unless `eval.do_sample`.")
    else:
        lines.append("None: the run had no evaluation split.")
    phi3_v = _saved_model_type(out) == "phi3_v"  # native in vqa-grpo: no remote code, its own processor
    remote = ", trust_remote_code=True" if cfg.model.trust_remote_code and not phi3_v else ""
    if phi3_v:  # the hub's config.json asks for flash_attention_2: say which attention the run used
        remote = f', attn_implementation="{cfg.model.attn_implementation}"'
    lines += ["", "## Loading", "", "```python"]
    if phi3_v:
        lines += ["import vqa_grpo.models.phi3_v  # Phi-3-vision, native: registers phi3_v with the auto classes"]
    if lora:
        # The hub's Phi-3-vision config.json names flash_attention_2, which wins over an
        # attn_implementation argument alone; a config object passed with it loads as asked.
        config = f', config=AutoConfig.from_pretrained("{base}")' if phi3_v else ""
        lines += [
            "from peft import PeftModel",
            f"from transformers import {'AutoConfig, ' if phi3_v else ''}{auto_model}, AutoProcessor",
            f'base = {auto_model}.from_pretrained("{base}"{config}{remote})',
            'model = PeftModel.from_pretrained(base, "path/to/this/directory")',
        ]
    else:
        lines += [
            f"from transformers import {auto_model}, AutoProcessor",
            f'model = {auto_model}.from_pretrained("path/to/this/directory"{remote})',
        ]
    if phi3_v:
        lines += [
            "from vqa_grpo.models.phi3_v.processing import Phi3VProcessor",
            'processor = Phi3VProcessor.from_pretrained("path/to/this/directory")',
        ]
    else:
        lines += [f'processor = AutoProcessor.from_pretrained("path/to/this/directory"{remote})']
    lines += ["```", "", "## Config", "", "```yaml", yaml.safe_dump(to_dict(cfg), sort_keys=False).strip(), "```", ""]
    path = out / "README.md"
    path.write_text("\n".join(lines))
    return path


def _saved_model_type(out: Path) -> str | None:
    """The model_type of the saved model (its config.json, or the LoRA adapter's base's)."""
    for path in (out / "config.json", out / "preprocessor_config.json"):
        if path.is_file():
            data = json.loads(path.read_text())
            if path.name == "config.json":
                return data.get("model_type")
            return "phi3_v" if data.get("image_processor_type") == "Phi3VImageProcessor" else None
    return None


def merge_adapter(adapter_dir: str | Path, out: str | Path, model_cfg=None, overwrite: bool = False) -> Path:
    """Merge the LoRA adapter in ``adapter_dir`` into its base model; save model and processor to ``out``.

    A non-empty ``out`` is refused unless ``overwrite``; then the merged model is written beside it
    and takes its place whole, so no file of the earlier model stays mixed in.

    The merged model is a plain transformers checkpoint (no peft needed to load it); its weights
    are the base weights plus (alpha / r) B A for every adapted layer. The base loads as the run
    loaded it (dtype, trust_remote_code, num_crops): from ``model_cfg``, else from the run's
    ``config.yaml`` beside the adapter directory, else the defaults.
    """
    adapter_dir, out = Path(adapter_dir), Path(out)
    if not (adapter_dir / "adapter_config.json").is_file():
        raise UserError(
            f"{adapter_dir} has no adapter_config.json: not a LoRA adapter directory (a run's final/ with "
            "model.lora=true)"
        )
    target = Path(os.path.abspath(out))  # "." has no name to put the new folder beside
    base = Path(adapter_base(adapter_dir))  # a hub id is no folder here
    for what, inside in (("adapter", adapter_dir), ("base model", base if base.is_dir() else None)):
        if inside and (target == Path(os.path.abspath(inside)) or target in Path(os.path.abspath(inside)).parents):
            raise UserError(
                f"--out {out} holds the {what} {inside}, which the merge would replace; choose another folder"
            )
    held = out.is_dir() and any(out.iterdir())
    if held and not overwrite:
        raise UserError(f"--out {out} is not empty; pass --overwrite (overwrite=True in Python) to replace it")
    if model_cfg is None:
        run_config = adapter_dir.parent / "config.yaml"
        model_cfg = load_config(run_config).model if run_config.is_file() else ModelConfig()
    model_cfg = dataclasses.replace(model_cfg, name_or_path=str(adapter_dir), lora=False, quantization="none")
    lm = load_model(model_cfg, "cpu", trainable=False)
    if not held:
        save_model(lm.model.merge_and_unload(), lm.processor, out)
        return out
    fresh, old = target.with_name(target.name + ".merging"), target.with_name(target.name + ".replaced")
    for stale in (fresh, old):
        shutil.rmtree(stale, ignore_errors=True)
    save_model(lm.model.merge_and_unload(), lm.processor, fresh)
    target.rename(old)
    fresh.rename(target)
    shutil.rmtree(old)
    return out
