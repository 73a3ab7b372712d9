"""Rewards for training and metrics for evaluation, sharing one normalisation and one cleaning step.

normalize.py     the composite's text normalisation and the official VQA answer normalisation
inputs.py        bad input (None, non-strings, empty, over-long): scored, counted, warned about
composite.py     the seed's composite reward (BLEU-1, exact, substring, Jaccard, extractable)
vqa_accuracy.py  VQA accuracy: vqaEval.py's or lmms-eval's convention, and the lenient reward form
anls.py          ANLS (DocVQA, InfographicVQA)
relaxed.py       relaxed accuracy (ChartQA)
exact.py         exact match, case and punctuation ignored (GQA)
choice.py        multiple-choice accuracy (A-OKVQA)
abstention.py    calibrated abstention (reward) and answerability (VizWiz's figures)
benchmark.py     those four by name, and whether a data set fits one
answer_type.py   yes/no and number aware reward
format.py        clean_answer (completion -> answer) and the format reward
semantic.py      embedding cosine similarity (optional extra: pip install vqa-grpo[semantic])
registry.py      REWARD_COMPONENTS, compute_rewards (training), score_predictions (evaluation)
"""

from vqa_grpo.rewards.abstention import abstention, answerability
from vqa_grpo.rewards.anls import anls
from vqa_grpo.rewards.benchmark import BENCHMARK_METRICS
from vqa_grpo.rewards.choice import multiple_choice
from vqa_grpo.rewards.composite import SEED_REPORT_WEIGHTS, composite_reward
from vqa_grpo.rewards.exact import exact_match
from vqa_grpo.rewards.format import clean_answer
from vqa_grpo.rewards.normalize import normalize_answer
from vqa_grpo.rewards.registry import REWARD_COMPONENTS, RewardResult, compute_rewards, score_predictions
from vqa_grpo.rewards.relaxed import relaxed_accuracy
from vqa_grpo.rewards.vqa_accuracy import VQA_CONVENTIONS, vqa_accuracy

__all__ = [
    "BENCHMARK_METRICS",
    "REWARD_COMPONENTS",
    "SEED_REPORT_WEIGHTS",
    "VQA_CONVENTIONS",
    "abstention",
    "anls",
    "answerability",
    "RewardResult",
    "clean_answer",
    "composite_reward",
    "compute_rewards",
    "exact_match",
    "multiple_choice",
    "normalize_answer",
    "relaxed_accuracy",
    "score_predictions",
    "vqa_accuracy",
]
