"""The processes of a run: rank, world size and collectives through accelerate, and the back-end that holds the model.

One process (plain ``vqa-grpo train``): :class:`Dist` is a no-op with rank 0 of 1. Several
(``accelerate launch -m vqa_grpo.cli train ...``): accelerate sets up the process group (NCCL on
GPUs, gloo on the CPU) and this class asks it for rank, world size, reductions and gathers. How the
model is held is the back-end's (backend.py): DDP (ddp.py), FSDP2 (fsdp.py) or DeepSpeed ZeRO-2/3
(deepspeed.py), chosen from the launch environment (launch.py) by :meth:`Dist.from_env`.

How a step is split: the global batch is ``per_device_batch_size x world_size`` questions in one
seeded order; rank r takes its slice, and samples the G completions of each of its questions
itself, so a group never spans processes and advantages are computed within groups as with one
process. Gradients are averaged over ranks (DDP's all-reduce, FSDP's reduce-scatter), so every
loss that is a mean over equal per-rank parts is the global mean; SFT's token-mean NLL is divided
by the answer tokens of all ranks (times the world size) so that 2 processes x batch 1 equals 1
process x batch 2. Only rank 0 writes the run directory.
"""

from __future__ import annotations

import math
import os
from typing import Callable, TypeVar

import torch

from vqa_grpo.errors import UserError
from vqa_grpo.training.distributed.backend import Backend
from vqa_grpo.training.distributed.ddp import DDP
from vqa_grpo.training.distributed.deepspeed import DeepSpeed, require_deepspeed
from vqa_grpo.training.distributed.fsdp import FSDP2
from vqa_grpo.training.distributed.launch import (
    DeepSpeedSettings,
    FSDPSettings,
    launch_deepspeed,
    launch_fsdp,
    launched_world_size,
)

T = TypeVar("T")


class Dist:
    """Rank, world size and collectives of this run (accelerate's when launched on several
    processes); what depends on how the model is held goes to ``self.backend``."""

    def __init__(self, acc=None, fsdp: FSDPSettings | None = None, ds: DeepSpeedSettings | None = None):
        self.acc = acc  # None: one process
        self.fsdp, self.ds = fsdp, ds  # the launch's settings of the back-end, when not DDP
        self.backend: Backend
        if ds is not None:
            self.backend = DeepSpeed(acc, ds, self.any, self.is_main)
        elif fsdp is not None:
            self.backend = FSDP2(acc, fsdp, self.any, self.is_main)
        else:
            self.backend = DDP(acc)

    @classmethod
    def from_env(cls, device: str = "auto", timeout_s: float = 600) -> "Dist":
        """accelerate's processes when a launcher started several (gloo on the CPU), else one process.
        ``timeout_s``: how long a collective waits for a rank that hangs (train.collective_timeout).

        An FSDP or DeepSpeed launch is read here and accelerate is then started as a plain
        multi-process run (ACCELERATE_USE_FSDP/DEEPSPEED=false for this process): the back-end
        shards the model itself.
        """
        if launched_world_size() <= 1:
            return cls()
        ds = launch_deepspeed()
        if ds is not None:
            require_deepspeed()
            os.environ["ACCELERATE_USE_DEEPSPEED"] = "false"
        fsdp = launch_fsdp()
        if fsdp is not None:
            os.environ["ACCELERATE_USE_FSDP"] = "false"
        from datetime import timedelta

        from accelerate import Accelerator
        from accelerate.utils import InitProcessGroupKwargs

        acc = Accelerator(
            cpu=device == "cpu" or not torch.cuda.is_available(),
            kwargs_handlers=[InitProcessGroupKwargs(timeout=timedelta(seconds=timeout_s))],
        )
        if acc.distributed_type.name in ("FSDP", "DEEPSPEED"):  # set up by code rather than the launcher
            raise UserError(
                f"accelerate's own {acc.distributed_type.name} is not supported by vqa-grpo's loop; "
                "launch with configs/accelerate/fsdp.yaml or ddp.yaml"
            )
        return cls(acc, fsdp, ds)

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

    # ---- the back-end's (backend.py documents each) ---------------------------------------------

    @property
    def sharded_forward(self) -> bool:
        """Every forward pass is a collective (the weights are partitioned): FSDP or ZeRO-3."""
        return self.backend.sharded_forward

    def check_config(self, cfg) -> None:
        """Settings that cannot run on sharded weights (or under DeepSpeed), refused before the model loads."""
        self.backend.check_config(cfg)
        if not self.sharded_forward:
            return
        if cfg.model.quantization != "none":
            raise UserError(
                f"model.quantization={cfg.model.quantization} weights cannot be sharded by FSDP; set "
                "model.quantization=none, or launch with configs/accelerate/ddp.yaml"
            )
        if cfg.grpo.generation_backend == "vllm":
            raise UserError(
                "grpo.generation_backend=vllm needs the full weights on every process; set "
                "grpo.generation_backend=transformers, or launch with configs/accelerate/ddp.yaml"
            )

    def describe(self, model=None) -> str:
        return self.backend.describe(model)

    def shard(self, model, reshard_root: bool = False, frozen: bool = False):
        return self.backend.shard(model, reshard_root, frozen)

    def prepare(self, model, optimizer, train=None):
        return self.backend.prepare(model, optimizer, train)

    def backward(self, loss: torch.Tensor) -> None:
        self.backend.backward(loss)

    def no_sync(self, model, sync: bool):
        return self.backend.no_sync(model, sync)

    def step(self, model, optimizer, max_norm: float) -> float:
        return self.backend.step(model, optimizer, max_norm)

    def decoding(self, model):
        return self.backend.decoding(model)

    def synced_decoding(self):
        return self.backend.synced_decoding()

    def model_state(self, model) -> dict | None:
        return self.backend.model_state(model)

    def optimizer_state(self, model, optimizer) -> dict | None:
        return self.backend.optimizer_state(model, optimizer)

    def load_model_state(self, model, state: dict, strict: bool = True) -> None:
        self.backend.load_model_state(model, state, strict)

    def load_optimizer_state(self, model, optimizer, state: dict) -> None:
        self.backend.load_optimizer_state(model, optimizer, state)

    # ---- collectives -----------------------------------------------------------------------------

    def sum(self, value: float) -> float:
        """``value`` summed over ranks."""
        if self.acc is None:
            return value
        t = torch.tensor([float(value)], dtype=torch.float64, device=self.acc.device)
        return float(self.acc.reduce(t, reduction="sum").item())

    def max(self, value: float) -> float:
        """The largest ``value`` over ranks (on every rank)."""
        if self.acc is None:
            return value
        return max(float(v) for v in self.gather_lists([float(value)]))

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
        """``fn`` on this rank's share (items r, r + world, ...), gathered back into the input's order.

        Under FSDP or ZeRO-3 every rank's share is padded to the same length (with copies of the share's
        first item, or of item 0) so that all run ``fn``'s forward passes the same number of times;
        the padding's results are dropped.
        """
        if self.acc is None:
            return fn(items)
        from accelerate.utils import gather_object

        share = items[self.rank :: self.world]
        n = len(share)
        if self.sharded_forward and items:
            share = share + [share[0] if share else items[0]] * (math.ceil(len(items) / self.world) - n)
        mine = fn(share)[:n]
        shards = gather_object([mine])
        out: list = [None] * len(items)
        for r, shard in enumerate(shards):
            out[r :: self.world] = shard
        return out

    def gather_lists(self, items: list) -> list:
        """Every rank's ``items`` (picklable), concatenated in rank order, on every rank."""
        if self.acc is None:
            return items
        from accelerate.utils import gather_object

        return [x for share in gather_object([items]) for x in share]

    def barrier(self) -> None:
        if self.acc is not None:
            self.acc.wait_for_everyone()

    def from_main(self, value: T) -> T:
        """Rank 0's ``value`` on every rank (a picklable object)."""
        if self.acc is None:
            return value
        from accelerate.utils import broadcast_object_list

        return broadcast_object_list([value], from_process=0)[0]
