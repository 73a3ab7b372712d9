"""vqa-grpo: fine-tune vision-language models for visual question answering with GRPO.

The Python API (docs/python.md): ``load_config``, ``train`` (GRPO), ``sft``, ``evaluate``, and the
reward and metric functions shared by training and evaluation. The ``vqa-grpo`` command calls
these same functions.

Shapes, the one convention of every comment ``# [R, C]`` in the package:

    B  questions in a batch            G  completions per question (the group)
    R  completion rows, R = B x G, group after group (row b * G + g is question b's g-th)
    P  prompt tokens (image tokens included), left-padded
    C  completion tokens, right-padded    V  vocabulary entries
    N  items of a flat list that is not grouped (predictions to score, examples to evaluate)
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
