"""The back-end protocol: what :class:`~vqa_grpo.training.distributed.Dist` hands to the way the model is held.

Three back-ends implement it, one module each: ``ddp.DDP`` (one process, or accelerate's DDP: every
rank holds the whole model), ``fsdp.FSDP2`` (PyTorch's ``fully_shard``: each rank keeps 1/world of
every weight, gradient and AdamW moment) and ``deepspeed.DeepSpeed`` (ZeRO-2/3 through
``deepspeed.initialize``). ``Dist.from_env`` picks one from the launch (launch.py) and the run's
code calls ``Dist`` (checkpoint.py still asks ``dist.fsdp`` whether the weights it loads are sharded).
"""

from __future__ import annotations

from typing import Callable, ContextManager, Protocol

import torch


class Backend(Protocol):
    sharded_forward: bool
    """Every forward pass is a collective (the weights are partitioned): FSDP2, ZeRO-3."""

    def check_config(self, cfg) -> None:
        """Settings this back-end cannot run, refused (UserError) before the model loads."""

    def shard(self, model, reshard_root: bool, frozen: bool):
        """``model`` placed on the ranks (sharded, or rank 0's weights broadcast), returned.
        ``frozen``: it has no optimizer (the KL reference, a model being evaluated)."""

    def prepare(self, model, optimizer, train):
        """(model, optimizer) as training steps them: wrapped for DDP, a DeepSpeed engine, or as they are."""

    def backward(self, loss: torch.Tensor) -> None: ...

    def no_sync(self, model, sync: bool) -> ContextManager:
        """A block whose backward skips the gradient reduction unless ``sync`` (a step's last micro-batch)."""

    def step(self, model, optimizer, max_norm: float) -> float:
        """Clip to ``max_norm``, step unless the norm is non-finite, zero the gradients; the norm before clipping."""

    def decoding(self, model) -> ContextManager:
        """A block around the run's decoding: what the sharded weights need gathered throughout."""

    def synced_decoding(self) -> Callable[[bool], bool] | None:
        """When every forward pass is a collective, the one that keeps the ranks decoding in step
        (``any_rank(a row here still runs)``, handed to decoding as ``ForwardPlan.any_rank``); else None."""

    def model_state(self, model) -> dict | None:
        """The full state dict on rank 0 when the weights are partitioned (None elsewhere and otherwise)."""

    def optimizer_state(self, model, optimizer) -> dict | None:
        """The full optimizer state in 1-process layout on rank 0 when it is partitioned, else None."""

    def load_model_state(self, model, state: dict, strict: bool) -> None: ...

    def load_optimizer_state(self, model, optimizer, state: dict) -> None: ...

    def describe(self, model=None) -> str:
        """E.g. "2 processes, MULTI_CPU on cpu"; with ``model`` under sharding, rank 0's share of it."""
