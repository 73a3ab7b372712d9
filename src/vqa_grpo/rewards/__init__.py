"""Rewards for training and metrics for evaluation, sharing one normalisation and one cleaning step.

normalize.py     the composite's text normalisation and the official VQA answer normalisation
inputs.py        bad input (None, non-strings, empty, over-long): scored, counted, warned about
composite.py     the seed's composite reward (BLEU-1, exact, substring, Jaccard, extractable)
vqa_accuracy.py  the official VQA v2 accuracy, and its lenient variant used as a reward
answer_type.py   yes/no and number aware reward
format.py        clean_answer (completion -> answer) and the format reward
semantic.py      embedding cosine similarity (optional extra: pip install vqa-grpo[semantic])
registry.py      REWARD_COMPONENTS, compute_rewards (training), score_predictions (evaluation)
score.py         ``vqa-grpo score PREDICTIONS.jsonl``
"""

from vqa_grpo.rewards.composite import SEED_REPORT_WEIGHTS, composite_reward
from vqa_grpo.rewards.format import clean_answer
from vqa_grpo.rewards.normalize import normalize_answer
from vqa_grpo.rewards.registry import REWARD_COMPONENTS, RewardResult, compute_rewards, score_predictions
from vqa_grpo.rewards.score import run_score
from vqa_grpo.rewards.vqa_accuracy import vqa_accuracy

__all__ = [
    "REWARD_COMPONENTS",
    "SEED_REPORT_WEIGHTS",
    "RewardResult",
    "clean_answer",
    "composite_reward",
    "compute_rewards",
    "normalize_answer",
    "run_score",
    "score_predictions",
    "vqa_accuracy",
]
