"""One process, or DDP through accelerate (configs/accelerate/ddp.yaml): every rank holds the whole
model, accelerate wraps it and all-reduces the gradients."""

from __future__ import annotations

import contextlib

import torch

from vqa_grpo.training.distributed.helpers import load_full_model_state, load_full_optimizer_state, step_if_finite


class DDP:
    sharded_forward = False

    def __init__(self, acc=None):
        self.acc = acc  # None: one process

    def check_config(self, cfg) -> None:
        pass

    def shard(self, model, reshard_root: bool = False, frozen: bool = False):
        return model

    def prepare(self, model, optimizer, train=None):
        return (model, optimizer) if self.acc is None else self.acc.prepare(model, optimizer)

    def backward(self, loss: torch.Tensor) -> None:
        if self.acc is None:
            loss.backward()
        else:
            self.acc.backward(loss)

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

    def decoding(self, model):
        return contextlib.nullcontext()

    def synced_decoding(self):
        return None  # each rank holds the whole model: it stops decoding on its own

    def model_state(self, model) -> dict | None:
        return None  # the module's own state dict is the full one

    def optimizer_state(self, model, optimizer) -> dict | None:
        return None

    def load_model_state(self, model, state: dict, strict: bool = True) -> None:
        load_full_model_state(model, state, strict)

    def load_optimizer_state(self, model, optimizer, state: dict) -> None:
        load_full_optimizer_state(model, optimizer, state)

    def describe(self, model=None) -> str:
        if self.acc is None:
            return "1 process"
        return f"{self.acc.num_processes} processes, {self.acc.distributed_type.value} on {self.acc.device.type}"
