"""Whether a reply to a synthetic question shows that the model saw the answer, whatever its form.

A reply *recognises* the answer when exactly one of the question family's candidate answers
(``FAMILY_ANSWERS`` of ``data/synthetic.py``) appears in it as a whole word, and that one is the
right answer. "The circle is red." recognises "red"; "red" does too; "red or blue" and "yes no"
recognise nothing (a reply that lists several candidates has not chosen one), nor does
"reddish". The words are those of the official VQA normalisation (``normalize_answer``: lower
case, punctuation out, number words as digits), so "There are three." recognises "3".

The family comes from the row's question type, which the generator sets from the question's
VQA v2 prefix. The share of recognised replies separates perception from form: a model that
answers in sentences is wrong for the VQA metric and still recognises the answer; training for
the bare answer should move the metric and leave this share where it was.
"""

from __future__ import annotations

from typing import Iterable, Mapping

from vqa_grpo.data.synthetic import FAMILY_ANSWERS
from vqa_grpo.rewards.normalize import normalize_answer

FAMILY_OF_QUESTION_TYPE: dict[str, str] = {
    "is there a": "existence",
    "how many": "count",
    "what color is the": "color",
    "what": "shape",
    "is the": "relation",
}
"""The synthetic generator's question types (VQA v2 prefixes) and the family each one marks."""


def recognises(reply: str, question_type: str, answer: str) -> bool:
    """Whether ``reply`` names exactly one candidate answer of the question's family, the right one.

    Raises KeyError for a question type that no synthetic family has.
    """
    candidates = FAMILY_ANSWERS[FAMILY_OF_QUESTION_TYPE[question_type]]
    words = set(normalize_answer(reply if isinstance(reply, str) else "").split())
    named = [c for c in candidates if c in words]
    return named == [answer]


def recognised_share(rows: Iterable[Mapping]) -> float:
    """The share of ``rows`` (predictions.jsonl rows: ``raw``, ``question_type``, ``answers``)
    whose raw reply recognises the first reference answer; NaN for no rows."""
    flags = [recognises(r["raw"], r["question_type"], r["answers"][0]) for r in rows]
    return sum(flags) / len(flags) if flags else float("nan")
