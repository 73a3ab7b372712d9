"""What the loop does when something goes wrong that is not a bug: a stop signal, a CUDA OOM,
another process of the run that died or hangs; and the memory figures a long run logs."""

from __future__ import annotations

import functools
import os
import re
import signal
import threading
from pathlib import Path

import psutil
import torch

from vqa_grpo.errors import TrainingStopped
from vqa_grpo.training.checkpoint import list_checkpoints

OOM_ADVICE = (
    "lower train.per_device_batch_size (raise train.gradient_accumulation_steps to keep the batch), "
    "grpo.num_generations or grpo.max_completion_length, cap the image pixels of the processor, "
    "set grpo.fuse_prefill=off (the prompts' activations are then not held while sampling), "
    "or set model.gradient_checkpointing=true"
)


class StopSignals:
    """Turn SIGINT and SIGTERM into a request to stop after the current step.

    A signal only sets :attr:`received`; the loop finishes its step, saves a checkpoint and raises
    :class:`TrainingStopped`. With one process the handlers are put back at the first signal, so a
    second Ctrl-C interrupts at once (checkpoints are atomic, so that is safe). Under a launcher
    (``repeat_stops=False``) every further signal is absorbed too: torch's elastic agent forwards
    the terminal's Ctrl-C to workers that already got it, and then kills them itself 30 s later.
    A launched process that leaves on an error keeps absorbing them: when one rank dies the agent
    sends SIGTERM to the others at once, and the one whose collective failed must live to say why
    (the one-line stop) before it exits. Outside the main thread (where Python cannot install
    handlers) it does nothing.
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self, repeat_stops: bool = True):
        self.received: int | None = None
        self.repeat_stops = repeat_stops
        self._previous: dict = {}

    def __enter__(self) -> "StopSignals":
        if threading.current_thread() is threading.main_thread():
            for s in self.SIGNALS:
                self._previous[s] = signal.signal(s, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        self.received = self.received or signum
        if self.repeat_stops:
            self._restore()

    def _restore(self) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)
        self._previous = {}

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None or self.repeat_stops:
            self._restore()

    @property
    def name(self) -> str:
        return signal.Signals(self.received).name if self.received else ""


def is_oom(exc: BaseException) -> bool:
    """A device out-of-memory error (CUDA's, or the allocator's message on other backends)."""
    return isinstance(exc, torch.OutOfMemoryError) or (
        isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()
    )


def free_device_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()


_COLLECTIVE = (
    "gloo",
    "NCCL",
    "Connection reset by peer",
    "Connection closed by peer",
    "Timed out waiting",
    "ProcessGroup",
    "pair.cc",
    "Socket Timeout",
)


def is_collective_failure(exc: BaseException) -> bool:
    """A collective that failed because another process is gone or hangs (gloo's or NCCL's error)."""
    dist_error = getattr(torch.distributed, "DistError", None)
    return (dist_error is not None and isinstance(exc, dist_error)) or any(s in str(exc) for s in _COLLECTIVE)


def peer_lost(exc: BaseException, rank: int, world: int, run_dir: Path) -> TrainingStopped:
    """The one-line stop of a process whose collective failed (exit 1): what failed, and where to resume."""
    what = re.sub(r"^\[[^\]]*\]\s*", "", str(exc).strip().splitlines()[0]).split(". ")[0][:200]
    found = list_checkpoints(run_dir)
    last = f"the last checkpoint is {found[-1].name} in {run_dir}" if found else f"no checkpoint in {run_dir} yet"
    return TrainingStopped(
        f"rank {rank}: a collective of the {world} processes failed ({what}): another process "
        f"died or hung; {last}; continue with train.resume=auto on {world} processes",
        exit_code=1,
        every_rank=True,
    )


@functools.cache
def _process(pid: int):
    return psutil.Process(pid)


def memory_stats(device: torch.device) -> dict[str, float]:
    """This process's resident memory in MiB (``rss_mib``) and, on a CUDA device, the memory torch
    has allocated there (``cuda_allocated_mib``)."""
    out = {"rss_mib": _process(os.getpid()).memory_info().rss / 2**20}
    if device.type == "cuda":
        out["cuda_allocated_mib"] = torch.cuda.memory_allocated(device) / 2**20
    return out
