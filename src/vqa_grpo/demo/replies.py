"""How the demo's base model talks: a sentence about the answer, as chat VLMs answer, or the bare answer.

The base stands in for a pretrained VLM, whose replies are sentences more often than the short
answer that VQA's metric wants, even when the prompt asks for "a single word or short phrase":

    question                                             sentence reply
    Is there a red circle?                               Yes, there is a red circle. / No, there is no red circle.
    How many red objects are there?                      There are 3 red objects. / There is 1 red object.
    What color is the circle?                            The circle is red.
    What shape is the red object?                        The red object is a circle.
    Is the red circle left or right of the blue square?  The red circle is to the left of the blue square.

Each sentence names exactly one of the family's candidate answers, so it *recognises* the answer
(``demo/recognised.py``) and scores 0 under VQA accuracy.
"""

from __future__ import annotations

import random
import re

from vqa_grpo.demo.recognised import FAMILY_OF_QUESTION_TYPE

REPLY_WORDS = ("to", "object", "objects", "there", "is", "are", "no", "yes")
"""Words the sentences use beyond the synthetic vocabulary and the prompt words."""

_EXISTENCE = re.compile(r"Is there a (\w+ \w+)\?")
_COUNT = re.compile(r"How many (.+) are there\?")
_COLOR = re.compile(r"What color is the (\w+)\?")
_SHAPE = re.compile(r"What shape is the (\w+) object\?")
_RELATION = re.compile(r"Is the (\w+ \w+) left or right of the (\w+ \w+)\?")


def sentence_reply(question: str, question_type: str, answer: str) -> str:
    """The sentence a chatty VLM gives for the synthetic ``question`` whose answer is ``answer``.

    Raises ValueError for a question that is not one of the generator's templates.
    """
    family = FAMILY_OF_QUESTION_TYPE.get(question_type)
    pattern = {"existence": _EXISTENCE, "count": _COUNT, "color": _COLOR, "shape": _SHAPE, "relation": _RELATION}
    match = pattern[family].fullmatch(question) if family else None
    if match is None:
        raise ValueError(f"not a synthetic question: {question!r} (question type {question_type!r})")
    if family == "existence":
        thing = match[1]
        return f"Yes, there is a {thing}." if answer == "yes" else f"No, there is no {thing}."
    if family == "count":
        things = match[1]  # "objects", "red objects", "circles"
        if answer == "1":
            return f"There is 1 {things[:-1]}."
        return f"There are {answer} {things}."
    if family == "color":
        return f"The {match[1]} is {answer}."
    if family == "shape":
        return f"The {match[1]} object is a {answer}."
    return f"The {match[1]} is to the {answer} of the {match[2]}."


def base_reply(question: str, question_type: str, answer: str, rng: random.Random, sentence_share: float) -> str:
    """The base's training target: the sentence with probability ``sentence_share``, else the bare answer."""
    if rng.random() < sentence_share:
        return sentence_reply(question, question_type, answer)
    return answer
