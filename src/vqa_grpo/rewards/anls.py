"""ANLS, the metric of DocVQA and InfographicVQA: Average Normalized Levenshtein Similarity.

As lmms-eval's ``anls`` (``lmms_eval/api/metrics.py``) and the Robust Reading Competition's
evaluation of InfographicVQA/DocVQA compute it, for a prediction p and accepted answers a_1..a_k:

    form(s) = " ".join(s.strip().lower().split())
    nl_j    = lev(form(a_j), form(p)) / max(len(a_j.upper()), len(p.upper()))   (0 when that is 0)
    anls    = 1 - min_j nl_j,  set to 0 when below the threshold 0.5

The lengths are those of the *unnormalised* strings, upper-cased (a quirk kept on purpose: it is
what published figures use), so surrounding spaces lengthen the denominator and "ß" counts as two
characters. ``lev`` is the Levenshtein distance over Unicode code points (insert, delete,
substitute, each 1). Bad input never raises: no answers, or an empty (all-whitespace)
prediction, score 0 and are counted (``inputs``); lmms-eval fails on the first and, for the second,
can score 1 against an empty answer (docs/metrics.md).
"""

from __future__ import annotations

from functools import lru_cache
from typing import Sequence

import numpy as np

from vqa_grpo.rewards.inputs import checked

ANLS_THRESHOLD = 0.5
"""Similarities below this score 0 (the RRC's and lmms-eval's default)."""


_CACHED_LEN = 256  # pairs up to this many characters together are cached: GRPO scores the same strings often


def _levenshtein(a: str, b: str) -> int:
    if len(a) < len(b):
        a, b = b, a
    previous = list(range(len(b) + 1))  # distances from a[:0] to each prefix of b
    for i, ca in enumerate(a, 1):
        current = [i]
        for j, cb in enumerate(b, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (ca != cb)))
        previous = current
    return previous[-1]


_levenshtein_cached = lru_cache(maxsize=1 << 14)(_levenshtein)  # at most ~8 MB of keys


def levenshtein(a: str, b: str) -> int:
    """Edit distance between ``a`` and ``b`` (unit costs), by the two-row dynamic programme."""
    return _levenshtein_cached(a, b) if len(a) + len(b) <= _CACHED_LEN else _levenshtein(a, b)


def _form(text: str) -> str:
    return " ".join(text.strip().lower().split())


def _anls(prediction: str, answers: Sequence[str], threshold: float) -> float:
    """ANLS on strings (the module docstring's formula)."""
    if not answers or not prediction.strip():
        return 0.0
    det, det_len = _form(prediction), len(prediction.upper())
    distances = []
    for answer in answers:
        length = max(len(answer.upper()), det_len)
        distances.append(0.0 if length == 0 else float(levenshtein(_form(answer), det)) / float(length))
    score = 1 - min(distances)
    return 0.0 if score < threshold else float(score)


def anls(prediction: str, answers: list[str], threshold: float = ANLS_THRESHOLD) -> float:
    """ANLS in [0, 1] of ``prediction`` against its accepted ``answers`` (the best one counts).

    >>> anls("1/8/93", ["1/8/93", "1/8/1993"])
    1.0
    >>> round(anls("Dear Dr. Lobo", ["Dear Dr Lobo"]), 4)  # one edit in 13 characters
    0.9231
    """
    pred, gts = checked("anls", prediction, answers)
    return _anls(pred, gts, threshold)


def anls_batch(predictions: Sequence[str], answers: Sequence[Sequence[str]]) -> np.ndarray:
    """``anls`` over a batch of strings: float64 array [N]."""
    return np.array([_anls(p, a, ANLS_THRESHOLD) for p, a in zip(predictions, answers)], dtype=np.float64)
