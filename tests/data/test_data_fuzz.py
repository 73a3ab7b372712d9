"""Fuzzing: random CSV and JSONL rows (random strings, missing fields, wrong types) never raise out
of the loader except as a UserError, and every row read is either kept or skipped with a reason."""

from __future__ import annotations

import csv
import itertools
import json
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from vqa_grpo.config import DataConfig
from vqa_grpo.data.loader import SKIP_REASONS, load_examples
from vqa_grpo.data.types import BadExample
from vqa_grpo.errors import UserError

FIELDS = ["id", "image", "question", "answer", "answers", "question_type", "answer_type"]
IMAGE_NAMES = ["good.png", "bad.png", "missing.png", "../good.png", "/etc/passwd", "", "good.png\0x"]
SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
    st.sampled_from(IMAGE_NAMES + ["yes", "no", "2", "yes/no", "number", "[1, 2]", "['a'", "[[[[[[", "None"]),
)
VALUES = st.one_of(
    SCALARS,
    st.lists(SCALARS, max_size=4),
    st.dictionaries(st.sampled_from(["answer", "bytes", "path", "x"]), SCALARS, max_size=3),
)
ANY_ROW = st.dictionaries(st.sampled_from(FIELDS + ["extra"]), VALUES, max_size=8)
MOSTLY_GOOD_ROW = st.fixed_dictionaries(  # reaches the image checks and the kept path more often
    {"image": st.sampled_from(IMAGE_NAMES[:2]), "question": st.one_of(st.text(min_size=1, max_size=12), SCALARS)},
    optional={k: VALUES for k in ("id", "answer", "answers", "question_type", "answer_type")},
)
ROW = st.one_of(ANY_ROW, MOSTLY_GOOD_ROW)
ROWS = st.lists(ROW, min_size=0, max_size=8)
FUZZ = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
_counter = itertools.count()


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    """A folder with one good and one corrupt image; each fuzz example writes its own file in it."""
    root = tmp_path_factory.mktemp("fuzz")
    Image.new("RGB", (6, 6), "green").save(root / "good.png")
    (root / "bad.png").write_bytes(b"\x89PNG not really")
    return root


def load_or_user_error(path: Path, max_skip_fraction: float) -> None:
    try:
        examples, report = load_examples(str(path), DataConfig(max_skip_fraction=max_skip_fraction))
    except UserError as e:
        assert str(e).strip()
        return
    assert report.rows == report.kept + sum(report.skipped.values())
    assert set(report.skipped) == set(SKIP_REASONS)
    assert len(examples) == report.kept and len({ex.id for ex in examples}) == len(examples)
    for ex in examples:
        assert ex.question and ex.answer and all(ex.answers)
        try:
            assert ex.load_image().mode == "RGB"
        except BadExample:
            pass


@FUZZ
@given(rows=ROWS, max_skip=st.sampled_from([0.0, 1.0]))
def test_jsonl_rows(folder, rows, max_skip):
    path = folder / f"f{next(_counter)}.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))  # NaN and Infinity written as JSON extensions
    load_or_user_error(path, max_skip)


@FUZZ
@given(rows=ROWS, max_skip=st.sampled_from([0.0, 1.0]))
def test_csv_rows(folder, rows, max_skip):
    path = folder / f"f{next(_counter)}.csv"
    header = sorted({k for r in rows for k in r}) or ["id"]
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=header)
        writer.writeheader()
        writer.writerows({k: json.dumps(v) if isinstance(v, (list, dict)) else v for k, v in r.items()} for r in rows)
    load_or_user_error(path, max_skip)


@FUZZ
@given(
    text=st.text(alphabet=st.characters(codec="utf-8"), max_size=300),
    suffix=st.sampled_from([".csv", ".jsonl", ".json"]),
)
def test_arbitrary_text_files(folder, text, suffix):
    path = folder / f"f{next(_counter)}{suffix}"
    path.write_text(text, encoding="utf-8")
    load_or_user_error(path, 1.0)


@FUZZ
@given(data=st.binary(max_size=200))
def test_arbitrary_bytes_as_csv(folder, data):
    path = folder / f"f{next(_counter)}.csv"
    path.write_bytes(b"id,image,question,answer\n" + data)
    load_or_user_error(path, 1.0)
