"""Where a run's metrics go: ``metrics.jsonl`` always, and TensorBoard or wandb (``train.report_to``).

Every record is a flat dict with a ``step``; its numeric values become scalars of that step.
A resumed run's sinks hold what an uninterrupted run's would: ``metrics.jsonl`` loses the lines
after the checkpoint's step, TensorBoard is opened with ``purge_step`` there, and wandb (which
drops a step it has already seen) gets a new run that first replays the kept lines, when the
interrupted run had logged steps after the checkpoint; otherwise the same wandb run continues.
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

    def __init__(self, run_dir: Path, cfg: Config, resume_step: int = 0, resumed: bool = False):
        """``resumed``: the run continues ``run_dir`` (train.resume) from ``resume_step`` (0: it had
        no checkpoint and starts over)."""
        self.path = run_dir / "metrics.jsonl"
        dropped = truncate_log(self.path, resume_step) if resumed else 0
        self._file = self.path.open("a")
        self._tb = self._wandb = None
        if cfg.train.report_to == "tensorboard":
            self._tb = _tensorboard(run_dir / "tensorboard", resume_step + 1 if resumed else None)
        elif cfg.train.report_to == "wandb":
            self._wandb = _wandb(run_dir, cfg, resume_step, rewind=dropped > 0)
            if dropped:  # the new wandb run starts with the steps the checkpoint holds
                for line in self.path.read_text().splitlines():
                    self._log_scalars(json.loads(line))

    def _log_scalars(self, record: dict) -> None:
        step = int(record.get("step", 0))
        scalars = {k: float(v) for k, v in record.items() if k != "step" and _is_number(v)}
        if self._tb is not None:
            for k, v in scalars.items():
                self._tb.add_scalar(k, v, step)
            self._tb.flush()
        if self._wandb is not None and scalars:
            self._wandb.log(scalars, step=step)

    def log(self, record: dict) -> None:
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()
        self._log_scalars(record)

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


def truncate_log(path: Path, step: int) -> int:
    """Drop the lines a resumed run will write again (those after the checkpoint's step); return how many."""
    if not path.is_file():
        return 0
    lines = [x for x in path.read_text().splitlines() if x.strip()]
    keep = [x for x in lines if json.loads(x).get("step", 0) <= step]
    path.write_text("".join(x + "\n" for x in keep))
    return len(lines) - len(keep)


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _tensorboard(log_dir: Path, purge_step: int | None):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise UserError(
            "train.report_to=tensorboard needs the tensorboard package: pip install tensorboard, "
            "or set train.report_to=none"
        ) from None
    return SummaryWriter(str(log_dir), purge_step=purge_step)  # events from purge_step on are dropped


def _wandb(run_dir: Path, cfg: Config, resume_step: int, rewind: bool):
    """One wandb run per run directory (its id kept beside the logs), continued by a resumed run; a
    new one when ``rewind`` (the interrupted run logged steps after the checkpoint, which wandb would
    keep: it ignores a step it has seen), its notes naming the run it replaces."""
    try:
        import wandb
    except ImportError:
        raise UserError(
            "train.report_to=wandb needs wandb: pip install 'vqa-grpo[wandb]', or set train.report_to=tensorboard"
        ) from None
    id_file = run_dir / "wandb_run_id.txt"
    old = id_file.read_text().strip() if id_file.is_file() else None
    run_id = old if old and not rewind else uuid.uuid4().hex[:8]
    id_file.write_text(run_id)
    notes = (
        (f"resumed at step {resume_step}; replaces wandb run {old}, whose steps after {resume_step} were taken again")
        if old and run_id != old
        else None
    )
    return wandb.init(
        project=cfg.train.wandb_project,
        dir=str(run_dir),
        id=run_id,
        resume="allow",
        config=to_dict(cfg),
        name=run_dir.name,
        notes=notes,
    )
