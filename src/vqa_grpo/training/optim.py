"""AdamW and the learning-rate schedule (linear warmup, then constant, linear or cosine decay)."""

from __future__ import annotations

import math

import torch

from vqa_grpo.config import TrainConfig


def make_optimizer(params, cfg: TrainConfig) -> torch.optim.AdamW:
    """AdamW, fused (one kernel over all tensors) where torch has it for the parameters' device,
    else torch's default: the per-tensor loop costs a launch per tensor and operation."""
    params = [p for p in params if p.requires_grad]
    if not params:
        raise ValueError("the model has no trainable parameters")
    kwargs = dict(lr=cfg.learning_rate, weight_decay=cfg.weight_decay, betas=tuple(cfg.adam_betas))
    try:
        return torch.optim.AdamW(params, fused=True, **kwargs)
    except RuntimeError:  # a device or dtype without the fused kernel
        return torch.optim.AdamW(params, **kwargs)


def lr_factor(step: int, cfg: TrainConfig) -> float:
    """Multiplier of the peak learning rate at optimiser step ``step`` (0-based)."""
    if step < cfg.warmup_steps:
        return (step + 1) / (cfg.warmup_steps + 1)
    if cfg.lr_scheduler == "constant":
        return 1.0
    span = max(1, cfg.max_steps - cfg.warmup_steps)
    progress = min(1.0, (step - cfg.warmup_steps) / span)
    if cfg.lr_scheduler == "linear":
        return 1.0 - progress
    return 0.5 * (1.0 + math.cos(math.pi * progress))


def make_scheduler(optimizer: torch.optim.Optimizer, cfg: TrainConfig) -> torch.optim.lr_scheduler.LambdaLR:
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, cfg))
