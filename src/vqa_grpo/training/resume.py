"""Where a run starts: fresh, or from the newest intact checkpoint of its directory (or the one named).

``train.resume=auto`` reads every ``checkpoint-<step>/`` newest first against its manifest.json
(training/integrity.py) and takes the first that is whole, warning about each one it passes over; an
explicit ``train.resume=PATH`` to a damaged checkpoint is a UserError naming the bad file. The
run's settings then come back from the checkpoint (training/resume_settings.py).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Iterable

from vqa_grpo.config import Config
from vqa_grpo.distributed import Dist
from vqa_grpo.errors import UserError
from vqa_grpo.training import integrity
from vqa_grpo.training.checkpoint import STATE_FILE, list_checkpoints
from vqa_grpo.training.resume_settings import missing_python_rewards, restore

log = logging.getLogger("vqa_grpo.resume")


def start_point(
    cfg: Config, mode: str, dist: Dist, given: Iterable[str], reward_funcs: dict | None = None
) -> tuple[Config, Path | None, dict[str, list]]:
    """The config the run goes on with, the checkpoint it resumes from (None: a fresh start) and the
    keys this resume changes ({key: [old, new]}). Refused in one line, before anything is read or
    written: a checkpoint of the other mode (sft, grpo), settings that differ from the checkpoint's
    (restore), and GRPO without a reward function the run was given in Python."""
    found = resume_path(cfg, Path(cfg.train.output_dir), dist)
    saved = json.loads((found / STATE_FILE).read_text()).get("mode") if found is not None else None
    if saved not in (None, mode):
        command = {"sft": "sft", "grpo": "train"}
        raise UserError(
            f"resume: {found} was saved by vqa-grpo {command.get(saved, saved)}, not {command.get(mode, mode)}; "
            f"resume it with vqa-grpo {command.get(saved, saved)}, or start a new run from its weights "
            "(model.name_or_path) in a new train.output_dir"
        )
    cfg, changed = restore(cfg, found, given, reward_funcs or {}, say=dist.is_main)
    if mode == "grpo":
        missing_python_rewards(cfg, reward_funcs or {}, resumed=found is not None)
    return cfg, found, changed


def resume_path(cfg: Config, run_dir: Path, dist: Dist) -> Path | None:
    """The checkpoint to resume from (None: start fresh). Rank 0 reads the checkpoints (every file
    hashed once, not once per process) and the others take its answer, or its UserError."""
    found, error = None, None
    if dist.is_main:
        try:
            found = _choose(cfg, run_dir, dist.world)
        except UserError as e:
            error = str(e)
    found, error = dist.from_main((found, error))
    if error is not None:
        raise UserError(error)
    return found


def _choose(cfg: Config, run_dir: Path, world: int) -> Path | None:
    if cfg.train.resume is None:
        return None
    if cfg.train.resume == "auto":
        found = _newest_intact(run_dir)
    else:
        found = Path(cfg.train.resume)
        if not (found / STATE_FILE).is_file():
            raise UserError(f"train.resume={found} is not a checkpoint directory (it has no {STATE_FILE})")
        problem = integrity.check(found)
        if problem is not None:
            raise UserError(
                f"train.resume={found} is damaged ({problem}); resume from another checkpoint, "
                "or train.resume=auto for the newest intact one"
            )
    if found is None:
        return None
    saved = json.loads((found / STATE_FILE).read_text()).get("world_size", 1)
    if saved != world:
        raise UserError(
            f"{found} was saved by {saved} processes, this run has {world}; "
            f"resume with {saved} processes (the data order and RNG states are per process)"
        )
    return found


def _newest_intact(run_dir: Path) -> Path | None:
    damaged = []
    for ckpt in reversed(list_checkpoints(run_dir)):
        problem = integrity.check(ckpt)
        if problem is None:
            if not integrity.has_manifest(ckpt):
                log.warning("%s has no manifest.json (saved by an older vqa-grpo): resuming from it unchecked", ckpt)
            if damaged:
                log.warning("resuming from %s, the newest intact checkpoint", ckpt.name)
            return ckpt
        damaged.append(f"{ckpt.name} ({problem})")
        log.warning("%s is damaged (%s); passing over it", ckpt, problem)
    if damaged:
        raise UserError(
            f"no intact checkpoint in {run_dir}: {'; '.join(damaged)}; remove the damaged ones "
            "to start over, or restore them"
        )
    return None


def check_fresh(cfg: Config, run_dir: Path) -> None:
    """A new run does not write into an old one (its logs, checkpoints and rotation would mix)."""
    if cfg.train.resume is not None or not run_dir.is_dir():
        return
    if (run_dir / "metrics.jsonl").exists() or (run_dir / "final").exists() or list_checkpoints(run_dir):
        raise UserError(
            f"train.output_dir={run_dir} already holds a run; continue it with train.resume=auto, "
            "or choose a new train.output_dir"
        )
