"""A CLEVR-like synthetic VQA set: the embedded default that the demo and the tests train on.

Each image is a plain grey square with 1-6 flat objects (circle, square, triangle) in six
well-separated colours and two sizes, placed without overlap by rejection sampling. Each image
has one question from one of five families, with the VQA v2 answer types:

    family     answer type  question                                               answers
    existence  yes/no       "Is there a red circle?"                               yes, no
    count      number       "How many objects / red objects / circles are there?"  0-6
    color      other        "What color is the circle?"           (unique circle)  the 6 colours
    shape      other        "What shape is the red object?"   (unique red object)  the 3 shapes
    relation   other        "Is the red circle left or right of the blue square?"  left, right

With ``unanswerable`` > 0 that share of the questions (rounded) cannot be answered from the image:
"What color is the circle?" with no circle, or "What shape is the red object?" with nothing red
(half each, up to one), answered "unanswerable" (answer type other); the rest keep the families'
proportions. 0, the default, draws exactly what it drew before the option existed.

The answer is drawn first (answers are balanced inside each family: every answer of a family
comes up equally often, up to one) and the scene is built to make it true, so no answer is
learnable from the question alone. The families are mixed in the exact proportions of
``FAMILY_PROPORTIONS`` (largest-remainder rounding) in a seeded shuffled order.

Sizes are chosen for the tiny Qwen2-VL of the demo: its 14 px patches are merged 2x2, so a
112 px image is 16 visual tokens of 28x28 px; a small object (~20 px) nearly fills a token, a
large one (~34 px) spans several. Everything scales with ``image_size``.

Output of ``synthesize(out_dir, n, seed)``::

    out_dir/data.jsonl        one row per line, keys in this order:
        id, image, question, answer, answers, question_type, answer_type, scene
    out_dir/images/<id>.png   the image; ``image`` is this path relative to data.jsonl

``question_type`` is the longest VQA v2 question-type prefix (shared/data/
vqa_mscoco_question_types.txt) that the question starts with, lower-cased. ``scene`` lists the
objects as {"shape", "color", "size", "box": [x0, y0, x1, y1]} with x1, y1 exclusive pixels.
One seeded ``random.Random`` drives everything and PNGs carry no metadata, so the same seed gives
byte-identical files (with the same Pillow version).
"""

from __future__ import annotations

import os
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

from PIL import Image, ImageDraw

from vqa_grpo.data.synthetic_common import (
    MIN_IMAGE_SIZE,  # noqa: F401  (re-exported: synthetic_shift.py)
    SIZES,
    apportion,
    balanced,
    check_arguments,
    overlaps,
    side_px,
    write_rows,
)

COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 230),
    "yellow": (240, 215, 40),
    "purple": (150, 60, 200),
    "cyan": (40, 210, 220),
}
"""Colour name -> RGB; far apart in hue so that a 28 px visual token tells them apart."""

SHAPES: tuple[str, ...] = ("circle", "square", "triangle")

BACKGROUND: tuple[int, int, int] = (128, 128, 128)
MAX_OBJECTS = 6

FAMILY_PROPORTIONS: dict[str, float] = {
    "existence": 0.30,
    "count": 0.20,
    "color": 0.20,
    "shape": 0.15,
    "relation": 0.15,
}
"""Share of each question family in a generated set (sums to 1). Answer types: yes/no 30 %,
number 20 %, other 50 % (VQA v2 val has roughly 38 / 12 / 50)."""

FAMILY_ANSWERS: dict[str, tuple[str, ...]] = {
    "existence": ("yes", "no"),
    "count": tuple(str(k) for k in range(MAX_OBJECTS + 1)),
    "color": tuple(COLORS),
    "shape": SHAPES,
    "relation": ("left", "right"),
}
"""The answers of each family; each comes up equally often within its family."""

FAMILY_ANSWER_TYPES: dict[str, str] = {
    "existence": "yes/no",
    "count": "number",
    "color": "other",
    "shape": "other",
    "relation": "other",
}

_QUESTION_WORDS = (
    "is there a",
    "how many objects are there",
    "what color is the",
    "what shape is the object",
    "is the left or right of the",
)
VOCABULARY: tuple[str, ...] = tuple(
    sorted(
        set(" ".join(_QUESTION_WORDS).split())
        | set(COLORS)
        | set(SHAPES)
        | {s + "s" for s in SHAPES}
        | {a for answers in FAMILY_ANSWERS.values() for a in answers}
        | {str(d) for d in range(10)}
        | {"?"}
    )
)
"""Every token (lower-cased, split on ``\\w+|[^\\w\\s]``) of every question and answer, plus the
digits 0-9. Questions are capitalised like VQA v2 ("Is there ..."), so a tokenizer built from
this list should lower-case its input."""

# Kinds of object: (colour, shape).
_Kind = tuple[str, str]
ALL_KINDS: tuple[_Kind, ...] = tuple((c, s) for c in COLORS for s in SHAPES)
_SCENE_TRIES = 200  # whole-scene restarts (new sizes) before giving up; a few suffice in practice
_OBJECT_TRIES = 100  # positions tried for one object before restarting the scene
Kinds = tuple[_Kind, ...]
"""The (colour, shape) pairs a scene may hold: all of them unless some are held out."""


@dataclass
class Plan:
    """A question with its answer, and the objects a scene needs to make that answer true.

    When ``left_pair`` is set, ``kinds[0]`` must lie wholly left of ``kinds[1]`` (disjoint
    horizontal extents, at least the gap apart).
    """

    question: str
    question_type: str
    kinds: list[_Kind]
    left_pair: bool = False


def other_kinds(rng: random.Random, count: int, allowed: Callable[[_Kind], bool], kinds: Kinds) -> list[_Kind]:
    """``count`` random object kinds of ``kinds`` for which ``allowed`` holds."""
    pool = [k for k in kinds if allowed(k)]
    return [rng.choice(pool) for _ in range(count)]


def _shapes_of(kinds: Kinds, color: str) -> list[str]:
    return [s for c, s in kinds if c == color]


def _colors_of(kinds: Kinds, shape: str) -> list[str]:
    return [c for c, s in kinds if s == shape]


def _existence(rng: random.Random, answer: str, kinds: Kinds) -> Plan:
    color, shape = rng.choice(kinds)
    n_objects = rng.randint(1, MAX_OBJECTS)
    if answer == "yes":
        # One planted object, the rest free, so repeated kinds are no hint of a "yes".
        planted = [(color, shape)] + other_kinds(rng, n_objects - 1, lambda k: True, kinds)
    else:
        planted = other_kinds(rng, n_objects, lambda k: k != (color, shape), kinds)
    return Plan(f"Is there a {color} {shape}?", "is there a", planted)


def _count(rng: random.Random, answer: str, kinds: Kinds) -> Plan:
    k = int(answer)
    # "0" is only a sensible answer for an attribute count: every image has an object.
    template = rng.choice(("color", "shape") if k == 0 else ("all", "color", "shape"))
    if template == "all":
        return Plan("How many objects are there?", "how many", other_kinds(rng, k, lambda _: True, kinds))
    n_objects = rng.randint(max(k, 1), MAX_OBJECTS)
    if template == "color":
        color = rng.choice(list(COLORS))
        planted = [(color, rng.choice(_shapes_of(kinds, color))) for _ in range(k)]
        planted += other_kinds(rng, n_objects - k, lambda kind: kind[0] != color, kinds)
        return Plan(f"How many {color} objects are there?", "how many", planted)
    shape = rng.choice(SHAPES)
    planted = [(rng.choice(_colors_of(kinds, shape)), shape) for _ in range(k)]
    planted += other_kinds(rng, n_objects - k, lambda kind: kind[1] != shape, kinds)
    return Plan(f"How many {shape}s are there?", "how many", planted)


def _color(rng: random.Random, answer: str, kinds: Kinds) -> Plan:
    shape = rng.choice(_shapes_of(kinds, answer))
    planted = [(answer, shape)]  # the only object of this shape
    planted += other_kinds(rng, rng.randint(0, MAX_OBJECTS - 1), lambda k: k[1] != shape, kinds)
    return Plan(f"What color is the {shape}?", "what color is the", planted)


def _shape(rng: random.Random, answer: str, kinds: Kinds) -> Plan:
    color = rng.choice(_colors_of(kinds, answer))
    planted = [(color, answer)]  # the only object of this colour
    planted += other_kinds(rng, rng.randint(0, MAX_OBJECTS - 1), lambda k: k[0] != color, kinds)
    return Plan(f"What shape is the {color} object?", "what", planted)


def _relation(rng: random.Random, answer: str, kinds: Kinds) -> Plan:
    left, right = rng.sample(kinds, 2)  # two different kinds, each unique in the scene
    subject, reference = (left, right) if answer == "left" else (right, left)
    planted = [left, right]
    planted += other_kinds(rng, rng.randint(0, MAX_OBJECTS - 2), lambda k: k not in (left, right), kinds)
    question = f"Is the {subject[0]} {subject[1]} left or right of the {reference[0]} {reference[1]}?"
    return Plan(question, "is the", planted, left_pair=True)


UNANSWERABLE = "unanswerable"
"""The answer of a question about an object the image does not hold (rewards/abstention.py)."""


def _missing(rng: random.Random, asked: str, kinds: Kinds) -> Plan:
    """A question about an object that is not there, by the attribute it lacks: the colour of a
    shape absent from the scene, or the shape of a colour absent from it."""
    if asked == "color":
        shape = rng.choice(SHAPES)
        planted = other_kinds(rng, rng.randint(1, MAX_OBJECTS), lambda k: k[1] != shape, kinds)
        return Plan(f"What color is the {shape}?", "what color is the", planted)
    color = rng.choice(list(COLORS))
    planted = other_kinds(rng, rng.randint(1, MAX_OBJECTS), lambda k: k[0] != color, kinds)
    return Plan(f"What shape is the {color} object?", "what", planted)


FAMILIES: dict[str, Callable[[random.Random, str, Kinds], Plan]] = {
    "existence": _existence,
    "count": _count,
    "color": _color,
    "shape": _shape,
    "relation": _relation,
    UNANSWERABLE: _missing,
}


def place_objects(rng: random.Random, plan: Plan, image_size: int) -> list[dict]:
    """Sizes and non-overlapping boxes for ``plan.kinds`` by rejection sampling.

    Boxes keep ``gap`` pixels from each other and from the border. A failed object restarts the
    whole scene with new sizes, so a crowded draw of six large objects cannot get stuck.
    """
    gap = max(1, image_size // 50)
    for _ in range(_SCENE_TRIES):
        boxes: list[tuple[int, int, int, int]] = []
        sizes: list[str] = []
        for i in range(len(plan.kinds)):
            size = rng.choice(tuple(SIZES))
            side = side_px(size, image_size)
            for _ in range(_OBJECT_TRIES):
                x0 = rng.randint(gap, image_size - gap - side)
                y0 = rng.randint(gap, image_size - gap - side)
                box = (x0, y0, x0 + side, y0 + side)
                if plan.left_pair and i == 1 and x0 < boxes[0][2] + gap:
                    continue
                if not any(overlaps(box, other, gap) for other in boxes):
                    break
            else:
                break
            boxes.append(box)
            sizes.append(size)
        else:
            objects = [
                {"shape": shape, "color": color, "size": size, "box": list(box)}
                for (color, shape), size, box in zip(plan.kinds, sizes, boxes)
            ]
            rng.shuffle(objects)  # the order of the list must not give the answer away
            return objects
    raise RuntimeError(f"could not place {len(plan.kinds)} objects in {image_size} px")


def draw_scene(objects: list[dict], image_size: int) -> Image.Image:
    """The image of a scene: ``objects`` on the grey background; a box past the border is clipped."""
    image = Image.new("RGB", (image_size, image_size), BACKGROUND)
    draw = ImageDraw.Draw(image)
    for obj in objects:
        x0, y0, x1, y1 = obj["box"]
        fill = COLORS[obj["color"]]
        # PIL's shape boxes include their last pixel; ours exclude it.
        if obj["shape"] == "circle":
            draw.ellipse((x0, y0, x1 - 1, y1 - 1), fill=fill)
        elif obj["shape"] == "square":
            inset = round(0.06 * (x1 - x0))  # a full-box square would look much bigger
            draw.rectangle((x0 + inset, y0 + inset, x1 - 1 - inset, y1 - 1 - inset), fill=fill)
        else:
            draw.polygon([((x0 + x1) // 2, y0), (x0, y1 - 1), (x1 - 1, y1 - 1)], fill=fill)
    return image


def family_schedule(rng: random.Random, n: int) -> list[tuple[str, str]]:
    """``n`` (family, answer) pairs: families in ``FAMILY_PROPORTIONS`` (largest remainder),
    answers cycled within each family, the whole list shuffled."""
    schedule = []
    for family, count in apportion(n, FAMILY_PROPORTIONS).items():
        schedule += [(family, answer) for answer in balanced(rng, FAMILY_ANSWERS[family], count)]
    rng.shuffle(schedule)
    return schedule


def _schedule(rng: random.Random, n: int, unanswerable: float) -> list[tuple[str, str]]:
    """The (family, answer) pairs; unanswerable questions are (UNANSWERABLE, the attribute asked)."""
    missing = round(unanswerable * n)
    if missing == 0:
        return family_schedule(rng, n)  # the draws of the set without the option, unchanged
    schedule = family_schedule(rng, n - missing) if missing < n else []
    schedule += [(UNANSWERABLE, ("color", "shape")[i % 2]) for i in range(missing)]
    rng.shuffle(schedule)
    return schedule


def allowed_kinds(held_out_pairs: Iterable[_Kind] = ()) -> Kinds:
    """The (colour, shape) pairs left when ``held_out_pairs`` are taken out; ValueError for an unknown
    pair or when a colour or a shape would have none left (its questions could not be drawn)."""
    held = set(map(tuple, held_out_pairs))
    if held - set(ALL_KINDS):
        raise ValueError(f"unknown (colour, shape) pairs: {sorted(held - set(ALL_KINDS))}")
    kinds = tuple(k for k in ALL_KINDS if k not in held)
    if {c for c, _ in kinds} != set(COLORS) or {s for _, s in kinds} != set(SHAPES):
        raise ValueError("held_out_pairs must leave every colour and every shape at least one pair")
    return kinds


def write_examples(out_dir: Path, examples: list[tuple[Plan, str, str, dict, list[dict]]], image_size: int) -> Path:
    """Each example's image (images/<id>.png, ids in order) and data.jsonl, as ``synthesize`` says;
    an example is ``(plan, answer, answer_type, extra fields, scene objects)``."""
    width = max(6, len(str(len(examples) - 1)))
    rows = []
    for index, (plan, answer, answer_type, extra, objects) in enumerate(examples):
        example_id = f"{index:0{width}d}"
        image_path = f"images/{example_id}.png"
        draw_scene(objects, image_size).save(out_dir / image_path, format="PNG")
        row = {
            "id": example_id,
            "image": image_path,
            "question": plan.question,
            "answer": answer,
            "answers": [answer],
            "question_type": plan.question_type,
            "answer_type": answer_type,
            **extra,
            "scene": objects,
        }
        rows.append(row)
    return write_rows(out_dir, rows)


def synthesize(
    out_dir: str | os.PathLike,
    n: int = 1000,
    seed: int = 0,
    image_size: int = 112,
    unanswerable: float = 0.0,
    held_out_pairs: Iterable[_Kind] = (),
) -> Path:
    """Write ``n`` synthetic VQA examples under ``out_dir`` and return the path of data.jsonl;
    ``unanswerable`` of them (a share, rounded) ask about an object that is not in the image. No
    scene holds an object of ``held_out_pairs`` ((colour, shape); every colour and every shape must
    keep one pair): the out-of-distribution set of ``synthetic_shift.py`` asks about them.

    Same arguments, byte-identical files. Images of an earlier run with a larger ``n`` are not
    removed; data.jsonl is replaced whole (written to a temporary file, then renamed).
    """
    check_arguments(n, image_size, unanswerable)
    kinds = allowed_kinds(held_out_pairs)
    out_dir = Path(out_dir)
    (out_dir / "images").mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    examples = []
    for family, answer in _schedule(rng, n, unanswerable):
        plan = FAMILIES[family](rng, answer, kinds)
        answer = UNANSWERABLE if family == UNANSWERABLE else answer
        answer_type = FAMILY_ANSWER_TYPES.get(family, "other")
        examples.append((plan, answer, answer_type, {}, place_objects(rng, plan, image_size)))
    return write_examples(out_dir, examples, image_size)
