"""Relaxed accuracy, the metric of ChartQA: a number within 5% of the gold one is right.

As lmms-eval's ``relaxed_correctness`` (``lmms_eval/tasks/chartqa/utils.py``, from Qwen-VL's
evaluation and the ChartQA paper, sec. 5.1), for a prediction p and one gold answer t:

* each is read as a number by Python's ``float`` (which allows surrounding whitespace, "1e3",
  "1_000", "inf", "nan"); a text ending in "%" is read without its trailing "%" signs and divided
  by 100, so "12.5%" is 0.125 (and matches "0.125", not "12.5");
* when both are numbers and t is not 0: right when |p - t| / |t| <= 0.05 (nan and inf never are);
* otherwise (a text, or t = 0): right when ``p.lower() == t.lower()`` (no stripping).

Several gold answers: the best one counts (ChartQA has one). Bad input never raises: no answers
or an empty (all-whitespace) prediction score 0 and are counted (``inputs``).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from vqa_grpo.rewards.inputs import checked

RELATIVE_TOLERANCE = 0.05


def _number(text: str) -> float | None:
    try:
        return float(text.rstrip("%")) / 100.0 if text.endswith("%") else float(text)
    except ValueError:
        return None


def relaxed_correct(prediction: str, target: str, tolerance: float = RELATIVE_TOLERANCE) -> bool:
    """Whether ``prediction`` is right against one gold ``target`` (rules in the module docstring)."""
    p, t = _number(prediction), _number(target)
    if p is not None and t:  # t is None or 0.0: compare the texts
        return abs(p - t) / abs(t) <= tolerance
    return prediction.lower() == target.lower()


def _relaxed(prediction: str, answers: Sequence[str]) -> float:
    if not prediction.strip():
        return 0.0
    return 1.0 if any(relaxed_correct(prediction, a) for a in answers) else 0.0


def relaxed_accuracy(prediction: str, answers: list[str]) -> float:
    """1.0 when ``prediction`` is right against any of ``answers`` by ChartQA's relaxed rule, else 0.0.

    >>> relaxed_accuracy("12.6", ["12.5"]), relaxed_accuracy("12.5%", ["0.125"]), relaxed_accuracy("Yes", ["yes"])
    (1.0, 1.0, 1.0)
    """
    pred, gts = checked("relaxed_accuracy", prediction, answers)
    return _relaxed(pred, gts)


def relaxed_batch(predictions: Sequence[str], answers: Sequence[Sequence[str]]) -> np.ndarray:
    """``relaxed_accuracy`` over a batch of strings: float64 array [N]."""
    return np.array([_relaxed(p, a) for p, a in zip(predictions, answers)], dtype=np.float64)
