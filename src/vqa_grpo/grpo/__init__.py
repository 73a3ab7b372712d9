"""GRPO: the objective's math (pure tensor functions), and the rollout's row-wise sampling
(models/processors.py)."""

from vqa_grpo.grpo.math import (
    group_advantages,
    high_entropy_mask,
    importance_weights,
    kl_k3,
    masked_mean,
    masked_sum,
    policy_loss,
    seed_report_loss,
)
from vqa_grpo.models.processors import RowwiseTemperatureTopP, row_sampling_params, sampling_logprobs

__all__ = [
    "RowwiseTemperatureTopP",
    "group_advantages",
    "high_entropy_mask",
    "importance_weights",
    "kl_k3",
    "masked_mean",
    "masked_sum",
    "policy_loss",
    "row_sampling_params",
    "sampling_logprobs",
    "seed_report_loss",
]
