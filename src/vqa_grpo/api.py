"""The Python API: what the ``vqa-grpo`` command calls, for notebooks and scripts.

    import vqa_grpo

    cfg = vqa_grpo.load_config("configs/tiny_cpu.yaml", ["train.max_steps=10"])
    result = vqa_grpo.train(cfg, data=rows)        # GRPO; rows: a DataFrame, a Dataset, a list of dicts
    metrics = vqa_grpo.evaluate(result.final_dir, "data/val.jsonl", cfg)

docs/python.md has the whole of it. Bad input raises ``vqa_grpo.UserError`` with the one-line
message the command prints.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from vqa_grpo.config import Config
from vqa_grpo.config import load_config as _load_config

Data = Any
"""Training or evaluation rows: a path (file or folder, any format of docs/data.md), a pandas
DataFrame, a ``datasets.Dataset`` or a list of dicts, with the columns of ``data.columns``."""


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """The config of a YAML file (or the defaults when None), then ``section.key=value`` overrides."""
    return _load_config(path, list(overrides))


def train(cfg: Config, data: Data = None):
    """GRPO fine-tuning as configured; ``data`` replaces ``data.path`` when given. Returns the
    run's :class:`~vqa_grpo.training.loop.RunResult` (run_dir, final_dir, steps, eval_history)."""
    return _run(cfg, "grpo", data)


def sft(cfg: Config, data: Data = None):
    """Supervised fine-tuning on the ground-truth answers (the seed report's eq. 1); as :func:`train`."""
    return _run(cfg, "sft", data)


def _run(cfg: Config, mode: str, data: Data):
    import dataclasses

    from vqa_grpo.training.loop import run

    if isinstance(data, (str, Path)):  # a path: the same as data.path
        cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, path=str(data)))
        data = None
    return run(cfg, mode, data=data)


def evaluate(model: str | Path, data: Data, cfg: Config | None = None, out: str | Path | None = None) -> dict:
    """Answer ``data``'s questions with the model (a directory, checkpoint or LoRA adapter) and
    score them; writes predictions.jsonl and metrics.json to ``out`` when given. Returns the
    metrics dict: overall, per answer type and per question type, with bootstrap intervals."""
    from vqa_grpo.data.loader import load_examples, read_examples
    from vqa_grpo.data.sources import memory_source
    from vqa_grpo.evaluation.evaluate import evaluate as _evaluate

    cfg = cfg if cfg is not None else Config()
    if isinstance(data, (str, Path)):
        examples, _ = load_examples(str(data), cfg.data)
    else:
        examples, _ = read_examples(memory_source(data, cfg.data), cfg.data)
    return _evaluate(str(model), examples, cfg, out)
