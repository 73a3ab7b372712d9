"""An out-of-distribution set for the synthetic scenario: questions shifted the way a deployment shifts.

The demo trains and evaluates on ``synthesize(..., held_out_pairs=HELD_OUT_PAIRS)``: scenes of 1-6
objects, no object of the six held-out colour-shape pairs, one fixed wording per question template.
``synthesize_shifted`` writes questions that set differs from in one way each, a third per shift:

    shift      what differs                                      example
    crowded    7-9 objects, more than any training scene          "How many red objects are there?"
    pairs      the question is about a held-out pair              "What color is the triangle?" (red)
    rephrased  another wording of a template, the same answer      "What is the color of the triangle?"

A crowded scene is a training question's scene with objects added that share neither a colour nor a
shape with the question's words, so the answer stays true ("How many objects are there?" is not
asked there: its answer would leave 0-6). A pairs question's answer rests on an object of a held-out
pair (for "Is there a ...?" answered no, the asked pair is a held-out one). Rephrased questions use
only words the tiny models' tokenizers know. Nothing else changes: answers are balanced within each
family as in ``synthetic.py``, crowded and rephrased scenes hold training pairs only, and every row
keeps the family's ``question_type`` of the training set, so the per-type breakdown and *recognised*
(``demo/recognised.py``) read them as the training questions. Each row gains ``shift``.

Same arguments, byte-identical files, like ``synthesize``. The shipped demo base saw every pair in
its own pretraining (``demo/base.py`` draws from all 18), so the pairs shift is unseen by the
demo's GRPO and SFT stages only.
"""

from __future__ import annotations

import os
import random
import re
from pathlib import Path

from vqa_grpo.data.synthetic import (
    ALL_KINDS,
    COLORS,
    FAMILIES,
    FAMILY_ANSWER_TYPES,
    MAX_OBJECTS,
    MIN_IMAGE_SIZE,
    SHAPES,
    Kinds,
    Plan,
    allowed_kinds,
    family_schedule,
    other_kinds,
    place_objects,
    write_examples,
)

HELD_OUT_PAIRS: tuple[tuple[str, str], ...] = (
    ("red", "triangle"),
    ("green", "circle"),
    ("blue", "square"),
    ("yellow", "triangle"),
    ("purple", "circle"),
    ("cyan", "square"),
)
"""One pair per colour, each shape twice: every colour and shape is still seen in training, only
these combinations are not (CLEVR's CoGenT split shifts its colour-shape pairs the same way)."""

SHIFTS = ("crowded", "pairs", "rephrased")
CROWDED_OBJECTS = (MAX_OBJECTS + 1, MAX_OBJECTS + 3)
"""Objects in a crowded scene (inclusive); training scenes hold at most ``MAX_OBJECTS``."""
_TRIES = 1000

_REWORDINGS: tuple[tuple[re.Pattern, tuple[str, ...]], ...] = (
    (re.compile(r"Is there a (\w+) (\w+)\?"), ("Is a {0} {1} there?", "Are there {0} {1}s?")),
    (re.compile(r"How many objects are there\?"), ("How many objects?", "There are how many objects?")),
    (re.compile(r"How many (\w+) objects are there\?"), ("How many {0} objects?", "How many objects are {0}?")),
    (re.compile(r"How many (\w+)s are there\?"), ("How many {0}s?", "How many objects are {0}s?")),
    (re.compile(r"What color is the (\w+)\?"), ("What is the color of the {0}?", "The {0} is what color?")),
    (
        re.compile(r"What shape is the (\w+) object\?"),
        ("What is the shape of the {0} object?", "The {0} object is what shape?"),
    ),
    (
        re.compile(r"Is the (\w+ \w+) left or right of the (\w+ \w+)\?"),
        ("Is the {0} to the left or right of the {1}?", "Is the {0} to the left or to the right of the {1}?"),
    ),
)
"""Each training template and two other wordings of it with the same answer."""


def reword(question: str, rng: random.Random) -> str:
    """One of the other wordings of a training ``question``; ValueError for a question of no template."""
    for pattern, wordings in _REWORDINGS:
        match = pattern.fullmatch(question)
        if match:
            return rng.choice(wordings).format(*match.groups())
    raise ValueError(f"not a synthetic question: {question!r}")


def _named(question: str) -> tuple[set[str], set[str]]:
    """The colours and shapes a question names."""
    words = set(re.findall(r"\w+", question.lower()))
    return set(COLORS) & words, {s for s in SHAPES if s in words or s + "s" in words}


def _crowded(rng: random.Random, family: str, answer: str, kinds: Kinds) -> Plan:
    while True:  # a count of all objects is redrawn (rare: a third of the counts at most)
        plan = FAMILIES[family](rng, answer, kinds)
        if plan.question != "How many objects are there?":
            break
    colors, shapes = _named(plan.question)
    total = rng.randint(*CROWDED_OBJECTS)
    neutral = lambda k: k[0] not in colors and k[1] not in shapes  # noqa: E731
    plan.kinds = plan.kinds + other_kinds(rng, total - len(plan.kinds), neutral, kinds)
    return plan


def _on_held_out_pair(plan: Plan, family: str, held: set) -> bool:
    if family == "existence":
        return tuple(plan.question[len("Is there a ") : -1].split()) in held
    return bool(plan.kinds) and plan.kinds[0] in held  # the planted object: the one the answer rests on


def _pairs(rng: random.Random, family: str, answer: str, held: set) -> Plan:
    for _ in range(_TRIES):
        plan = FAMILIES[family](rng, answer, ALL_KINDS)
        if _on_held_out_pair(plan, family, held):
            return plan
    raise RuntimeError(f"no {family} question answered {answer!r} on a held-out pair in {_TRIES} draws")


def _schedule(rng: random.Random, n: int) -> list[tuple[str, str, str]]:
    """(shift, family, answer) for ``n`` questions: the shifts a third each (the first ones get the
    leftover), each shift's families and answers as ``synthetic.py`` draws them, all shuffled."""
    sizes = [n // len(SHIFTS) + (i < n % len(SHIFTS)) for i in range(len(SHIFTS))]
    schedule = []
    for shift, size in zip(SHIFTS, sizes):
        if size:
            schedule += [(shift, family, answer) for family, answer in family_schedule(rng, size)]
    rng.shuffle(schedule)
    return schedule


def synthesize_shifted(
    out_dir: str | os.PathLike,
    n: int = 300,
    seed: int = 0,
    image_size: int = 112,
    held_out_pairs: tuple[tuple[str, str], ...] = HELD_OUT_PAIRS,
) -> Path:
    """Write ``n`` out-of-distribution questions (a third per shift of ``SHIFTS``) under ``out_dir``
    as ``synthesize`` does, each row with its ``shift``; return the path of data.jsonl."""
    if n < 1:
        raise ValueError(f"n must be a positive number of examples, got {n}")
    if image_size < MIN_IMAGE_SIZE:
        raise ValueError(f"image_size must be at least {MIN_IMAGE_SIZE} px, got {image_size}")
    kinds, held = allowed_kinds(held_out_pairs), set(held_out_pairs)
    out_dir = Path(out_dir)
    (out_dir / "images").mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    examples = []
    for shift, family, answer in _schedule(rng, n):
        if shift == "crowded":
            plan = _crowded(rng, family, answer, kinds)
        elif shift == "pairs":
            plan = _pairs(rng, family, answer, held)
        else:
            plan = FAMILIES[family](rng, answer, kinds)
            plan.question = reword(plan.question, rng)
        examples.append(
            (plan, answer, FAMILY_ANSWER_TYPES[family], {"shift": shift}, place_objects(rng, plan, image_size))
        )
    return write_examples(out_dir, examples, image_size)
