"""Question types and answer types, as VQA v2 defines them.

Question type: the longest of VQA v2's 64 question prefixes (``vqa_mscoco_question_types.txt``,
published with the VQA v2 annotations) that the lower-cased question starts with, matched on whole
words ("is" matches "is it red?" but not "isn't it red?"); a question that matches none is
"none of the above", the label VQA v2 itself uses.

Answer type: VQA v2 labels each question "yes/no", "number" or "other" from its human answers.
We follow that convention with an explicit rule, used only when the data carries no answer type:

1. Each answer is normalised for typing: lower-cased, surrounding spaces and trailing
   punctuation (``. , ! ?``) removed, thousands separators dropped ("1,000" -> "1000"), and the
   number words that VQA's evaluation maps to digits ("none", "zero" ... "ten") turned into digits.
2. The majority answer is the most frequent normalised answer (ties go to the one seen first),
   the same rule that picks VQA v2's ``multiple_choice_answer`` from its ten answers.
3. Its type is "yes/no" when it is "yes" or "no", "number" when it is an integer or decimal
   numeral (an optional sign, digits, an optional fractional part), and "other" otherwise,
   including when there are no answers.

This normalisation serves typing only; answer matching for rewards and metrics lives in
``vqa_grpo.rewards``.
"""

from __future__ import annotations

import re
from collections import Counter
from functools import lru_cache
from importlib import resources

NO_QUESTION_TYPE = "none of the above"

_NUMBER_WORDS = {
    "none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5",
    "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10",
}  # fmt: skip
_NUMERAL = re.compile(r"[+-]?(\d+(\.\d*)?|\.\d+)")
_THOUSANDS = re.compile(r"(?<=\d),(?=\d{3}\b)")


@lru_cache(maxsize=1)
def question_type_prefixes() -> tuple[str, ...]:
    """VQA v2's question prefixes, longest first (read once from the packaged data file)."""
    text = resources.files("vqa_grpo.data").joinpath("vqa_mscoco_question_types.txt").read_text("utf-8")
    prefixes = {" ".join(line.lower().split()) for line in text.splitlines() if line.strip()}
    return tuple(sorted(prefixes, key=lambda p: (-len(p), p)))


def question_type_of(question: str) -> str:
    """The longest VQA v2 prefix that ``question`` starts with (whole words), else "none of the above"."""
    q = " ".join(question.lower().split())
    for prefix in question_type_prefixes():
        if q.startswith(prefix) and (len(q) == len(prefix) or not q[len(prefix)].isalnum()):
            return prefix
    return NO_QUESTION_TYPE


def _normalise_for_type(answer: str) -> str:
    a = answer.lower().strip().rstrip(".,!?").strip()
    a = _THOUSANDS.sub("", a)
    return _NUMBER_WORDS.get(a, a)


def answer_type_of(answers: list[str]) -> str:
    """ "yes/no", "number" or "other" from the majority normalised answer (see the module docstring)."""
    counts = Counter(_normalise_for_type(a) for a in answers if a.strip())
    if not counts:
        return "other"
    majority = max(counts, key=counts.__getitem__)  # ties: max keeps the first seen
    if majority in ("yes", "no"):
        return "yes/no"
    if _NUMERAL.fullmatch(majority):
        return "number"
    return "other"
