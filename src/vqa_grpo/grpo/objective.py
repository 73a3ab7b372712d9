"""The loss of one optimisation step on a rollout: the model's forward pass plus the pure math.

``grpo_objective`` is DeepSeekMath's clipped GRPO objective (grpo/math.py ``policy_loss``) or
one of its variants (GSPO, CISPO, SAPO, top-entropy tokens), with the optional MLE term of the
seed's hybrid objective (``grpo.sft_coef``). ``seed_report_objective``
is the seed's Algorithm 1, kept as a reproduction mode (``grpo.loss_type=seed_report``): its factor
-mean(normalised rewards) is zero by construction, so it trains nothing.
"""

from __future__ import annotations

from dataclasses import replace

import torch

from vqa_grpo.config import GRPOConfig
from vqa_grpo.grpo.math import high_entropy_mask, policy_loss, seed_report_loss
from vqa_grpo.grpo.rollout import Rollout
from vqa_grpo.models.adapters import FamilyAdapter
from vqa_grpo.models.plan import PLAIN
from vqa_grpo.models.prefix import Prefix
from vqa_grpo.models.scoring import answer_ids, completion_logprobs


def rollout_logprobs(
    model, adapter: FamilyAdapter, rollout: Rollout, *, with_entropy: bool = True, prefix: Prefix | None = None
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Per-token log-probs [R, C] (at each row's sampling temperature) and entropies [R, C].

    On the rollout's plan: each prompt runs once per group where it shares the prefix for this
    pass, else G times (the same numbers up to float rounding; models/scoring.py). ``prefix``: the
    rollout's own pass of the prompts, kept with gradient (the fused prefill), extended here.
    """
    return completion_logprobs(
        model,
        adapter,
        rollout.prompts,
        rollout.completion_ids,
        rollout.completion_mask,
        rollout.plan,
        rollout.temperatures,
        with_entropy=with_entropy,
        group_size=rollout.group_size,
        prefix=prefix,
    )


def answer_nll(model, adapter: FamilyAdapter, processor, rollout: Rollout) -> torch.Tensor:
    """Token-mean negative log-likelihood of the ground-truth answers (the seed's eq. 1), one row per
    question on the plain path."""
    stop = adapter.stop_token_ids(processor, model)[0]
    ids, mask = answer_ids(processor.tokenizer, [e.answer for e in rollout.examples], stop)
    ids, mask = ids.to(rollout.completion_ids.device), mask.to(rollout.completion_ids.device)
    plain = replace(PLAIN, logprob_chunk_size=rollout.plan.logprob_chunk_size)
    logp, _ = completion_logprobs(model, adapter, rollout.prompts, ids, mask, plain, with_entropy=False)
    return -(logp * mask).sum() / mask.sum()


def grpo_objective(
    model, adapter: FamilyAdapter, processor, rollout: Rollout, cfg: GRPOConfig, *, prefix: Prefix | None = None
) -> tuple[torch.Tensor, dict]:
    """GRPO loss on one rollout, and detached statistics for the logs. ``prefix``: the fused prefill
    that ``make_rollout_and_prefill`` kept for this rollout, used once (its graph is freed by this
    loss's backward pass)."""
    logp, entropy = rollout_logprobs(model, adapter, rollout, prefix=prefix)
    mask = rollout.completion_mask
    old = rollout.old_logprobs if rollout.old_logprobs is not None else logp.detach()
    q = cfg.top_entropy_quantile
    entropy_mask = high_entropy_mask(entropy, mask, q) if q < 1 else None  # [R, C]
    loss, stats = policy_loss(
        logp,
        old,
        rollout.advantages,
        mask,
        ref_logprobs=rollout.ref_logprobs,
        beta=cfg.beta,
        epsilon=cfg.epsilon,
        epsilon_high=cfg.epsilon_high,
        loss_type=cfg.loss_type,
        max_completion_length=cfg.max_completion_length,
        token_weights=rollout.is_weights,
        importance_sampling_level=cfg.importance_sampling_level,
        sapo_temperature_pos=cfg.sapo_temperature_pos,
        sapo_temperature_neg=cfg.sapo_temperature_neg,
        entropy_mask=entropy_mask,
    )
    m = mask.float()
    stats["entropy"] = (entropy * m).sum() / m.sum().clamp(min=1)
    if cfg.sft_coef > 0:
        nll = answer_nll(model, adapter, processor, rollout)
        stats["sft_nll"] = nll.detach()
        loss = loss + cfg.sft_coef * nll
    # One device-to-host copy for all the statistics, not one synchronisation each.
    values = torch.stack([v.detach().float().reshape(()) for v in stats.values()]).tolist()
    stats = dict(zip(stats, values))
    stats["shared_prefix"] = float(rollout.plan.score_shared)  # 1: each prompt encoded once per group
    return loss, stats


def seed_report_objective(model, adapter: FamilyAdapter, processor, rollout: Rollout) -> tuple[torch.Tensor, dict]:
    """The seed's Algorithm 1: -mean(group-normalised rewards) x LM loss of the prompt.

    L_base is the language-model loss of the prompt tokens (labels = input_ids, with padding and
    image tokens ignored, as they can never be labels). The group mean of normalised rewards is 0
    up to rounding, so the gradient vanishes; a test shows it.
    """
    prompts = rollout.prompts
    labels = adapter.prompt_labels(processor, prompts)  # padding and image-layout tokens -> -100
    lm_loss = model(**prompts.model_inputs(), labels=labels, use_cache=False).loss
    G = rollout.group_size
    losses = [seed_report_loss(r, lm_loss) for r in rollout.rewards.to(lm_loss.device).view(-1, G)]
    loss = torch.stack(losses).mean()
    return loss, {"lm_loss": float(lm_loss.detach())}
