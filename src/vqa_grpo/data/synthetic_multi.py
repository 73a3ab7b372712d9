"""A synthetic multi-image VQA set: questions that need two or three of ``synthetic.py``'s scenes at once.

Each row shows 2 images (3 in ``THREE_IMAGES`` of each kind's rows), each a scene of
``synthetic.py`` (same colours, shapes, sizes, drawing) with 1-4 objects, and asks one question
across them, of four kinds in equal shares:

    kind        answer type  question (2 images; 3 images say "the most" / "all three" / "three")  answers
    more        other        "Which image has more red objects, the first or the second?"         first, second(, third)
    same_shape  yes/no       "Is the shape in both images the same?"  (one object per image)      yes, no
    count       number       "How many circles are there in the two images together?"             0-6
    which       other        "In which image is there a red circle, the first or the second?"     first, second(, third)

"more" never ties (the answer's image holds strictly more of the colour than each other one) and
every image holds the same number of objects or more than the largest count, so the total number of
objects gives nothing away; "which" has its object once, in one image. As in ``synthetic.py`` the
answer is drawn first (balanced within each kind and image count, up to one) and the scenes are
built to make it true.

Half the questions (rounded, seeded) start with one ``<image>`` placeholder per image
(data/prompts.py ``IMAGE_PLACEHOLDER``: "<image> <image> Which image ..."); the others have none, so
the images come first. Output of ``synthesize_multi(out_dir, n, seed)``::

    out_dir/data.jsonl              keys in this order: id, images, question, answer, answers,
                                    question_type, answer_type, scenes
    out_dir/images/<id>/<k>.png     image k (0-based) of the row; ``images`` lists these paths

``scenes[k]`` lists image k's objects as ``synthetic.py``'s ``scene`` does. ``question_type`` is
the VQA v2 prefix of the question without its placeholders (data/qtypes.py). Same arguments,
byte-identical files.
"""

from __future__ import annotations

import os
import random
from pathlib import Path

from vqa_grpo.data.prompts import IMAGE_PLACEHOLDER
from vqa_grpo.data.qtypes import question_type_of
from vqa_grpo.data.synthetic import (
    ALL_KINDS,
    COLORS,
    SHAPES,
    Plan,
    draw_scene,
    other_kinds,
    place_objects,
)
from vqa_grpo.data.synthetic_common import apportion, balanced, check_arguments, write_rows

KIND_ANSWER_TYPES: dict[str, str] = {"more": "other", "same_shape": "yes/no", "count": "number", "which": "other"}
"""The question kinds, in equal shares, and their VQA v2 answer types."""
ORDINALS = ("first", "second", "third")
MAX_OBJECTS_PER_IMAGE = 4
MAX_COUNT = 6
"""The largest answer of a count across images."""
THREE_IMAGES = 0.25
"""Share of each kind's rows with three images (largest remainder); the rest have two."""
PLACEHOLDERS = 0.5
"""Share of rows whose question carries one ``<image>`` per image."""
_NUMBER_WORDS = {2: "two", 3: "three"}

VOCABULARY: tuple[str, ...] = tuple(
    sorted(
        set(
            "which image has more the most objects first or second third is shape in both images same all three "
            "how many are there two together yes no ? , a".split()
        )
        | set(COLORS)
        | set(SHAPES)
        | {s + "s" for s in SHAPES}
        | {str(k) for k in range(MAX_COUNT + 1)}
    )
)
"""Every word of every question and answer (lower-cased, split on ``\\w+|[^\\w\\s]``), placeholders aside."""

_Kind = tuple[str, str]


def _answers(kind: str, n_images: int) -> tuple[str, ...]:
    if kind == "same_shape":
        return ("yes", "no")
    if kind == "count":
        return tuple(str(k) for k in range(MAX_COUNT + 1))
    return ORDINALS[:n_images]


def _schedule(rng: random.Random, n: int) -> list[tuple[str, int, str, bool]]:
    """(kind, number of images, answer, with placeholders) for ``n`` questions, shuffled."""
    schedule = []
    for kind, count in apportion(n, {k: 1 / len(KIND_ANSWER_TYPES) for k in KIND_ANSWER_TYPES}).items():
        for n_images, size in apportion(count, {2: 1 - THREE_IMAGES, 3: THREE_IMAGES}).items():
            schedule += [(kind, n_images, a) for a in balanced(rng, _answers(kind, n_images), size)]
    rng.shuffle(schedule)
    marks = [i < round(PLACEHOLDERS * n) for i in range(n)]
    rng.shuffle(marks)  # drawn apart from the answers, so placeholders say nothing about them
    return [(*row, mark) for row, mark in zip(schedule, marks)]


def _choices(n_images: int) -> str:
    """ "the first or the second" / "the first, the second or the third"."""
    named = [f"the {o}" for o in ORDINALS[:n_images]]
    return ", ".join(named[:-1]) + " or " + named[-1]


def _more(rng: random.Random, answer: str, n_images: int) -> tuple[str, list[list[_Kind]]]:
    color = rng.choice(list(COLORS))
    top = rng.randint(1, MAX_OBJECTS_PER_IMAGE)
    counts = [top if o == answer else rng.randint(0, top - 1) for o in ORDINALS[:n_images]]
    images = []
    for c in counts:
        total = rng.randint(top, MAX_OBJECTS_PER_IMAGE)  # as many objects whichever image wins
        planted = [(color, rng.choice(SHAPES)) for _ in range(c)]
        images.append(planted + other_kinds(rng, total - c, lambda k: k[0] != color, ALL_KINDS))
    most = "more" if n_images == 2 else "the most"
    return f"Which image has {most} {color} objects, {_choices(n_images)}?", images


def _same_shape(rng: random.Random, answer: str, n_images: int) -> tuple[str, list[list[_Kind]]]:
    if answer == "yes":
        shapes = [rng.choice(SHAPES)] * n_images
    elif n_images == 2:
        shapes = rng.sample(SHAPES, 2)
    else:
        shapes = [rng.choice(SHAPES) for _ in range(n_images)]
        while len(set(shapes)) == 1:
            shapes = [rng.choice(SHAPES) for _ in range(n_images)]
    images = [[(rng.choice(list(COLORS)), shape)] for shape in shapes]  # colours apart from the answer
    where = "both images" if n_images == 2 else "all three images"
    return f"Is the shape in {where} the same?", images


def _count(rng: random.Random, answer: str, n_images: int) -> tuple[str, list[list[_Kind]]]:
    k = int(answer)
    parts = [0] * n_images
    for _ in range(k):
        parts[rng.choice([i for i, p in enumerate(parts) if p < MAX_OBJECTS_PER_IMAGE])] += 1
    if rng.random() < 0.5:
        shape = rng.choice(SHAPES)
        what, planted, others = f"{shape}s", lambda: (rng.choice(list(COLORS)), shape), lambda kd: kd[1] != shape
    else:
        color = rng.choice(list(COLORS))
        what, planted, others = f"{color} objects", lambda: (color, rng.choice(SHAPES)), lambda kd: kd[0] != color
    images = []
    for p in parts:
        total = rng.randint(max(p, 1), MAX_OBJECTS_PER_IMAGE)
        images.append([planted() for _ in range(p)] + other_kinds(rng, total - p, others, ALL_KINDS))
    question = f"How many {what} are there in the {_NUMBER_WORDS[n_images]} images together?"
    return question, images


def _which(rng: random.Random, answer: str, n_images: int) -> tuple[str, list[list[_Kind]]]:
    kind = rng.choice(ALL_KINDS)
    images = []
    for o in ORDINALS[:n_images]:
        planted = [kind] if o == answer else []
        total = rng.randint(1, MAX_OBJECTS_PER_IMAGE)
        images.append(planted + other_kinds(rng, total - len(planted), lambda k: k != kind, ALL_KINDS))
    return f"In which image is there a {kind[0]} {kind[1]}, {_choices(n_images)}?", images


KINDS = {"more": _more, "same_shape": _same_shape, "count": _count, "which": _which}


def synthesize_multi(out_dir: str | os.PathLike, n: int = 1000, seed: int = 0, image_size: int = 112) -> Path:
    """Write ``n`` multi-image questions under ``out_dir`` as the module docstring says; return the
    path of data.jsonl. Images of an earlier run with a larger ``n`` are not removed."""
    check_arguments(n, image_size)
    out_dir = Path(out_dir)
    (out_dir / "images").mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    width = max(6, len(str(n - 1)))
    rows = []
    for index, (kind, n_images, answer, marked) in enumerate(_schedule(rng, n)):
        question, image_kinds = KINDS[kind](rng, answer, n_images)
        scenes = [place_objects(rng, Plan(question, "", kinds), image_size) for kinds in image_kinds]
        example_id = f"{index:0{width}d}"
        (out_dir / "images" / example_id).mkdir(exist_ok=True)
        paths = [f"images/{example_id}/{k}.png" for k in range(n_images)]
        for path, scene in zip(paths, scenes):
            draw_scene(scene, image_size).save(out_dir / path, format="PNG")
        text = " ".join([IMAGE_PLACEHOLDER] * n_images + [question]) if marked else question
        rows.append(
            {
                "id": example_id,
                "images": paths,
                "question": text,
                "answer": answer,
                "answers": [answer],
                "question_type": question_type_of(question),
                "answer_type": KIND_ANSWER_TYPES[kind],
                "scenes": scenes,
            }
        )
    return write_rows(out_dir, rows)
