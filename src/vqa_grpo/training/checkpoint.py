"""Checkpoints: model (safetensors) or adapter, processor, optimizer, scheduler, RNG states, data
position, step, best metric and config. Every directory (checkpoints, ``best/``, ``final/``) is
written to a temporary directory and renamed, so a kill during a save leaves the previous one
intact. Loaded with ``torch.load(weights_only=True)`` only.
"""

from __future__ import annotations

import json
import random
import re
import shutil
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file

from vqa_grpo.config import save_config
from vqa_grpo.distributed import DDP
from vqa_grpo.errors import TrainingStopped
from vqa_grpo.training.integrity import is_no_space, write_manifest

STATE_FILE = "trainer_state.json"


def save_model(model, processor, out: Path, state_dict: dict | None = None, run_dir: Path | None = None) -> None:
    """Model (or adapter) and processor, written to ``.tmp-<name>`` and renamed to ``out``.
    ``state_dict``: the full weights gathered from a sharded ``model`` (Dist.model_state). A full
    disk removes the half-written copy and raises TrainingStopped naming the last good checkpoint
    of ``run_dir`` (default: ``out``'s parent)."""
    tmp = out.with_name(f".tmp-{out.name}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        _write_model(model, processor, tmp, state_dict)
    except Exception as e:
        if not is_no_space(e):
            raise
        shutil.rmtree(tmp, ignore_errors=True)
        raise no_space(out.name, run_dir or out.parent) from e
    _replace(tmp, out)


def no_space(what: str, run_dir: Path) -> TrainingStopped:
    """The one-line stop of a save that ran out of space (exit 1; nothing half-written is left)."""
    good = list_checkpoints(run_dir)
    last = f"the last good checkpoint is {good[-1].name}" if good else "no checkpoint had been saved"
    return TrainingStopped(f"no space left while saving {what} in {run_dir}; {last}", exit_code=1)


def _write_model(model, processor, out: Path, state_dict: dict | None = None) -> None:
    if state_dict is None:
        model.save_pretrained(out, safe_serialization=True)
    else:
        model.save_pretrained(out, safe_serialization=True, state_dict=state_dict)
    processor.save_pretrained(out)


def _save(obj, path: Path) -> None:
    """``torch.save`` through a Python file, so that a full disk surfaces as the OSError it is."""
    with path.open("wb") as f:
        torch.save(obj, f)


def _replace(tmp: Path, out: Path) -> None:
    """Put the finished ``tmp`` in place of ``out``: the old ``out`` is renamed aside first and removed
    last, so at every moment one complete copy exists (as ``out``, or as ``.old-<name>``)."""
    old = out.with_name(f".old-{out.name}")
    shutil.rmtree(old, ignore_errors=True)
    if out.exists():
        out.rename(old)
    tmp.rename(out)
    shutil.rmtree(old, ignore_errors=True)


def rng_state() -> dict:
    np_state = np.random.get_state()
    return {
        "python": [list(x) if isinstance(x, tuple) else x for x in random.getstate()],
        "numpy": [np_state[0], np_state[1].tolist(), *np_state[2:]],
    }


def set_rng_state(state: dict, torch_state: dict) -> None:
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    npy = state["numpy"]
    np.random.set_state((npy[0], np.array(npy[1], dtype=np.uint32), *npy[2:]))
    torch.set_rng_state(torch_state["cpu"])
    if torch.cuda.is_available() and "cuda" in torch_state:
        torch.cuda.set_rng_state_all(torch_state["cuda"])


def save_checkpoint(
    run_dir: Path, step: int, model, processor, optimizer, scheduler, state: dict, limit: int, *, config=None, dist=None
) -> Path:
    """Write ``checkpoint-<step>/`` atomically and keep at most ``limit`` checkpoints.

    Under several processes (``dist``) every rank calls it: under FSDP all first gather the full
    weights and optimizer state to rank 0 (the files are those of a 1-process run); rank 0 writes
    the weights, optimizer, scheduler and trainer state, each other rank its RNG states
    (``rng-rank<r>.pt``), and rank 0 writes ``manifest.json`` and renames the directory once all
    have written. A full disk on any rank removes the half-written directory and raises
    TrainingStopped on every rank (the previous checkpoints stay as they were).
    """
    final = run_dir / f"checkpoint-{step}"
    tmp = run_dir / f".tmp-checkpoint-{step}"
    weights = dist.model_state(model) if dist is not None else None
    moments = dist.optimizer_state(model, optimizer) if dist is not None else None

    def main_files():
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        _write_model(model, processor, tmp, weights)
        if config is not None:
            save_config(config, tmp / "config.yaml")
        _save(moments if moments is not None else optimizer.state_dict(), tmp / "optimizer.pt")
        _save(scheduler.state_dict(), tmp / "scheduler.pt")
        _save(torch_rng_state(), tmp / "rng.pt")
        (tmp / STATE_FILE).write_text(json.dumps({**state, "step": step, "world_size": world, "rng": rng_state()}))

    def rank_rng():  # each rank but 0: its RNG states
        _save({**torch_rng_state(), **rng_state()}, tmp / f"rng-rank{dist.rank}.pt")

    def finish():
        write_manifest(tmp)
        _replace(tmp, final)
        for old in list_checkpoints(run_dir)[:-limit] if limit > 0 else []:
            shutil.rmtree(old, ignore_errors=True)

    world = dist.world if dist is not None else 1
    for writers in ({0: main_files}, {r: rank_rng for r in range(1, world)}, {0: finish}):
        _each_rank_writes(dist, tmp, final.name, run_dir, writers)
    return final


def _each_rank_writes(dist, tmp: Path, what: str, run_dir: Path, writers: dict) -> None:
    """Run this rank's writer (if it has one), then agree over all ranks whether every write found
    space (a collective: the barrier between the phases of a save). Out of space anywhere: the
    half-written ``tmp`` is removed and every rank raises the same TrainingStopped."""
    rank = dist.rank if dist is not None else 0
    failed = None
    if rank in writers:
        try:
            writers[rank]()
        except Exception as e:
            if not is_no_space(e):
                raise
            failed = e
    if dist.any(failed is not None) if dist is not None else failed is not None:
        if rank == 0:
            shutil.rmtree(tmp, ignore_errors=True)
        if dist is not None:
            dist.barrier()
        raise no_space(what, run_dir) from failed


def _model_class(model) -> type:
    """The transformers class of ``model`` (FSDP2 swaps a sharded module's class for a subclass)."""
    from torch.distributed.fsdp import FSDPModule  # here: a second to import, for FSDP2's class alone

    return next(c for c in type(model).__mro__ if not issubclass(c, FSDPModule))


def _adapter_weights(path: Path) -> dict:
    """The saved LoRA adapter weights, under PEFT's saved names."""
    weights = {}
    for f in sorted(path.glob("*.safetensors")):
        weights.update(load_file(f))
    return weights


def torch_rng_state() -> dict:
    out = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        out["cuda"] = torch.cuda.get_rng_state_all()
    return out


def list_checkpoints(run_dir: Path) -> list[Path]:
    found = [
        p
        for p in run_dir.glob("checkpoint-*")
        if re.fullmatch(r"checkpoint-\d+", p.name) and (p / STATE_FILE).is_file()
    ]
    return sorted(found, key=lambda p: int(p.name.split("-")[1]))


def load_checkpoint(path: Path, model, optimizer, scheduler, rank: int = 0, dist=None) -> dict:
    """Restore weights, optimizer, scheduler and this rank's RNG states; return the trainer state.

    Every rank reads the full files; ``dist`` (default: one process) copies them into the model and
    optimizer as it holds them (under FSDP each rank keeps its shard).
    """
    dist = dist if dist is not None else DDP()
    moments = torch.load(path / "optimizer.pt", weights_only=True)
    if (path / "adapter_config.json").is_file():
        dist.load_adapter_state(model, _adapter_weights(path))
    else:
        # from_pretrained maps the saved key names (which transformers may rename on save) back
        # to the module's own; the result is then copied into the live model in place.
        loaded = _model_class(model).from_pretrained(path, dtype=next(model.parameters()).dtype)
        dist.load_model_state(model, loaded.state_dict())
    dist.load_optimizer_state(model, optimizer, moments)
    scheduler.load_state_dict(torch.load(path / "scheduler.pt", weights_only=True))
    state = json.loads((path / STATE_FILE).read_text())
    if rank == 0:
        set_rng_state(state["rng"], torch.load(path / "rng.pt", weights_only=True))
    else:
        mine = torch.load(path / f"rng-rank{rank}.pt", weights_only=True)
        set_rng_state(mine, mine)
    return state
