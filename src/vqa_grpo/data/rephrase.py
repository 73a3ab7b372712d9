"""Rephrasings of a question that keep its answer: the question side of robustness testing.

A model that answers "What color is the car?" but not "Which colour is the car?" has learnt the
wording, not the question. Each rewrite below is a pure function of the question's text with a
name; ``rephrasings`` returns those that apply, in the fixed order of ``REWRITES``. They are kept
safe on purpose: none adds or removes a negation, every word and number of the question that
carries content is kept verbatim, and only a single well-formed question is rewritten.

Applies to: one question, ending in its only "?", on one line, with no "image", "picture" or
"photo" already in it for ``in_this_image``. A multiple-choice prompt with its options, an
instruction ("Read the sign."), or several sentences get no rewrite: appending or prefixing words
there could change what is asked. Whitespace runs are collapsed to one space first.

The rewrites (matched case-insensitively on the start of the question, VQA v2's question types):

=================  ===========================================  ==========================================
name               from                                         to
=================  ===========================================  ==========================================
``number_of``      How many dogs are there on the grass?        What is the number of dogs on the grass?
``which_colour``   What color is the car?                       Which colour is the car?
``can_you_see``    Is there a red circle?                       Can you see a red circle?
``contraction``    What is the man holding?                     What's the man holding?
``please_answer``  Is the bus red?                              Please answer: Is the bus red?
``in_this_image``  What color is the car?                       What color is the car in this image?
=================  ===========================================  ==========================================

``can_you_see`` is left out when the question holds a negation ("Is there no milk?"), and
"what is the ..." becomes a contraction rather than "tell me the ...", which would break on a verb
("What is the man holding?" is not "Tell me the man holding.").

>>> rephrasings("How many objects are there?")
[('number_of', 'What is the number of objects?'), ('please_answer', 'Please answer: How many objects are there?'), \
('in_this_image', 'How many objects are there in this image?')]
>>> rephrasings("Read the sign.")
[]
"""

from __future__ import annotations

import re
from typing import Callable

_NEGATION = re.compile(r"\b(not|no|none|nothing|never|without|nobody|neither|nor)\b|n't\b", re.IGNORECASE)
_PICTURE = re.compile(r"\b(image|picture|photo|photograph|pic|photos|images|pictures)\b", re.IGNORECASE)
_HOW_MANY_THERE = re.compile(r"how many (?P<what>.+?) (?:are|is) there(?P<rest>\b.*)?\?$", re.IGNORECASE)
_WHAT_COLOR = re.compile(r"what colou?r\b", re.IGNORECASE)
_IS_THERE = re.compile(r"(?:is|are) there (?P<rest>.+)\?$", re.IGNORECASE)
_WH_IS = re.compile(r"(?P<wh>what|where|who) is (?=\w)", re.IGNORECASE)


def _number_of(q: str) -> str | None:
    m = _HOW_MANY_THERE.match(q)
    return f"What is the number of {m['what']}{m['rest'] or ''}?" if m else None


def _which_colour(q: str) -> str | None:
    m = _WHAT_COLOR.match(q)
    return "Which colour" + q[m.end() :] if m else None


def _can_you_see(q: str) -> str | None:
    m = _IS_THERE.match(q)
    return f"Can you see {m['rest']}?" if m and not _NEGATION.search(q) else None


def _contraction(q: str) -> str | None:
    m = _WH_IS.match(q)
    return f"{m['wh'].capitalize()}'s " + q[m.end() :] if m else None


def _please_answer(q: str) -> str | None:
    return "Please answer: " + q


def _in_this_image(q: str) -> str | None:
    return None if _PICTURE.search(q) else q[:-1].rstrip() + " in this image?"


REWRITES: dict[str, Callable[[str], str | None]] = {
    "number_of": _number_of,
    "which_colour": _which_colour,
    "can_you_see": _can_you_see,
    "contraction": _contraction,
    "please_answer": _please_answer,
    "in_this_image": _in_this_image,
}
"""Each rewrite by name: the question (whitespace collapsed, a single question) to its rephrasing,
or None where it does not apply."""


def rephrasings(question: str) -> list[tuple[str, str]]:
    """``(name, rephrased question)`` for each rewrite that applies to ``question``, in
    ``REWRITES`` order (possibly none); deterministic. A rewrite that would return the question
    unchanged is left out."""
    if "\n" in question.strip():
        return []
    q = " ".join(question.split())
    if not q.endswith("?") or q.count("?") != 1 or len(q) < 2:
        return []
    out = []
    for name, rewrite in REWRITES.items():
        text = rewrite(q)
        if text is not None and text != q:
            out.append((name, text))
    return out
