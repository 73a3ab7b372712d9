"""Multiple-choice accuracy (A-OKVQA's multiple-choice task): is the chosen option the right one?

The answers of a multiple-choice example are ``[letter, text]``: the correct option's letter
("A".."Z") and its text, e.g. ``["B", "a red car"]`` (the data side writes them so; further
entries are more accepted texts). A prediction is right when it names that option:

* by its letter: the whole answer is the letter, in either case, alone or marked as in "B.",
  "(b)", "B)" or "B:"; or it opens with the upper-case letter so marked, then a space and
  anything ("B. a red car", "(B) red car"), so "A. a red car" is wrong when B is right;
* or by its text: equal to one of the texts after lower-casing, collapsing whitespace and
  dropping one trailing period ("A red car." is "a red car"; an option whose text is "x" is
  named by "x" too).

A-OKVQA's own evaluation (allenai/aokvqa ``evaluation/eval_predictions.py``) asks for the
option's exact text (``pred == choices[correct_choice_idx]``); letters and case differences are
what a generative model writes, so they are accepted here (docs/metrics.md lists the cases).
Bad input never raises: an empty prediction, or answers that are not ``[letter, text, ...]``
(``fits_choices`` is False), score 0 and are counted (``inputs``).
"""

from __future__ import annotations

import re
from collections import Counter
from typing import Sequence

import numpy as np

from vqa_grpo.rewards.inputs import as_references, as_text, warn_bad

_LONE_LETTER = re.compile(r"\(?([A-Za-z])[.):]?\)?")
_LETTER_FIRST = re.compile(r"(?:\(([A-Z])\)|([A-Z])[.):])\s")


def fits_choices(answers: Sequence[str]) -> bool:
    """Whether ``answers`` are a multiple-choice example's: a letter A-Z, then at least one text."""
    return len(answers) >= 2 and len(answers[0].strip()) == 1 and "A" <= answers[0].strip().upper() <= "Z"


def chosen_letter(prediction: str) -> str | None:
    """The option letter a prediction names (upper case), or None when it names none."""
    text = prediction.strip()
    lone = _LONE_LETTER.fullmatch(text)
    if lone:
        return lone.group(1).upper()
    first = _LETTER_FIRST.match(text)
    return (first.group(1) or first.group(2)) if first else None


def _text_form(text: str) -> str:
    text = " ".join(text.lower().split())
    return text[:-1].rstrip() if text.endswith(".") else text


def _choice(prediction: str, answers: Sequence[str]) -> float:
    if not prediction.strip() or not fits_choices(answers):
        return 0.0
    pred = _text_form(prediction)
    if any(_text_form(t) == pred for t in answers[1:]):
        return 1.0
    return 1.0 if chosen_letter(prediction) == answers[0].strip().upper() else 0.0


def multiple_choice(prediction: str, answers: list[str]) -> float:
    """1.0 when ``prediction`` names the right option (``answers = [letter, text, ...]``), else 0.0.

    >>> [multiple_choice(p, ["B", "a red car"]) for p in ("B", "(b)", "B. a red car", "A red car.", "A")]
    [1.0, 1.0, 1.0, 1.0, 0.0]
    """
    bad: Counter = Counter()
    pred = as_text(prediction, "prediction", bad)
    gts = as_references(answers, bad)
    if gts and not fits_choices(gts):
        bad["references not [choice letter, choice text]"] += 1
    if bad:
        warn_bad("multiple_choice", bad)
    return _choice(pred, gts)


def choice_batch(predictions: Sequence[str], answers: Sequence[Sequence[str]]) -> np.ndarray:
    """``multiple_choice`` over a batch of strings: float64 array [N]."""
    return np.array([_choice(p, a) for p, a in zip(predictions, answers)], dtype=np.float64)
