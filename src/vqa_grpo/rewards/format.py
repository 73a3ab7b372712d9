"""What a decoded completion is turned into before scoring, and the format reward.

Two prompt styles (seed 3.1 and the optional reasoning prompt):

* plain: the prompt asks for "a single word or short phrase". ``clean_answer`` keeps the first
  line; the format reward is 1 when the stripped completion is one line of 1..``MAX_WORDS`` words.
* reasoning: the completion must hold exactly one ``<answer>...</answer>`` pair (the tags as
  written, case-sensitive; a second opening or closing tag fails). ``clean_answer`` returns the
  content of that pair (its first line, stripped) or "" when the pair is missing or duplicated;
  the format reward is 1 when there is exactly one pair and its content is not blank.
"""

from __future__ import annotations

import re
from typing import Any, Sequence

import numpy as np

MAX_WORDS = 5
"""Most whitespace-separated words a plain completion may have and still count as a short phrase."""

_OPEN, _CLOSE = "<answer>", "</answer>"
_PAIR = re.compile(re.escape(_OPEN) + r"(.*?)" + re.escape(_CLOSE), re.DOTALL)


def tagged_answer(text: str) -> str | None:
    """The raw content of the only ``<answer>...</answer>`` pair in ``text``, else None."""
    if text.count(_OPEN) != 1 or text.count(_CLOSE) != 1:
        return None
    match = _PAIR.search(text)
    return match.group(1) if match else None


def clean_answer(text: Any, *, reasoning: bool = False) -> str:
    """The answer a completion gives, as every reward and metric scores it.

    Plain: ``text.strip()``, then its first line (``str.splitlines``), stripped. Reasoning: the
    same applied to the content of the one ``<answer>...</answer>`` pair, or "" when there is not
    exactly one. A non-string gives "". Idempotent for plain completions only: clean once.
    """
    if not isinstance(text, str):
        return ""
    if reasoning:
        text = tagged_answer(text)
        if text is None:
            return ""
    lines = text.strip().splitlines()
    return lines[0].strip() if lines else ""


def format_score(completion: Any, *, reasoning: bool = False) -> float:
    """1.0 when the raw completion has the asked-for format (module docstring), else 0.0."""
    if not isinstance(completion, str):
        return 0.0
    if reasoning:
        content = tagged_answer(completion)
        return 1.0 if content is not None and content.strip() else 0.0
    text = completion.strip()
    return 1.0 if text and len(text.splitlines()) == 1 and len(text.split()) <= MAX_WORDS else 0.0


def format_batch(completions: Sequence[Any], *, reasoning: bool = False) -> np.ndarray:
    """``format_score`` over a batch: float64 array [N]."""
    return np.array([format_score(c, reasoning=reasoning) for c in completions], dtype=np.float64)
