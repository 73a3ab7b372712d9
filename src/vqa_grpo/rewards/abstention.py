"""Calibrated abstention (the seed report's section 6.1): a reward that pays for saying
"unanswerable" when the question cannot be answered, and costs a confident wrong answer more
than an abstention; and the answerability figures of evaluation, VizWiz's among them.

Texts are compared after the official VQA normalisation (``normalize_answer``: punctuation,
digits, articles, lower case), as VizWiz's evaluation does, so "Unanswerable." abstains.

* The question is *unanswerable* when at least half of its reference answers say
  "unanswerable" (``UNANSWERABLE_SHARE``): VizWiz's 10 annotators, or the one answer of a
  synthetic question (``data synth --unanswerable``).
* ``abstention(prediction, answers)``, with acc the VQA accuracy (lenient: both sides normalised):

      prediction            unanswerable question   answerable question
      "unanswerable"        +1                      0
      another answer        -1                      acc if acc > 0, else -1
      empty                 0                       0

  A wrong answer costs 1 where abstaining costs nothing, so answering pays in expectation only
  when the model is right more often than not (for answers scored 0 or 1: P(right) > 1/2).
* ``answerability(predictions, answers)``: precision, recall and F1 of the "unanswerable"
  decision, and VizWiz's two figures as its evaluation computes them (VizWiz VQA API,
  ``vqaEval.py`` ``evaluate_unanswerability``, by Qing Li): the average precision of scikit-learn's
  ``average_precision_score`` with the unanswerable class positive and the prediction's
  answerability as a 0/1 score, and the F1 of that class. Its ground truth is the annotation's
  ``answerable`` flag, which the Hub copies do not carry: here the share rule above stands for it.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from vqa_grpo.rewards.inputs import checked
from vqa_grpo.rewards.normalize import normalize_answer
from vqa_grpo.rewards.vqa_accuracy import vqa_accuracy_batch

ABSTAIN = "unanswerable"
"""The answer that abstains (lmms-eval's VizWiz and OK-VQA prompts ask for 'Unanswerable')."""
UNANSWERABLE_SHARE = 0.5
"""A question is unanswerable when at least this share of its answers say ABSTAIN."""
WRONG = -1.0
"""The reward of a confident wrong answer (an answer to an unanswerable question, or one that
matches no reference); abstaining on an answerable question scores 0."""


def _said(text: str) -> str:
    return normalize_answer(text.replace("\n", " ").replace("\t", " ").strip())


def abstains(prediction: str) -> bool:
    """Whether the prediction is "unanswerable" (after VQA normalisation)."""
    return _said(prediction) == ABSTAIN


def is_unanswerable(answers: Sequence[str]) -> bool:
    """Whether at least half of ``answers`` say "unanswerable"."""
    return bool(answers) and sum(_said(a) == ABSTAIN for a in answers) >= UNANSWERABLE_SHARE * len(answers)


def _reward(prediction: str, answers: list[str], accuracy: float) -> float:
    if not _said(prediction) or not answers:
        return 0.0
    if abstains(prediction):
        return 1.0 if is_unanswerable(answers) else 0.0
    if is_unanswerable(answers) or accuracy <= 0:
        return WRONG
    return accuracy


def abstention_batch(predictions: Sequence[str], answers: Sequence[Sequence[str]]) -> np.ndarray:
    """The reward of each (cleaned) prediction: float64 array [N] in {-1} and [0, 1]."""
    acc = vqa_accuracy_batch(predictions, answers, official=False)
    return np.array([_reward(p, list(a), x) for p, a, x in zip(predictions, answers, acc)], dtype=np.float64)


def abstention(prediction: str, answers: list[str]) -> float:
    """The abstention reward of one prediction (table in the module docstring); bad input scores
    as text and is counted (``inputs``)."""
    pred, refs = checked("abstention", prediction, answers)
    return float(abstention_batch([pred], [refs])[0])


def answerability(predictions: Sequence[str], answers: Sequence[Sequence[str]]) -> dict[str, float | int]:
    """The "unanswerable" decision over a data set: counts, precision, recall, F1 (0 where a
    ratio has no denominator, as scikit-learn's zero_division default gives) and VizWiz's
    ``vizwiz_average_precision`` and ``vizwiz_f1`` (fractions; VizWiz prints them x 100)."""
    truth = np.array([is_unanswerable(a) for a in answers], dtype=bool)
    said = np.array([abstains(p) for p in predictions], dtype=bool)
    tp, fp, fn = int((truth & said).sum()), int((~truth & said).sum()), int((truth & ~said).sum())
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * tp / (2 * tp + fp + fn) if tp else 0.0
    return {
        "n": int(len(truth)),
        "unanswerable": int(truth.sum()),
        "abstained": int(said.sum()),
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "vizwiz_average_precision": _average_precision(truth, said),
        "vizwiz_f1": f1,
    }


def _average_precision(truth: np.ndarray, said: np.ndarray) -> float:
    """scikit-learn's average_precision_score(truth, said) for a 0/1 score: the sum over the two
    thresholds of (recall step) x precision, recall counted from 0; 0 without a positive."""
    positives = int(truth.sum())
    if positives == 0:
        return 0.0
    base = positives / len(truth)  # threshold 0: everything predicted positive, recall 1
    if not said.any():
        return base
    recall = int((truth & said).sum()) / positives  # threshold 1: the abstentions
    precision = int((truth & said).sum()) / int(said.sum())
    return recall * precision + (1.0 - recall) * base
