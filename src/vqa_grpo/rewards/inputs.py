"""How every reward takes bad input: it never raises, it scores, and it counts.

A prediction or reference that is None or not a string, an empty (all-whitespace) string, or a
string longer than ``LONG_TEXT`` characters is *bad input*. It is turned into text (None and
non-numbers become "", an int or float becomes ``str(x)``; long text is kept whole), scored like
any other text (0 wherever nothing matches), and counted. Each public call then emits at most one
``logging.warning`` on the ``vqa_grpo.rewards`` logger with the counts, e.g.
``composite_reward: bad input scored as text: 1 prediction None, 2 empty reference``.
Unicode and regex metacharacters ("c++", "(2)", "$5") are ordinary text, not bad input.
"""

from __future__ import annotations

import logging
from collections import Counter
from typing import Any

log = logging.getLogger("vqa_grpo.rewards")

LONG_TEXT = 10_000
"""Strings longer than this are counted as bad input (a VQA answer is a few words), but scored whole."""


def as_text(value: Any, role: str, bad: Counter) -> str:
    """``value`` as a string; counts it in ``bad`` under a reason when it is bad input."""
    if isinstance(value, str):
        if len(value) > LONG_TEXT:
            bad[f"{role} over {LONG_TEXT} characters"] += 1
        elif not value or value.isspace():
            bad[f"empty {role}"] += 1
        return value
    if value is None:
        bad[f"{role} None"] += 1
        return ""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        bad[f"{role} a number (scored as its str)"] += 1
        return str(value)
    bad[f"{role} not a string ({type(value).__name__})"] += 1
    return ""


def as_references(value: Any, bad: Counter) -> list[str]:
    """A reference or list of references as a list of strings (a lone string is one reference)."""
    if isinstance(value, str):
        return [as_text(value, "reference", bad)]
    if isinstance(value, (list, tuple)):
        if not value:
            bad["empty reference list"] += 1
        return [as_text(v, "reference", bad) for v in value]
    bad[f"references not a list ({type(value).__name__})"] += 1
    return []


def warn_bad(where: str, bad: Counter) -> int:
    """Log one warning listing the counts in ``bad`` (nothing when empty); returns the total."""
    total = sum(bad.values())
    if total:
        listed = ", ".join(f"{n} {reason}" for reason, n in sorted(bad.items()))
        log.warning("%s: bad input scored as text: %s", where, listed)
    return total


def checked(where: str, prediction: Any, answers: Any) -> tuple[str, list[str]]:
    """One prediction and its answers as text for a metric's single-call form, the bad input in
    them counted and warned about under ``where`` (the metric's name)."""
    bad: Counter = Counter()
    pred, refs = as_text(prediction, "prediction", bad), as_references(answers, bad)
    warn_bad(where, bad)
    return pred, refs


def bad_input_counts(predictions: list[Any], answers: list[Any]) -> list[int]:
    """How many bad inputs each (prediction, references) pair holds, as compute_rewards counts
    them (its ``bad_inputs`` is their sum); nothing is logged."""
    out = []
    for p, a in zip(predictions, answers):
        bad: Counter = Counter()
        as_text(p, "prediction", bad)
        as_references(a, bad)
        out.append(sum(bad.values()))
    return out
