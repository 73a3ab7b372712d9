"""Where a run's metrics go: ``metrics.jsonl`` always, and TensorBoard or wandb (``train.report_to``).

Every record is a flat dict with a ``step``; its numeric values become scalars of that step.
A resumed run truncates ``metrics.jsonl`` after the checkpoint's step and opens TensorBoard with
``purge_step`` there, so neither shows the steps the interrupted run took twice.
"""

from __future__ import annotations

import json
import math
import uuid
from pathlib import Path

from vqa_grpo.config import Config, to_dict
from vqa_grpo.errors import UserError


class Reporter:
    """Append-only metrics sinks of one run directory (only the writing process makes one)."""

    def __init__(self, run_dir: Path, cfg: Config, resume_step: int = 0):
        self.path = run_dir / "metrics.jsonl"
        if resume_step:
            truncate_log(self.path, resume_step)
        self._file = self.path.open("a")
        self._tb = self._wandb = None
        if cfg.train.report_to == "tensorboard":
            self._tb = _tensorboard(run_dir / "tensorboard", resume_step)
        elif cfg.train.report_to == "wandb":
            self._wandb = _wandb(run_dir, cfg, resume_step)

    def log(self, record: dict) -> None:
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()
        step = int(record.get("step", 0))
        scalars = {k: float(v) for k, v in record.items() if k != "step" and _is_number(v)}
        if self._tb is not None:
            for k, v in scalars.items():
                self._tb.add_scalar(k, v, step)
            self._tb.flush()
        if self._wandb is not None and scalars:
            self._wandb.log(scalars, step=step)

    def close(self) -> None:
        self._file.close()
        if self._tb is not None:
            self._tb.close()
        if self._wandb is not None:
            self._wandb.finish()


class NullReporter:
    """The sink of processes other than rank 0: they write nothing."""

    def log(self, record: dict) -> None:
        pass

    def close(self) -> None:
        pass


def truncate_log(path: Path, step: int) -> None:
    """Drop the lines a resumed run will write again (those after the checkpoint's step)."""
    if path.is_file():
        keep = [x for x in path.read_text().splitlines() if x.strip() and json.loads(x).get("step", 0) <= step]
        path.write_text("".join(x + "\n" for x in keep))


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _tensorboard(log_dir: Path, resume_step: int):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise UserError("train.report_to=tensorboard needs the tensorboard package: pip install tensorboard, "
                        "or set train.report_to=none") from None
    return SummaryWriter(str(log_dir), purge_step=resume_step + 1 if resume_step else None)


def _wandb(run_dir: Path, cfg: Config, resume_step: int):
    try:
        import wandb
    except ImportError:
        raise UserError("train.report_to=wandb needs wandb: pip install 'vqa-grpo[wandb]', "
                        "or set train.report_to=tensorboard") from None
    # One wandb run per run directory: a resumed run continues it (its id is kept beside the logs).
    id_file = run_dir / "wandb_run_id.txt"
    run_id = id_file.read_text().strip() if id_file.is_file() else uuid.uuid4().hex[:8]
    id_file.write_text(run_id)
    return wandb.init(project=cfg.train.wandb_project, dir=str(run_dir), id=run_id, resume="allow",
                      config=to_dict(cfg), name=run_dir.name)
