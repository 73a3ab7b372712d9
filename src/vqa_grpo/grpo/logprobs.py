"""The passes without gradient a rollout needs before its loss: the rollout policy's log-probs
pi_old (the ratio's denominator, when rollouts are reused or vLLM sampled them), the truncated
importance weights of vLLM's tokens, and the frozen reference's log-probs for the KL term.

Shapes as in rollout.py: R = B x G rows, C completion tokens.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch

from vqa_grpo.config import Config, GRPOConfig
from vqa_grpo.grpo.rollout import Rollout, rollout_logprobs
from vqa_grpo.grpo.vllm_backend import truncated_is_weights
from vqa_grpo.models.adapters import FamilyAdapter
from vqa_grpo.models.scoring import tempered_and_raw_logprobs


@dataclass(frozen=True)
class Reference:
    """The frozen policy of the KL term: a copy of the starting model, or (``copy`` None, with LoRA)
    the policy itself with its adapters switched off, so no second copy is held."""

    copy: torch.nn.Module | None = None

    @classmethod
    def for_run(cls, cfg: Config, model: torch.nn.Module) -> Reference | None:
        """The run's reference; None when there is no KL term (beta = 0, or the seed report's loss)."""
        if cfg.grpo.beta == 0 or cfg.grpo.loss_type == "seed_report":
            return None
        if cfg.model.lora:
            return cls(None)
        frozen = copy.deepcopy(model).eval()
        for p in frozen.parameters():
            p.requires_grad_(False)
        return cls(frozen)

    def logprobs(self, policy: torch.nn.Module, adapter: FamilyAdapter, rollout: Rollout) -> torch.Tensor:
        """log pi_ref of the rollout's tokens [R, C]."""
        if self.copy is not None:
            return rollout_logprobs(self.copy, adapter, rollout, with_entropy=False)[0]
        with policy.disable_adapter():
            return rollout_logprobs(policy, adapter, rollout, with_entropy=False)[0]


@torch.no_grad()
def add_old_and_reference(
    rollout: Rollout,
    policy: torch.nn.Module,
    adapter: FamilyAdapter,
    reference: Reference | None,
    grpo: GRPOConfig,
    vllm_sampled: bool,
) -> Rollout:
    """``rollout`` with ``old_logprobs`` (when vLLM sampled it or grpo.num_iterations > 1),
    ``is_weights`` (vLLM) and ``ref_logprobs`` (a reference) filled in.

    With vLLM sampling pi_old is always the trainer's, and the tokens carry the truncated importance
    weights min(pi_old / pi_vllm, grpo.vllm_is_cap), both raw (temperature 1; vllm_backend.py). One
    forward pass gives pi_old at the rows' temperatures and the raw log-probs, in chunks of
    grpo.logprob_chunk_size positions (models/scoring.py), without the [R, C, V] logits.
    """
    ro = rollout
    if vllm_sampled:
        ro.old_logprobs, raw = tempered_and_raw_logprobs(
            policy,
            adapter,
            ro.prompts,
            ro.completion_ids,
            ro.completion_mask,
            ro.plan,
            ro.temperatures,
            group_size=ro.group_size,
        )
        ro.is_weights = truncated_is_weights(raw, ro.sampling_logprobs, ro.completion_mask, grpo.vllm_is_cap)
    elif grpo.num_iterations > 1:
        ro.old_logprobs = rollout_logprobs(policy, adapter, ro, with_entropy=False)[0]
    if reference is not None:
        ro.ref_logprobs = reference.logprobs(policy, adapter, ro)
    return ro
