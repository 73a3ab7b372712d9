"""The forward plan: which path a run's passes take, chosen once and handed to every pass.

Three paths, one result up to float rounding:

- plain: each prompt repeated G times; transformers' ``generate`` samples, and the loss runs one
  forward pass over prompt + completion;
- shared prefix: each prompt (image included) runs once per group and its KV cache is expanded
  to the G rows (models/prefix.py);
- fused prefill: the shared prefix's one pass, run with gradient before sampling, also serves
  the loss, so a step runs each prompt once in all (grpo/plan.py says when that is exact).

Sampling and the passes after it may differ: a generation config that only ``generate`` honours
samples on the plain path while the loss shares the prefix, and gradient checkpointing (which
drops the KV cache) the other way round. The plan also carries the adapter's position rule and,
under sharded weights, the collective that keeps the ranks decoding in step. GRPO runs choose
theirs once (grpo/plan.py ``choose_plan``); evaluation decodes on ``plain_plan``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Literal

import torch

from vqa_grpo.config import GRPOConfig
from vqa_grpo.errors import UserError

SamplingPath = Literal["plain", "shared prefix", "vLLM"]
LossPath = Literal["plain", "shared prefix", "fused prefill"]


@dataclass(frozen=True)
class ForwardPlan:
    """The paths of one run (see the module docstring) and why."""

    sampling: SamplingPath = "plain"
    loss: LossPath = "plain"
    """The path of the loss's pass (plain under gradient checkpointing, which drops the KV cache).
    The log-prob passes without gradient (pi_old, the reference, vLLM's ratios) share the prefix
    wherever the family has a position rule (``score_shared``)."""
    position_rule: str | None = None
    """The adapter's rule for continuing a prompt's positions (``FamilyAdapter.position_rule``)."""
    any_rank: Callable[[bool], bool] | None = None
    """Synced decoding (sharded weights): ``any_rank(a row here still runs)``, the same answer on
    every rank, and decoding stops only when it is False. None: each rank stops on its own."""
    reason: str = ""
    decode: Literal["dynamic", "static", "static, CUDA graphs"] = "dynamic"
    """How the shared-prefix sampler steps (models/static_decode.py)."""
    logprob_chunk_size: int = GRPOConfig.logprob_chunk_size
    """Positions the LM head runs on at once in a log-prob pass (grpo.logprob_chunk_size, models/scoring.py)."""

    @property
    def sample_shared(self) -> bool:
        return self.sampling == "shared prefix"

    @property
    def score_shared(self) -> bool:
        """The log-prob passes without gradient (pi_old, the reference, vLLM's ratios) share the prefix."""
        return self.position_rule is not None

    def shares_prefix_now(self) -> bool:
        """Whether a log-prob pass run now shares the prefix: with gradient the loss's path (plain
        under gradient checkpointing), without it the other log-prob passes' (``score_shared``)."""
        return self.loss != "plain" if torch.is_grad_enabled() else self.score_shared

    @property
    def fused(self) -> bool:
        return self.loss == "fused prefill"

    def describe(self) -> str:
        decode = f" ({self.decode} decode)" if self.decode != "dynamic" else ""
        scoring = "shared prefix" if self.score_shared else "plain"
        return f"sampling: {self.sampling}{decode}; loss: {self.loss}; log-prob passes: {scoring} [{self.reason}]"


PLAIN = ForwardPlan(reason="plain")


def plain_plan(any_rank: Callable[[bool], bool] | None, reason: str) -> ForwardPlan:
    """Every pass on the plain path (evaluation's greedy answers, SFT's loss); ``any_rank`` as in
    :class:`ForwardPlan` (the back-end's ``synced_decoding()``)."""
    return ForwardPlan(any_rank=any_rank, reason=reason)


def shared_prefix_reason(adapter, setting: str) -> str | None:
    """Why ``grpo.shared_prefix`` = ``setting`` leaves the shared prefix off for ``adapter``'s family
    (None: it runs). ``on`` where the family has no position rule is a UserError."""
    if setting not in ("auto", "on", "off"):
        raise UserError(f"grpo.shared_prefix={setting!r} is not allowed; choose one of auto, on, off")
    missing = None if adapter.position_rule else f"the {adapter.name} adapter has no tested shared-prefix position rule"
    if setting == "on" and missing:
        raise UserError(f"grpo.shared_prefix=on cannot run: {missing}; set grpo.shared_prefix=auto or off")
    return "grpo.shared_prefix=off" if setting == "off" else missing
