"""The processes of a run, through accelerate.

One process (plain ``vqa-grpo train``): :class:`Dist` is a no-op with rank 0 of 1. Several
(``accelerate launch -m vqa_grpo.cli train ...``): accelerate sets up the process group (NCCL on
GPUs, gloo on the CPU) and wraps the model for DDP; this class only asks it for rank, world size,
reductions, gathers and the wrapped model. FSDP and DeepSpeed configs are refused (one line) until
the loop can decode in step on every rank with sharded weights (README, "Scaling").

How a step is split: the global batch is ``per_device_batch_size x world_size`` questions in one
seeded order; rank r takes its slice, and samples the G completions of each of its questions
itself, so a group never spans processes and advantages are computed within groups as with one
process. Gradients are averaged over ranks by the DDP wrapper, so every loss that
is a mean over equal per-rank parts is the global mean; SFT's token-mean NLL is divided by the
answer tokens of all ranks (times the world size) so that 2 processes x batch 1 equals 1 process x
batch 2. Only rank 0 writes the run directory.
"""

from __future__ import annotations

import contextlib
import os
from typing import Callable, TypeVar

import torch

T = TypeVar("T")


def launched_world_size() -> int:
    """Processes started by a launcher (accelerate launch, torchrun): WORLD_SIZE, else 1."""
    return int(os.environ.get("WORLD_SIZE", "1"))


class Dist:
    """Rank, world size and collectives of this run (accelerate's when launched on several processes)."""

    def __init__(self, acc=None):
        self.acc = acc  # None: one process

    @classmethod
    def from_env(cls, device: str = "auto") -> "Dist":
        """accelerate's processes when a launcher started several (gloo on the CPU), else one process."""
        if launched_world_size() <= 1:
            return cls()
        from accelerate import Accelerator

        acc = Accelerator(cpu=device == "cpu" or not torch.cuda.is_available())
        kind = acc.distributed_type.name
        if kind in ("FSDP", "DEEPSPEED"):
            from vqa_grpo.errors import UserError

            raise UserError(
                f"accelerate's {kind} is not supported by vqa-grpo's loop yet (sampling and evaluation would need every "
                "rank to decode in step with sharded weights, and checkpoints the sharded optimizer); "
                "use configs/accelerate/ddp.yaml, with model.lora=true or model.quantization=4bit for a large model")
        return cls(acc)

    def describe(self) -> str:
        if self.acc is None:
            return "1 process"
        return f"{self.world} processes, {self.acc.distributed_type.value} on {self.acc.device.type}"

    @property
    def rank(self) -> int:
        return self.acc.process_index if self.acc else 0

    @property
    def world(self) -> int:
        return self.acc.num_processes if self.acc else 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def device(self, fallback: torch.device) -> torch.device:
        return self.acc.device if self.acc else fallback

    def prepare(self, model, optimizer):
        """The model wrapped for DDP/FSDP/DeepSpeed (and its optimizer), as accelerate's config says."""
        if self.acc is None:
            return model, optimizer
        return self.acc.prepare(model, optimizer)

    def backward(self, loss: torch.Tensor) -> None:
        if self.acc is None:
            loss.backward()
        else:
            self.acc.backward(loss)

    def no_sync(self, model, sync: bool):
        """Skip the gradient all-reduce of this backward unless ``sync`` (the step's last one)."""
        if self.acc is None or sync:
            return contextlib.nullcontext()
        return self.acc.no_sync(model)

    def clip_grad_norm(self, model, max_norm: float) -> float:
        """Global gradient norm (over every rank's shard), clipped to ``max_norm`` when > 0."""
        params = [p for p in model.parameters() if p.grad is not None]
        limit = max_norm if max_norm > 0 else float("inf")
        if self.acc is None:
            return float(torch.nn.utils.clip_grad_norm_(params, limit)) if params else 0.0
        return float(self.acc.clip_grad_norm_(model.parameters(), limit))

    def sum(self, value: float) -> float:
        """``value`` summed over ranks."""
        if self.acc is None:
            return value
        t = torch.tensor([float(value)], dtype=torch.float64, device=self.acc.device)
        return float(self.acc.reduce(t, reduction="sum").item())

    def mean_stats(self, stats: dict) -> dict:
        """Each numeric stat averaged over ranks (None stays None); every rank gets the result."""
        if self.acc is None:
            return stats
        keys = sorted(k for k, v in stats.items() if isinstance(v, (int, float)) and not isinstance(v, bool))
        t = torch.tensor([float(stats[k]) for k in keys], dtype=torch.float64, device=self.acc.device)
        t = self.acc.reduce(t, reduction="mean")
        return {**stats, **{k: float(v) for k, v in zip(keys, t.tolist())}}

    def any(self, flag: bool) -> bool:
        """True on every rank when it is true on one (e.g. a stop signal seen by one process)."""
        return self.sum(1.0 if flag else 0.0) > 0

    def map_sharded(self, fn: Callable[[list], list[T]], items: list) -> list[T]:
        """``fn`` on this rank's share (items r, r + world, ...), gathered back into the input's order."""
        if self.acc is None:
            return fn(items)
        from accelerate.utils import gather_object

        mine = fn(items[self.rank :: self.world])
        shards = gather_object([mine])
        out: list = [None] * len(items)
        for r, shard in enumerate(shards):
            out[r :: self.world] = shard
        return out

    def barrier(self) -> None:
        if self.acc is not None:
            self.acc.wait_for_everyone()
