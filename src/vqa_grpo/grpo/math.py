"""The GRPO objective as pure tensor functions.

GRPO (Shao et al., 2024, "DeepSeekMath", eq. 3) samples a group of G completions o_1..o_G for each
question q from the rollout policy pi_old and maximises

    J(theta) = E[ 1/G sum_i 1/|o_i| sum_t ( min(r_it A_i, clip(r_it, 1 - eps, 1 + eps) A_i)
                                             - beta KL[pi_theta || pi_ref]_it ) ]

with the token ratio r_it = pi_theta(o_it | q, o_i<t) / pi_old(o_it | q, o_i<t), the outcome
advantage A_i = (R_i - mean(R)) / std(R) taken within the group (shared by all tokens of o_i), and
the per-token KL estimated with Schulman's k3 estimator (eq. 4). This module computes the loss
-J and the pieces it is made of; the variants are:

- advantage scale: group std (DeepSeekMath), batch std, or none (Dr. GRPO, Liu et al., 2025,
  "Understanding R1-Zero-Like Training", which drops the std because it re-weights questions);
- upper clip range ``epsilon_high`` (DAPO, Yu et al., 2025, "clip-higher");
- loss aggregation ``loss_type``: per-sequence mean then mean ("grpo", the paper's 1/G sum 1/|o_i|),
  token mean over the batch ("bnpo", "dapo": DAPO's token-level loss), or the sum over a constant
  R x max_completion_length ("dr_grpo": removes the length bias of 1/|o_i|);
- importance ratio per token, or one per sequence, the exp of the sequence's mean token log-ratio
  (``importance_sampling_level="sequence"``: GSPO, Zheng et al., 2025, "Group Sequence Policy
  Optimization");
- the surrogate: PPO's clipped one, CISPO's (MiniMax, 2025, "MiniMax-M1": the importance weight
  is capped and detached, multiplying A log pi_theta, so no token loses its gradient), or SAPO's
  (Qwen, 2025, "Soft Adaptive Policy Optimization", arXiv:2511.20347: a sigmoid gate of the ratio
  with temperature tau_pos for A > 0 and tau_neg otherwise, instead of a hard clip);
- top-entropy token selection (``high_entropy_mask``: Wang et al., 2025, "Beyond the 80/20 Rule"):
  only the tokens whose entropy is in the top q fraction keep their policy gradient.

Shapes are written as comments in the package's one convention (``vqa_grpo/__init__.py``): R
completion rows (R = B x G, group after group), C completion tokens, V vocabulary entries. Masks
are 1/True for completion tokens and 0/False for padding. Masked positions never reach a result,
but should hold finite values: an inf there turns into a nan gradient through ``torch.where``.

``seed_report_loss`` is the seed report's Algorithm 1, kept only to reproduce it: its value is zero by
construction (see its docstring).
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

AdvantageScale = Literal["group", "batch", "none"]
LossType = Literal["grpo", "bnpo", "dapo", "dr_grpo", "cispo", "sapo"]
LOSS_TYPES: tuple[str, ...] = ("grpo", "bnpo", "dapo", "dr_grpo", "cispo", "sapo")
ADVANTAGE_SCALES: tuple[str, ...] = ("group", "batch", "none")
IS_LEVELS: tuple[str, ...] = ("token", "sequence")
CISPO_DEFAULT_CAP = 5.0  # CISPO's cap of the importance weight when epsilon_high is unset (ScaleRL's eps_max)


# ----------------------------------------------------------------------------------------------
# Advantages


def group_advantages(
    rewards: Tensor,  # [B*G], group after group
    group_size: int,
    *,
    scale: AdvantageScale = "group",
    eps: float = 1e-4,
) -> Tensor:  # [B*G]
    """Group-relative advantages A_i = (R_i - mean of R_i's group) / (scale + eps).

    ``scale``:
      - "group": the group's unbiased std (Bessel-corrected, ``torch.std``'s default), as in
        DeepSeekMath's outcome supervision (section 4.1.2);
      - "batch": the unbiased std of all B*G rewards (centring stays per group);
      - "none": no division, centred rewards only (Dr. GRPO).

    A group whose rewards are all equal carries no signal; its advantages are exactly zero in
    every mode (not a rounding residue divided by ``eps``). A group of one sample is such a group.
    """
    if rewards.dim() != 1:
        raise ValueError(f"rewards must be flat [B*G], got shape {tuple(rewards.shape)}")
    if group_size < 1 or rewards.numel() % group_size != 0:
        raise ValueError(
            f"{rewards.numel()} rewards do not split into groups of {group_size}; give B*G rewards, group after group"
        )
    if scale not in ADVANTAGE_SCALES:
        raise ValueError(f"scale={scale!r}: choose one of {', '.join(ADVANTAGE_SCALES)}")
    r = (rewards if rewards.is_floating_point() else rewards.float()).view(-1, group_size)  # [B, G]
    if group_size == 1:
        return torch.zeros_like(r).view(-1)  # [B*G]; and torch.std of one value would be nan
    centred = r - r.mean(dim=1, keepdim=True)  # [B, G]
    if scale == "group":
        adv = centred / (r.std(dim=1, keepdim=True) + eps)  # [B, G]
    elif scale == "batch":
        adv = centred / (r.std() + eps)  # [B, G]
    else:
        adv = centred
    flat = (r == r[:, :1]).all(dim=1, keepdim=True)  # [B, 1] all rewards of the group equal
    return torch.where(flat, torch.zeros_like(adv), adv).view(-1)  # [B*G]


# ----------------------------------------------------------------------------------------------
# Token-level helpers


def masked_sum(x: Tensor, mask: Tensor, dim: int | None = None) -> Tensor:
    """Sum of ``x`` over the positions where ``mask`` is true (bool mask, same shape)."""
    kept = torch.where(mask, x, torch.zeros_like(x))
    return kept.sum() if dim is None else kept.sum(dim)


def masked_mean(x: Tensor, mask: Tensor, dim: int | None = None) -> Tensor:
    """Mean of ``x`` over the positions where ``mask`` is true; 0 where there are none."""
    count = mask.sum() if dim is None else mask.sum(dim)
    return masked_sum(x, mask, dim) / count.clamp(min=1).to(x.dtype)


def kl_k3(logprobs: Tensor, ref_logprobs: Tensor) -> Tensor:
    """Per-token k3 estimate of KL[pi_theta || pi_ref] (Schulman, 2020; DeepSeekMath eq. 4).

    With d = log pi_ref - log pi_theta at the sampled token: k3 = exp(d) - d - 1. It is >= 0, and
    unbiased for the KL when the tokens are drawn from pi_theta.
    """
    d = ref_logprobs - logprobs  # [R, C]
    return torch.exp(d) - d - 1


def high_entropy_mask(entropy: Tensor, mask: Tensor, quantile: float) -> Tensor:  # [R, C] bool
    """The completion tokens whose entropy is in the top ``quantile`` fraction (Wang et al., 2025).

    A token is kept when its entropy is >= the (1 - quantile) quantile of the entropies of all
    tokens under ``mask`` (``torch.quantile``, linear interpolation; ties are kept). quantile 1
    keeps every token; 0 keeps those of the highest entropy. With no token, none is kept.
    """
    if not 0 <= quantile <= 1:
        raise ValueError(f"quantile={quantile}: must be in [0, 1]")
    mask = mask.bool()
    values = entropy.detach()[mask]  # [N]
    if values.numel() == 0:
        return torch.zeros_like(mask)
    threshold = torch.quantile(values, 1 - quantile)
    return (entropy.detach() >= threshold) & mask


def importance_weights(
    logprobs: Tensor,  # [R, C]
    old_logprobs: Tensor,  # [R, C]
    mask: Tensor,  # [R, C] bool
    level: str = "token",
) -> Tensor:  # [R, C] ("token") or [R, 1] ("sequence")
    """pi_theta / pi_old per token, or per sequence as GSPO's s_i = exp(mean_t log ratio_it)
    over the sequence's tokens (a sequence without tokens gets 1)."""
    log_ratio = logprobs - old_logprobs  # [R, C]
    if level == "sequence":
        log_ratio = masked_mean(log_ratio, mask, dim=1).unsqueeze(1)  # [R, 1]
    elif level != "token":
        raise ValueError(f"importance_sampling_level={level!r}: choose one of {', '.join(IS_LEVELS)}")
    return torch.exp(log_ratio)


def surrogate(
    ratio: Tensor,  # [R, C] or [R, 1]
    adv: Tensor,  # [R, 1]
    logprobs: Tensor,  # [R, C]
    loss_type: str,
    *,
    epsilon: float,
    eps_high: float,
    sapo_temperature_pos: float = 1.0,
    sapo_temperature_neg: float = 1.05,
) -> tuple[Tensor, Tensor]:  # per-token loss [R, C] or [R, 1], clipped [R, C] or [R, 1] bool
    """The per-token policy loss (before masking and aggregation) and which tokens count as clipped.

    - PPO (grpo, bnpo, dapo, dr_grpo): -min(r A, clip(r, 1 - epsilon, 1 + eps_high) A); clipped
      where the min is the clipped term and differs (no gradient there);
    - CISPO: -sg(min(r, eps_high)) A log pi_theta, ``eps_high`` being the cap itself (the gradient
      is sg(w) A grad log pi_theta, REINFORCE with a capped weight); clipped where r > cap and A > 0;
    - SAPO: -(4 / tau) sigmoid(tau (r - 1)) A, tau = tau_pos where A > 0 else tau_neg. Its gradient
      is 4 sigma (1 - sigma) r A grad log pi_theta, equal to PPO's at r = 1 and fading smoothly
      away from it; nothing is clipped.
    """
    if loss_type == "cispo":
        weight = torch.clamp(ratio, max=eps_high).detach()
        return -weight * adv * logprobs, (ratio > eps_high) & (adv > 0)
    if loss_type == "sapo":
        tau = torch.where(adv > 0, adv.new_tensor(sapo_temperature_pos), adv.new_tensor(sapo_temperature_neg))
        gate = torch.sigmoid(tau * (ratio - 1)) * 4 / tau
        return -gate * adv, torch.zeros_like(ratio, dtype=torch.bool)
    unclipped = ratio * adv
    clipped = torch.clamp(ratio, 1 - epsilon, 1 + eps_high) * adv
    is_clipped = ((ratio > 1 + eps_high) & (adv > 0)) | ((ratio < 1 - epsilon) & (adv < 0))
    return -torch.min(unclipped, clipped), is_clipped


# ----------------------------------------------------------------------------------------------
# The clipped surrogate with KL


def policy_loss(
    logprobs: Tensor,  # [R, C] log pi_theta of the completion tokens (with grad)
    old_logprobs: Tensor,  # [R, C] log pi_old, the rollout policy (no grad)
    advantages: Tensor,  # [R]
    mask: Tensor,  # [R, C] bool or 0/1 float, true on completion tokens
    *,
    ref_logprobs: Tensor | None = None,  # [R, C] log pi_ref
    beta: float = 0.0,
    epsilon: float = 0.2,
    epsilon_high: float | None = None,
    loss_type: LossType = "grpo",
    max_completion_length: int | None = None,
    token_weights: Tensor | None = None,  # [R, C] detached importance weights of the sampler (vLLM)
    importance_sampling_level: str = "token",
    sapo_temperature_pos: float = 1.0,
    sapo_temperature_neg: float = 1.05,
    entropy_mask: Tensor | None = None,  # [R, C] bool, high_entropy_mask: the tokens that keep a gradient
) -> tuple[Tensor, dict[str, Tensor]]:
    """The GRPO loss -J(theta) and detached statistics.

    Per token, with ratio = exp(logprobs - old_logprobs) and eps_high = epsilon_high or epsilon:

        l_it = -min(ratio A_i, clip(ratio, 1 - epsilon, 1 + eps_high) A_i) + beta k3_it

    where k3 is ``kl_k3(logprobs, ref_logprobs)``, added only when beta > 0 (then ``ref_logprobs``
    is required). ``loss_type`` "cispo" and "sapo" replace the clipped term by theirs (``surrogate``;
    for CISPO ``epsilon_high`` is the cap of the weight, ``CISPO_DEFAULT_CAP`` when None), and
    ``importance_sampling_level="sequence"`` gives every token of o_i the ratio s_i (GSPO). With
    ``token_weights`` w (samples drawn by another engine than pi_old), the surrogate of each token
    is multiplied by w_it, the truncated importance weight min(pi_old / pi_sampler, C) (Yao et al.,
    2025); the KL term is not. With ``entropy_mask``, the surrogate is zero on the tokens it leaves
    out (they still count in the normalisers below, and keep their KL term). The tokens are then
    aggregated by ``loss_type``:

      - "grpo": mean over each sequence's tokens, then mean over sequences (DeepSeekMath eq. 3).
        A sequence with no unmasked token (e.g. a masked-out truncated completion) is left out of
        the mean over sequences rather than counted as a zero, so masking a completion removes it
        from the objective without shrinking the weight of the others. With no token at all the
        loss is 0.
      - "sapo": as "grpo".
      - "bnpo", "dapo", "cispo": sum over all unmasked tokens / their number (DAPO's token-level loss).
        The two names are the same here. The count is this call's tokens, so with gradient
        accumulation the loop averages per-micro-batch token means (DAPO proper divides by the
        tokens of the whole step; equal when micro-batches hold the same number of tokens).
      - "dr_grpo": sum over all unmasked tokens / (R x max_completion_length), a constant (Dr. GRPO).

    A float mask is read as a 0/1 mask (nonzero = token), not as weights.

    Statistics (detached 0-dim tensors, no host sync): ``kl`` the token mean of k3 (0 when beta is
    0), ``clip_fraction`` the share of tokens where the clipped term is the minimum and differs
    from the unclipped one (ratio > 1 + eps_high with A > 0, or ratio < 1 - epsilon with A < 0:
    the tokens that get no gradient; CISPO: the tokens whose weight is capped, with A > 0; SAPO: 0),
    ``ratio_mean`` the token mean of the ratio (of s_i at the sequence level).
    """
    if loss_type not in LOSS_TYPES:
        hint = " (the seed report's formula is seed_report_loss)" if loss_type == "seed_report" else ""
        raise ValueError(f"loss_type={loss_type!r}: choose one of {', '.join(LOSS_TYPES)}{hint}")
    if beta > 0 and ref_logprobs is None:
        raise ValueError(f"beta={beta} needs ref_logprobs (the reference model's token log-probs)")
    if loss_type == "dr_grpo" and max_completion_length is None:
        raise ValueError("loss_type='dr_grpo' needs max_completion_length (its constant normaliser)")
    if not (logprobs.shape == old_logprobs.shape == mask.shape) or advantages.shape != logprobs.shape[:1]:
        raise ValueError(
            f"shapes disagree: logprobs {tuple(logprobs.shape)}, old_logprobs {tuple(old_logprobs.shape)}, "
            f"mask {tuple(mask.shape)} must be [R, C] and advantages {tuple(advantages.shape)} [R]"
        )
    mask = mask.bool()  # [R, C]
    if epsilon_high is not None:
        eps_high = epsilon_high
    else:
        eps_high = CISPO_DEFAULT_CAP if loss_type == "cispo" else epsilon

    ratio = importance_weights(logprobs, old_logprobs, mask, importance_sampling_level)  # [R, C] or [R, 1]
    adv = advantages.to(ratio.dtype).unsqueeze(1)  # [R, 1]
    per_token, is_clipped = surrogate(
        ratio,
        adv,
        logprobs,
        loss_type,
        epsilon=epsilon,
        eps_high=eps_high,
        sapo_temperature_pos=sapo_temperature_pos,
        sapo_temperature_neg=sapo_temperature_neg,
    )
    per_token = per_token.expand(logprobs.shape)  # [R, C] (a sequence's ratio on each of its tokens)
    ratio, is_clipped = ratio.expand(logprobs.shape), is_clipped.expand(logprobs.shape)  # [R, C]
    if entropy_mask is not None:
        per_token = torch.where(entropy_mask.bool(), per_token, torch.zeros_like(per_token))
    if token_weights is not None:
        per_token = per_token * token_weights.detach()
    if beta > 0:
        kl = kl_k3(logprobs, ref_logprobs)  # [R, C]
        per_token = per_token + beta * kl
    else:
        kl = torch.zeros_like(per_token)  # [R, C]

    if loss_type in ("grpo", "sapo"):
        has_tokens = mask.any(dim=1)  # [R]
        per_sequence = masked_mean(per_token, mask, dim=1)  # [R]
        loss = masked_mean(per_sequence, has_tokens)
    elif loss_type in ("bnpo", "dapo", "cispo"):
        loss = masked_mean(per_token, mask)
    else:
        loss = masked_sum(per_token, mask) / (mask.shape[0] * max_completion_length)

    with torch.no_grad():
        stats = {
            "kl": masked_mean(kl, mask).detach(),
            "clip_fraction": masked_mean(is_clipped.to(ratio.dtype), mask),
            "ratio_mean": masked_mean(ratio, mask).detach(),
        }
    return loss, stats


# ----------------------------------------------------------------------------------------------
# The seed's formula (reproduction only)


def seed_report_loss(rewards: Tensor, lm_loss: Tensor, *, eps: float = 1e-8) -> Tensor:
    """The seed report's Algorithm 1: -mean((r - mean r) / (std r + eps)) x lm_loss.

    ``rewards`` [G] are one group's rewards (any set works the same), ``lm_loss`` a 0-dim tensor,
    the language-model loss of the prompt; std is unbiased (``torch.std``'s default).

    Degenerate by construction: the standardised rewards have mean (mean r - mean r) / (std + eps)
    = 0, so the loss is 0 x lm_loss up to float rounding, and its gradient is that rounding residue
    (about 1e-8 in float32) times the gradient of ``lm_loss``. It does not depend on which
    completion earned which reward. Kept as ``grpo.loss_type=seed_report`` only to reproduce the seed.
    """
    r = rewards if rewards.is_floating_point() else rewards.float()  # [G]
    normalised = (r - r.mean()) / (r.std() + eps)  # [G]
    return -normalised.mean() * lm_loss
