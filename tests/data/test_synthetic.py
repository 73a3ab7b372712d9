"""The synthetic VQA set: determinism, schema, balance, scenes that match images and answers."""

from __future__ import annotations

import json
import re
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vqa_grpo.data import synthetic
from vqa_grpo.data.synthetic import (
    BACKGROUND,
    COLORS,
    FAMILY_ANSWER_TYPES,
    FAMILY_ANSWERS,
    FAMILY_PROPORTIONS,
    SHAPES,
    VOCABULARY,
    synthesize,
)
from vqa_grpo.errors import UserError

ROW_KEYS = ["id", "image", "question", "answer", "answers", "question_type", "answer_type", "scene"]
QUESTION_TYPES_NAME = "vqa_mscoco_question_types.txt"


def _read(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def _tree_bytes(root: Path) -> dict[str, bytes]:
    files = sorted(p for p in root.rglob("*") if p.is_file())
    return {str(p.relative_to(root)): p.read_bytes() for p in files}


@pytest.fixture(scope="module")
def rows600(tmp_path_factory) -> tuple[Path, list[dict]]:
    path = synthesize(tmp_path_factory.mktemp("syn600"), n=600, seed=3)
    return path, _read(path)


def _family(row: dict) -> str:
    """The family of a row, from its question alone (independent of the generator's code)."""
    q = row["question"]
    if q.startswith("Is there a "):
        return "existence"
    if q.startswith("How many "):
        return "count"
    if q.startswith("What color is the "):
        return "color"
    if q.startswith("What shape is the "):
        return "shape"
    if " left or right of the " in q:
        return "relation"
    raise AssertionError(f"unknown question: {q}")


def _answer_from_scene(question: str, scene: list[dict]) -> str:
    """Answer ``question`` from ``scene``; asserts uniqueness where the question presumes it."""
    kinds = [(o["color"], o["shape"]) for o in scene]
    if m := re.fullmatch(r"Is there a (\w+) (\w+)\?", question):
        return "yes" if (m[1], m[2]) in kinds else "no"
    if question == "How many objects are there?":
        return str(len(scene))
    if m := re.fullmatch(r"How many (\w+) objects are there\?", question):
        return str(sum(c == m[1] for c, _ in kinds))
    if m := re.fullmatch(r"How many (\w+)s are there\?", question):
        return str(sum(s == m[1] for _, s in kinds))
    if m := re.fullmatch(r"What color is the (\w+)\?", question):
        (match,) = [c for c, s in kinds if s == m[1]]
        return match
    if m := re.fullmatch(r"What shape is the (\w+) object\?", question):
        (match,) = [s for c, s in kinds if c == m[1]]
        return match
    if m := re.fullmatch(r"Is the (\w+) (\w+) left or right of the (\w+) (\w+)\?", question):
        (a,) = [o["box"] for o in scene if (o["color"], o["shape"]) == (m[1], m[2])]
        (b,) = [o["box"] for o in scene if (o["color"], o["shape"]) == (m[3], m[4])]
        assert a[2] < b[0] or b[2] < a[0], "the two objects must not share any column"
        return "left" if a[2] < b[0] else "right"
    raise AssertionError(f"unknown question: {question}")


def test_same_seed_gives_byte_identical_files_and_another_seed_differs(tmp_path):
    first = _tree_bytes(synthesize(tmp_path / "a", n=40, seed=7).parent)
    again = _tree_bytes(synthesize(tmp_path / "b", n=40, seed=7).parent)
    other = _tree_bytes(synthesize(tmp_path / "c", n=40, seed=8).parent)
    assert len(first) == 41  # data.jsonl and 40 PNGs, nothing else (no temporary file left)
    assert first == again
    assert first["data.jsonl"] != other["data.jsonl"]
    assert sum(first[k] != other[k] for k in first if k.endswith(".png")) > 30


def test_rows_have_the_fixed_schema_and_the_images_exist(rows600):
    path, rows = rows600
    text = path.read_text(encoding="utf-8")
    assert text.endswith("\n") and text.count("\n") == 600
    assert [r["id"] for r in rows] == [f"{i:06d}" for i in range(600)]
    for row in rows:
        assert list(row) == ROW_KEYS
        assert row["image"] == f"images/{row['id']}.png"
        assert all(isinstance(row[k], str) for k in ROW_KEYS[:4] + ROW_KEYS[5:7])
        assert row["answers"] == [row["answer"]]
        assert row["answer_type"] == FAMILY_ANSWER_TYPES[_family(row)]
        for obj in row["scene"]:
            assert list(obj) == ["shape", "color", "size", "box"]
    for row in rows[:20]:
        with Image.open(path.parent / row["image"]) as image:
            assert image.mode == "RGB" and image.size == (112, 112)


def test_families_follow_the_proportions_and_answers_are_balanced(rows600):
    _, rows = rows600
    per_family: dict[str, Counter] = defaultdict(Counter)
    for row in rows:
        per_family[_family(row)][row["answer"]] += 1
    for family, share in FAMILY_PROPORTIONS.items():
        answers = per_family[family]
        assert abs(sum(answers.values()) - share * 600) <= 1, family
        assert set(answers) == set(FAMILY_ANSWERS[family]), family
        assert max(answers.values()) - min(answers.values()) <= 1, (family, answers)


def test_answers_follow_from_the_scene(rows600):
    _, rows = rows600
    for row in rows:
        assert 1 <= len(row["scene"]) <= synthetic.MAX_OBJECTS
        assert _answer_from_scene(row["question"], row["scene"]) == row["answer"], row


def test_objects_lie_inside_the_image_without_overlap(rows600):
    _, rows = rows600
    for row in rows:
        boxes = [o["box"] for o in row["scene"]]
        for x0, y0, x1, y1 in boxes:
            assert 0 < x0 < x1 < 112 and 0 < y0 < y1 < 112
            assert x1 - x0 == y1 - y0 and 18 <= x1 - x0 <= 36
        for i, a in enumerate(boxes):
            for b in boxes[i + 1 :]:
                assert a[2] <= b[0] or b[2] <= a[0] or a[3] <= b[1] or b[3] <= a[1], row["id"]


def test_pixels_show_the_scene(rows600):
    # Each object's box centre has its colour (inside every shape), every pixel outside the boxes
    # is background, and the shapes fill a fair part of their boxes.
    path, rows = rows600
    for row in rows[:100]:
        with Image.open(path.parent / row["image"]) as image:
            pixels = np.asarray(image)
        painted = (pixels != BACKGROUND).any(axis=-1)  # [H, W]
        inside = np.zeros_like(painted)
        for obj in row["scene"]:
            x0, y0, x1, y1 = obj["box"]
            assert tuple(pixels[(y0 + y1) // 2, (x0 + x1) // 2]) == COLORS[obj["color"]], row["id"]
            inside[y0:y1, x0:x1] = True
        assert not painted[~inside].any(), row["id"]
        assert painted.sum() > 0.4 * inside.sum(), row["id"]


def test_every_token_is_in_the_vocabulary(rows600):
    _, rows = rows600
    assert all(w == w.lower() for w in VOCABULARY) and len(set(VOCABULARY)) == len(VOCABULARY)
    assert {str(d) for d in range(10)} <= set(VOCABULARY)
    seen = set()
    for row in rows:
        for text in (row["question"], row["answer"], *row["answers"]):
            seen |= {t.lower() for t in re.findall(r"\w+|[^\w\s]", text)}
    assert seen <= set(VOCABULARY), seen - set(VOCABULARY)
    # Nothing in VOCABULARY is dead weight beyond the digits: every other word is generated.
    assert set(VOCABULARY) - seen <= {str(d) for d in range(10)}
    assert set(SHAPES) | set(COLORS) <= seen


def _shared_question_types() -> list[str] | None:
    """The VQA v2 question types: the packaged copy, else the shared checkout's, else None."""
    package_copy = Path(synthetic.__file__).with_name(QUESTION_TYPES_NAME)
    shared = [p / "shared" / "data" / QUESTION_TYPES_NAME for p in Path(__file__).resolve().parents]
    for candidate in [package_copy, *shared]:
        if candidate.is_file():
            return [t.strip() for t in candidate.read_text().splitlines() if t.strip()]
    return None


def test_question_type_is_the_longest_vqa_v2_prefix(rows600):
    types = _shared_question_types()
    if types is None:
        pytest.skip(f"{QUESTION_TYPES_NAME} not found")
    _, rows = rows600
    for row in rows:
        question = row["question"].lower()
        matches = [t for t in types if question == t or question.startswith(t + " ")]
        assert row["question_type"] == max(matches, key=len), row["question"]


def test_relation_pairs_are_clearly_separated(rows600):
    # Disjoint columns with the gap in between (the helper above checks only disjointness).
    _, rows = rows600
    gap = 112 // 50
    for row in rows:
        if m := re.fullmatch(r"Is the (\w+ \w+) left or right of the (\w+ \w+)\?", row["question"]):
            boxes = {f"{o['color']} {o['shape']}": o["box"] for o in row["scene"]}
            a, b = boxes[m[1]], boxes[m[2]]
            assert a[2] + gap <= b[0] or b[2] + gap <= a[0]


@pytest.mark.parametrize("image_size", [32, 224])
def test_other_image_sizes_scale_the_objects(tmp_path, image_size):
    rows = _read(synthesize(tmp_path, n=30, seed=1, image_size=image_size))
    sides = {o["box"][2] - o["box"][0] for r in rows for o in r["scene"]}
    assert min(sides) >= 0.15 * image_size and max(sides) <= 0.32 * image_size
    with Image.open(tmp_path / rows[0]["image"]) as image:
        assert image.size == (image_size, image_size)


@pytest.mark.parametrize("kwargs", [{"n": 0}, {"image_size": 16}])
def test_bad_arguments_raise_before_writing(tmp_path, kwargs):
    with pytest.raises(UserError):
        synthesize(tmp_path / "out", **kwargs)
    assert not (tmp_path / "out").exists()


def test_unanswerable_questions_ask_about_an_object_that_is_not_there(tmp_path):
    rows = _read(synthesize(tmp_path / "u", n=40, seed=3, unanswerable=0.25))
    missing = [r for r in rows if r["answer"] == "unanswerable"]
    assert len(missing) == 10 and all(r["answers"] == ["unanswerable"] and r["answer_type"] == "other" for r in missing)
    asked = Counter(_family(r) for r in missing)
    assert asked == {"color": 5, "shape": 5}  # half each
    for r in missing:
        kinds = [(o["color"], o["shape"]) for o in r["scene"]]
        if m := re.fullmatch(r"What color is the (\w+)\?", r["question"]):
            assert r["question_type"] == "what color is the" and all(s != m[1] for _, s in kinds) and kinds
        else:
            m = re.fullmatch(r"What shape is the (\w+) object\?", r["question"])
            assert r["question_type"] == "what" and all(c != m[1] for c, _ in kinds) and kinds
    for r in rows:  # the other 30 are answerable, and their answers follow from the scene
        if r["answer"] != "unanswerable":
            assert _answer_from_scene(r["question"], r["scene"]) == r["answer"]


def test_unanswerable_zero_draws_the_same_files(tmp_path):
    plain = _tree_bytes(synthesize(tmp_path / "a", n=30, seed=5).parent)
    assert _tree_bytes(synthesize(tmp_path / "b", n=30, seed=5, unanswerable=0.0).parent) == plain
    assert _tree_bytes(synthesize(tmp_path / "c", n=30, seed=5, unanswerable=0.01).parent) == plain  # rounds to 0
    with pytest.raises(UserError, match=r"unanswerable must be a share in \[0, 1\]"):
        synthesize(tmp_path / "d", n=3, unanswerable=1.5)
    assert not (tmp_path / "d").exists()
