"""The processes of a run and the way they hold the model: :class:`Dist`, the base of the back-ends.

One process (plain ``vqa-grpo train``): rank 0 of 1, every collective a no-op. Several
(``accelerate launch -m vqa_grpo.cli train ...``): accelerate sets up the process group (NCCL on
GPUs, gloo on the CPU) and :class:`Dist` asks it for rank, world size, reductions and gathers. How
the model is held is the subclass's: ``DDP`` (ddp.py: one process, or every rank the whole model),
``FSDP2`` (fsdp.py) or ``DeepSpeed`` ZeRO-2/3 (deepspeed.py), made from the launch environment
(launch.py) by ``make_dist`` (factory.py).

How a step is split: the global batch is ``per_device_batch_size x world_size`` questions in one
seeded order; rank r takes its slice, and samples the G completions of each of its questions
itself, so a group never spans processes and advantages are computed within groups as with one
process. Gradients are averaged over ranks (DDP's all-reduce, FSDP's reduce-scatter), so every
loss that is a mean over equal per-rank parts is the global mean; SFT's token-mean NLL is divided
by the answer tokens of all ranks (times the world size) so that 2 processes x batch 1 equals 1
process x batch 2. Only rank 0 writes the run directory.
"""

from __future__ import annotations

import abc
import contextlib
import math
from typing import Callable, ContextManager, TypeVar

import torch
from accelerate.utils import broadcast_object_list, gather_object

from vqa_grpo.distributed.helpers import load_optimizer_keeping_kind
from vqa_grpo.errors import UserError

T = TypeVar("T")


class Dist(abc.ABC):
    """Rank, world size and collectives of this run (accelerate's when launched on several
    processes), and what every back-end does to the model, as it is done to a whole model; each
    subclass replaces what its way of holding the model changes."""

    sharded_forward: bool = False
    """Every forward pass is a collective (the weights are partitioned): FSDP2, ZeRO-3."""

    def __init__(self, acc=None):
        self.acc = acc  # accelerate's Accelerator; None: one process

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
        return [x for share in gather_object([items]) for x in share]

    def barrier(self) -> None:
        if self.acc is not None:
            self.acc.wait_for_everyone()

    def from_main(self, value: T) -> T:
        """Rank 0's ``value`` on every rank (a picklable object)."""
        if self.acc is None:
            return value
        return broadcast_object_list([value], from_process=0)[0]

    # ---- the model, as this back-end holds it ---------------------------------------------------

    def check_config(self, cfg) -> None:
        """Settings this back-end cannot run, refused (UserError) before the model loads: under
        sharded weights, quantized ones and vLLM (which needs the full weights)."""
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

    @abc.abstractmethod
    def describe(self, model=None) -> str:
        """E.g. "2 processes, MULTI_CPU on cpu"; with ``model`` under sharding, rank 0's share of it."""

    def shard(self, model, reshard_root: bool = False, frozen: bool = False):
        """``model`` placed on the ranks (sharded, or rank 0's weights broadcast), returned.
        ``frozen``: it has no optimizer (the KL reference, a model being evaluated)."""
        return model

    def prepare(self, model, optimizer, train=None):
        """(model, optimizer) as training steps them (``train``: the run's TrainConfig)."""
        return model, optimizer

    def backward(self, loss: torch.Tensor) -> None:
        if self.acc is None:
            loss.backward()
        else:
            self.acc.backward(loss)

    @abc.abstractmethod
    def no_sync(self, model, sync: bool) -> ContextManager:
        """A block whose backward skips the gradient reduction unless ``sync`` (a step's last micro-batch)."""

    @abc.abstractmethod
    def step(self, model, optimizer, max_norm: float) -> float:
        """Clip to ``max_norm``, step unless the norm is non-finite, zero the gradients; the norm before clipping."""

    def decoding(self, model) -> ContextManager:
        """A block around the run's decoding: what the sharded weights need gathered throughout."""
        return contextlib.nullcontext()

    def synced_decoding(self) -> Callable[[bool], bool] | None:
        """When every forward pass is a collective, the one that keeps the ranks decoding in step
        (``any(a row here still runs)``, handed to decoding as ``ForwardPlan.any_rank``); else None:
        a rank holding the whole model stops decoding on its own."""
        return self.any if self.sharded_forward else None

    # ---- checkpoints: the files are those of a 1-process run under every back-end ----------------

    def model_state(self, model) -> dict | None:
        """The full state dict on rank 0 when the weights are partitioned (None on the other ranks),
        else None: the module's own state dict is the full one."""
        return None

    def optimizer_state(self, model, optimizer) -> dict | None:
        """The full optimizer state in 1-process layout on rank 0 when it is partitioned, else None."""
        return None

    def load_model_state(self, model, state: dict, strict: bool = True) -> None:
        """A checkpoint's full ``state`` (the same on every rank) into ``model`` as :meth:`shard` left it."""
        model.load_state_dict(state, strict=strict)

    def load_adapter_state(self, model, weights: dict) -> None:
        """A saved LoRA adapter's ``weights`` (PEFT's saved names) into the PEFT ``model`` as :meth:`shard` left it."""
        from peft import set_peft_model_state_dict

        set_peft_model_state_dict(model, weights)

    def load_optimizer_state(self, model, optimizer, state: dict) -> None:
        """A checkpoint's optimizer ``state`` (1-process layout) into ``optimizer`` before :meth:`prepare`."""
        load_optimizer_keeping_kind(optimizer, state)
