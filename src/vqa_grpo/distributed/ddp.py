"""One process, or DDP through accelerate (configs/accelerate/ddp.yaml): every rank holds the whole
model, accelerate wraps it and all-reduces the gradients."""

from __future__ import annotations

import contextlib

import torch

from vqa_grpo.distributed.dist import Dist
from vqa_grpo.distributed.helpers import step_if_finite


class DDP(Dist):
    """The whole model on every rank; ``DDP()`` (no accelerator) is a run of one process."""

    def prepare(self, model, optimizer, train=None):
        return (model, optimizer) if self.acc is None else self.acc.prepare(model, optimizer)

    def no_sync(self, model, sync: bool):
        if self.acc is None or sync:
            return contextlib.nullcontext()
        return self.acc.no_sync(model)

    def step(self, model, optimizer, max_norm: float) -> float:
        return step_if_finite(self._clip_grad_norm(model, max_norm), optimizer)

    def _clip_grad_norm(self, model, max_norm: float) -> float:
        limit = max_norm if max_norm > 0 else float("inf")
        if self.acc is not None:
            return float(self.acc.clip_grad_norm_(model.parameters(), limit))
        params = [p for p in model.parameters() if p.grad is not None]
        return float(torch.nn.utils.clip_grad_norm_(params, limit)) if params else 0.0

    def describe(self, model=None) -> str:
        if self.acc is None:
            return "1 process"
        return f"{self.acc.num_processes} processes, {self.acc.distributed_type.value} on {self.acc.device.type}"
