"""Answer-type aware reward (seed 6.1): yes/no scored as yes/no, numbers as numbers, the rest by the composite.

Texts are read after the official VQA normalisation (``normalize_answer``), so "Two." is "2" and
"1,000" is "1000".

* yes/no: ``parse_yes_no`` reads the *first* token: yes/yeah/yep/yup/true -> "yes",
  no/nope/false -> "no", else None ("Yes, there is" -> "yes"; "there is" -> None).
  Score 1 if the prediction's value equals the reference's, else 0.
* number: ``parse_number`` takes the first number among the tokens: digits ("3", "3.5", ".5") or words
  (zero..nineteen, twenty..ninety, and "twenty one" style pairs; "none" is 0 as in VQA).
  Score 1 if equal, else 0; with ``partial_credit`` max(0, 1 - |p - r| / max(|r|, 1)) instead
  (r = 4: p = 3 scores 0.75, p = 6 scores 0.5). An unparseable prediction scores 0.
* other: the composite reward's total (with ``guard``, the composite's guard against repeated or
  listed answers, rewards/composite.py: ``reward.composite_guard`` in training).

Several references: each is scored as above and the best score is kept (as the composite does).
The answer type comes from the data when it is one of ``ANSWER_TYPES``, else it is inferred from
the answers by ``vqa_grpo.data.qtypes.answer_type_of`` (the data layer's rule, one source of truth).
"""

from __future__ import annotations

import re
from typing import Mapping, Sequence

import numpy as np

from vqa_grpo.data.qtypes import answer_type_of
from vqa_grpo.data.types import ANSWER_TYPES
from vqa_grpo.rewards.composite import best_parts, check_weights
from vqa_grpo.rewards.normalize import answer_tokens, normalize_answer

_YES = {"yes", "yeah", "yep", "yup", "true"}
_NO = {"no", "nope", "false"}
_DIGITS = re.compile(r"\d+(?:\.\d+)?|\.\d+")  # "3", "3.5", ".5" (float() reads any Unicode digits)
_UNITS = {"1": 1, "2": 2, "3": 3, "4": 4, "5": 5, "6": 6, "7": 7, "8": 8, "9": 9}  # VQA maps one..nine to digits
_WORDS = {
    "eleven": 11,
    "twelve": 12,
    "thirteen": 13,
    "fourteen": 14,
    "fifteen": 15,
    "sixteen": 16,
    "seventeen": 17,
    "eighteen": 18,
    "nineteen": 19,
}
_TENS = {"twenty": 20, "thirty": 30, "forty": 40, "fifty": 50, "sixty": 60, "seventy": 70, "eighty": 80, "ninety": 90}


def parse_yes_no(text: str) -> str | None:
    """ "yes" or "no" from the first token of the normalised text, else None."""
    words = normalize_answer(text).split()
    if not words:
        return None
    return "yes" if words[0] in _YES else "no" if words[0] in _NO else None


def parse_number(text: str) -> float | None:
    """The first number in the normalised text (digits or number words), else None."""
    words = normalize_answer(text).split()
    for i, w in enumerate(words):
        if _DIGITS.fullmatch(w):
            return float(w)
        if w in _WORDS:
            return float(_WORDS[w])
        if w in _TENS:
            unit = _UNITS.get(words[i + 1], 0) if i + 1 < len(words) else 0
            return float(_TENS[w] + unit)
    return None


def _number_score(p: float | None, r: float | None, partial_credit: bool) -> float:
    if p is None or r is None:
        return 0.0
    if not partial_credit:
        return 1.0 if p == r else 0.0
    return max(0.0, 1.0 - abs(p - r) / max(abs(r), 1.0))


def answer_type_score(
    prediction: str,
    answers: Sequence[str],
    answer_type: str,
    w: Sequence[float],
    partial_credit: bool = False,
    guard: bool = False,
) -> float:
    """The reward of one prediction (strings only); ``w`` are the composite weights as a tuple."""
    kind = answer_type if answer_type in ANSWER_TYPES else answer_type_of(list(answers))
    if not answers:
        return 0.0
    if kind == "yes/no":
        p = parse_yes_no(prediction)
        return 1.0 if p is not None and any(parse_yes_no(a) == p for a in answers) else 0.0
    if kind == "number":
        p = parse_number(prediction)
        return max(_number_score(p, parse_number(a), partial_credit) for a in answers)
    parts = best_parts(answer_tokens(prediction), [answer_tokens(a) for a in answers], w, guard)
    return sum(wi * x for wi, x in zip(w, parts))


def answer_type_batch(
    predictions: Sequence[str],
    answers: Sequence[Sequence[str]],
    answer_types: Sequence[str],
    composite_weights: Mapping[str, float] | None = None,
    partial_credit: bool = False,
    guard: bool = False,
) -> np.ndarray:
    """``answer_type_score`` over a batch of strings: float64 array [N]."""
    w = check_weights(composite_weights)
    return np.array(
        [answer_type_score(p, a, t, w, partial_credit, guard) for p, a, t in zip(predictions, answers, answer_types)],
        dtype=np.float64,
    )
