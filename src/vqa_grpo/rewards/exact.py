"""Exact match, the metric of GQA: case and punctuation ignored.

As lmms-eval scores GQA (``lmms_eval/tasks/gqa/gqa.yaml``: the ``exact_match`` metric of
``lmms_eval/api/metrics.py`` with ``ignore_case`` and ``ignore_punctuation``, from Hugging Face
``evaluate``): both texts are lower-cased (``str.lower``), every ASCII punctuation character
(``string.punctuation``) is deleted wherever it stands, and the results must be equal. Nothing
else is normalised: whitespace counts ("yes " is not "yes"), Unicode punctuation stays. NumPy
holds the strings there, which leaves two traces kept here: a string keeps its length when
lower-cased ("İ", whose lower case is two characters, becomes "i"), and trailing NUL characters
are dropped.

Several gold answers: the best one counts (GQA has one). Bad input never raises: no answers or
an empty (all-whitespace) prediction score 0 and are counted (``inputs``).
"""

from __future__ import annotations

import string
from typing import Sequence

import numpy as np

from vqa_grpo.rewards.inputs import checked

_NO_PUNCTUATION = str.maketrans("", "", string.punctuation)


def exact_form(text: str) -> str:
    """The text GQA's exact match compares: lower-cased (within its length), ASCII punctuation
    deleted, trailing NULs dropped."""
    return text.lower()[: len(text)].translate(_NO_PUNCTUATION).rstrip("\x00")


def _exact(prediction: str, answers: Sequence[str]) -> float:
    if not prediction.strip():
        return 0.0
    pred = exact_form(prediction)
    return 1.0 if any(exact_form(a) == pred for a in answers) else 0.0


def exact_match(prediction: str, answers: list[str]) -> float:
    """1.0 when ``prediction`` equals one of ``answers`` with case and punctuation ignored, else 0.0.

    >>> exact_match("Yes.", ["yes"]), exact_match("t-shirt", ["tshirt"]), exact_match("red car", ["red"])
    (1.0, 1.0, 0.0)
    """
    pred, gts = checked("exact_match", prediction, answers)
    return _exact(pred, gts)


def exact_batch(predictions: Sequence[str], answers: Sequence[Sequence[str]]) -> np.ndarray:
    """``exact_match`` over a batch of strings: float64 array [N]."""
    return np.array([_exact(p, a) for p, a in zip(predictions, answers)], dtype=np.float64)
