"""vqa-grpo: fine-tune vision-language models for visual question answering with GRPO.

The Python API (docs/python.md): ``load_config``, ``train`` (GRPO), ``sft``, ``evaluate``, and the
reward and metric functions shared by training and evaluation. The ``vqa-grpo`` command calls
these same functions.
"""

from vqa_grpo.api import evaluate, load_config, sft, train
from vqa_grpo.errors import UserError
from vqa_grpo.rewards import (
    clean_answer,
    composite_reward,
    compute_rewards,
    normalize_answer,
    score_predictions,
    vqa_accuracy,
)

__all__ = [
    "UserError",
    "clean_answer",
    "composite_reward",
    "compute_rewards",
    "evaluate",
    "load_config",
    "normalize_answer",
    "score_predictions",
    "sft",
    "train",
    "vqa_accuracy",
]
