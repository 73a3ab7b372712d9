"""Every file format, one row of each bad kind, column mapping, splits and the errors users see.

Data sets saved by datasets, Parquet with embedded image bytes and the VQA v2 pair:
test_data_loader_sources.py.
"""

from __future__ import annotations

import json
import struct
import zlib
from collections import Counter
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image

from vqa_grpo.config import ColumnsConfig, DataConfig
from vqa_grpo.data.loader import SKIP_REASONS, LoadedData, LoadReport, load_examples, load_vqa
from vqa_grpo.errors import UserError

# ---------------------------------------------------------------------------------------------
# The fixture set: 8 good rows and one row of each of the 7 skip reasons.

GOOD = [
    dict(id="q1", image="images/red.png", question="Is the square red?", answer="yes", answers=["yes", "yes", "no"]),
    dict(id="q2", image="images/red.png", question="How many squares are there?", answer="1", answers=["1", "one"]),
    dict(
        id="q3",
        image="images/blue.jpg",
        question="What color is the square?",
        answer="blue",
        answers=["blue"],
        answer_type="other",
    ),
    dict(
        id="q4",
        image="images/blue.jpg",
        question="Is there a circle?",
        answer="no",
        answers=["no"],
        answer_type="yes/no",
    ),
    dict(id="q5", image="images/alpha.png", question="What shape is it?", answer="square", answers=["square"]),
    dict(id="q6", image="images/alpha.png", question="How many circles?", answer="", answers=["2", "2", "3"]),
    dict(id="q7", image="images/grey.jpg", question="Is it dark?", answer="no"),
    dict(
        id="q8",
        image="images/grey.jpg",
        question="What is on the table?",
        answer="a cup",
        answers=["a cup", "cup"],
        question_type="my type",
    ),
]
BAD = [
    dict(id="q9", image="images/nope.png", question="Is it there?", answer="no"),  # missing_image
    dict(id="q10", image="images/truncated.png", question="Is it whole?", answer="no"),  # corrupt_image
    dict(id="q11", image="images/red.png", question="   ", answer="yes"),  # empty_question
    dict(id="q12", image="images/red.png", question="What is it?", answer="", answers=[]),  # empty_answer
    dict(id="q13", image="../outside.png", question="Where is it?", answer="out"),  # outside_root
    dict(id="q1", image="images/red.png", question="Is it red again?", answer="yes"),  # duplicate_id
    dict(id="q15", image="images/bomb.png", question="How big is it?", answer="huge"),  # too_large
]
ROWS = GOOD + BAD
FIELDS = ["id", "image", "question", "answer", "answers", "question_type", "answer_type"]
EXPECTED_TYPES = {"yes/no": 3, "number": 2, "other": 3}  # q1 q4 q7 / q2 q6 / q3 q5 q8
LENIENT = 0.5  # the fixture skips 7 of 15 rows on purpose
NOT_IN_EVERY_FORMAT = {"question_not_text": 0, "answer_not_text": 0}  # JSON types: test_user_defects_a.py
# Placeholders and videos: tests/data/test_multi_image.py and tests/data/test_video.py.
NOT_IN_EVERY_FORMAT |= dict.fromkeys(("placeholder_mismatch", "missing_video", "corrupt_video"), 0)


def png_header_only(width: int, height: int) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", 20_000, 20_000, 8, 0, 0, 0, 0))
        + chunk(b"IEND", b"")
    )


def draw_images(folder: Path) -> None:
    """images/ under ``folder`` (PNG and JPEG, RGB, RGBA and grey), a bomb, a cut PNG; one PNG outside."""
    images = folder / "images"
    images.mkdir(parents=True)
    Image.new("RGB", (32, 24), (220, 20, 20)).save(images / "red.png")
    Image.new("RGB", (40, 30), (20, 20, 220)).save(images / "blue.jpg", quality=90)
    Image.new("RGBA", (20, 20), (0, 200, 0, 128)).save(images / "alpha.png")
    Image.new("L", (10, 30), 40).save(images / "grey.jpg")
    png = (images / "red.png").read_bytes()
    (images / "truncated.png").write_bytes(png[: len(png) // 2])
    (images / "bomb.png").write_bytes(png_header_only(20_000, 20_000))
    Image.new("RGB", (8, 8)).save(folder.parent / "outside.png")


def write(rows: list[dict], fmt: str, folder: Path) -> Path:
    """``rows`` as a ``fmt`` file in ``folder`` (made with its images); the path to load."""
    draw_images(folder)
    if fmt == "jsonl":
        path = folder / "data.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    elif fmt == "json":
        path = folder / "data.json"
        path.write_text(json.dumps({"version": 1, "data": rows}))
    elif fmt in ("csv", "imagefolder"):
        path = folder / ("metadata.csv" if fmt == "imagefolder" else "data.csv")
        frame = pd.DataFrame([{**r, "answers": json.dumps(r["answers"]) if "answers" in r else ""} for r in rows])
        if fmt == "imagefolder":
            frame = frame.rename(columns={"image": "file_name"})
        frame.to_csv(path, index=False)
    elif fmt == "parquet":
        path = folder / "data.parquet"
        pd.DataFrame(rows).to_parquet(path)
    else:
        raise ValueError(fmt)
    return path


def by_id(examples):
    return {ex.id: ex for ex in examples}


def assert_fixture_loaded(examples, report: LoadReport) -> None:
    assert (report.rows, report.kept) == (15, 8)
    assert report.skipped == dict.fromkeys(SKIP_REASONS, 1) | NOT_IN_EVERY_FORMAT
    assert report.answer_types == EXPECTED_TYPES
    ex = by_id(examples)
    assert list(ex) == [f"q{i}" for i in range(1, 9)]
    assert (ex["q1"].answers, ex["q1"].answer, ex["q1"].answer_type) == (["yes", "yes", "no"], "yes", "yes/no")
    assert (ex["q6"].answer, ex["q6"].answer_type) == ("2", "number")  # the most common of answers
    assert (ex["q7"].answers, ex["q7"].answer_type) == (["no"], "yes/no")  # answers default to [answer]
    assert ex["q3"].question_type == "what color is the"  # inferred from VQA v2's prefixes
    assert ex["q8"].question_type == "my type"  # given by the data
    sizes = {i: ex[i].load_image().size for i in ("q1", "q3", "q5", "q7")}
    assert sizes == {"q1": (32, 24), "q3": (40, 30), "q5": (20, 20), "q7": (10, 30)}
    assert all(ex[i].load_image().mode == "RGB" for i in ex)


@pytest.mark.parametrize("fmt", ["jsonl", "csv", "json", "parquet", "imagefolder"])
def test_each_file_format_keeps_good_rows_and_skips_one_of_each_bad_kind(tmp_path, fmt):
    path = write(ROWS, fmt, tmp_path / "set")
    examples, report = load_examples(str(path), DataConfig(max_skip_fraction=LENIENT))
    assert_fixture_loaded(examples, report)
    folder_examples, folder_report = load_examples(str(path.parent), DataConfig(max_skip_fraction=LENIENT))
    assert folder_report.to_dict() == report.to_dict()  # the folder finds the same file


def test_dataframe_with_image_root(tmp_path):
    draw_images(tmp_path / "set")
    cfg = DataConfig(image_root=str(tmp_path / "set"), max_skip_fraction=LENIENT, eval_fraction=0.0)
    data = load_vqa(cfg, frame=pd.DataFrame(ROWS))
    assert isinstance(data, LoadedData) and data.eval == []
    assert_fixture_loaded(data.train, data.report)


def test_report_table_and_dict(tmp_path):
    path = write(ROWS, "jsonl", tmp_path / "set")
    _, report = load_examples(str(path), DataConfig(max_skip_fraction=LENIENT))
    assert set(report.to_dict()) == {"rows", "kept", "skipped", "answer_types", "max_images", "videos"}
    assert (report.max_images, report.videos) == (1, 0)
    json.dumps(report.to_dict())
    table = report.table()
    assert "15 rows read, 8 kept, 7 skipped" in table
    for reason in set(SKIP_REASONS) - set(NOT_IN_EVERY_FORMAT):
        assert reason in table
    assert "row 9 (id q9)" in table  # the first rows of each reason are named
    assert "kept by answer type: yes/no 3, number 2, other 3" in table


def test_too_many_skips_stop_with_the_table(tmp_path):
    path = write(ROWS, "jsonl", tmp_path / "set")
    with pytest.raises(UserError) as info:
        load_examples(str(path), DataConfig())  # default max_skip_fraction=0.1; 7/15 skipped
    message = str(info.value)
    first = message.splitlines()[0]
    assert "7 of 15 rows" in first and "data.max_skip_fraction=0.1" in first
    assert "missing_image" in message and "data.image_root" in message


def test_allow_outside_root_keeps_that_row(tmp_path):
    path = write(ROWS, "jsonl", tmp_path / "set")
    _, report = load_examples(str(path), DataConfig(max_skip_fraction=LENIENT, allow_outside_root=True))
    assert (report.kept, report.skipped["outside_root"]) == (9, 0)


def test_examples_hold_paths_not_pixels(tmp_path):
    path = write(GOOD, "jsonl", tmp_path / "set")
    examples, _ = load_examples(str(path), DataConfig())
    assert all(isinstance(ex.image_loader.source, Path) for ex in examples)


def test_image_cap_comes_from_data_config(tmp_path):
    path = write(GOOD, "jsonl", tmp_path / "set")
    examples, _ = load_examples(str(path), DataConfig(max_image_pixels=192))
    assert by_id(examples)["q1"].load_image().size == (16, 12)  # 32x24 = 768 px -> 192 px


def test_synthetic_layout_loads_from_folder_or_file(tmp_path):
    folder = tmp_path / "syn"
    (folder / "images").mkdir(parents=True)
    rows = []
    for i in range(6):
        Image.new("RGB", (16, 16), (i * 40, 0, 0)).save(folder / "images" / f"{i:06d}.png")
        answer = ["yes", "3", "red"][i % 3]
        rows.append(
            {"id": f"{i:06d}", "image": f"images/{i:06d}.png", "question": "Is there a red circle?", "answer": answer,
             "answers": [answer], "question_type": "is there a", "answer_type": ["yes/no", "number", "other"][i % 3],
             "scene": {"objects": []}}
        )  # fmt: skip
    (folder / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    for path in (folder, folder / "data.jsonl"):
        data = load_vqa(DataConfig(path=str(path)), seed=0)
        assert data.report.kept == 6 and len(data.train) + len(data.eval) == 6


def test_column_mapping(tmp_path):
    draw_images(tmp_path / "set")
    path = tmp_path / "set" / "mine.csv"
    pd.DataFrame([{"img": r["image"], "q": r["question"], "a": r["answer"], "qid": r["id"]} for r in GOOD[:4]]).to_csv(
        path, index=False
    )
    with pytest.raises(UserError, match=r"no column 'image'.*data\.columns\.image=NAME"):
        load_examples(str(path), DataConfig())
    columns = ColumnsConfig(image="img", question="q", answer="a", id="qid")
    examples, report = load_examples(str(path), DataConfig(columns=columns))
    assert report.kept == 4 and [ex.id for ex in examples] == ["q1", "q2", "q3", "q4"]


def test_answers_in_every_shape(tmp_path):
    draw_images(tmp_path / "set")
    shapes = [
        ["a", "b", "a"],  # a list
        '["a", "b", "a"]',  # a JSON list in a string (CSV)
        "['a', 'b', 'a']",  # a Python list in a string (pandas' to_csv of a list)
        [{"answer": "a"}, {"answer": "b"}, {"answer": "a"}],  # VQA v2 entries
        {"answer": ["a", "b", "a"], "answer_confidence": ["yes"] * 3},  # datasets' Sequence of dicts
    ]
    rows = [{"id": str(i), "image": "images/red.png", "question": "What?", "answers": s} for i, s in enumerate(shapes)]
    cfg = DataConfig(image_root=str(tmp_path / "set"), eval_fraction=0.0)
    examples = load_vqa(cfg, frame=pd.DataFrame(rows)).train
    assert [(ex.answers, ex.answer) for ex in examples] == [(["a", "b", "a"], "a")] * len(shapes)
    single = load_vqa(
        cfg, frame=pd.DataFrame([{"image": "images/red.png", "question": "What?", "answers": "just one"}])
    )
    assert (single.train[0].answers, single.train[0].id) == (["just one"], "row1")


# ---------------------------------------------------------------------------------------------
# Splits.


def typed_frame(n_yes: int, n_num: int, n_other: int) -> pd.DataFrame:
    image = Image.new("RGB", (4, 4))
    kinds = [("yes", "yes/no")] * n_yes + [("2", "number")] * n_num + [("red", "other")] * n_other
    return pd.DataFrame(
        [
            {"id": f"e{i}", "image": image, "question": "What?", "answer": a, "answer_type": t}
            for i, (a, t) in enumerate(kinds)
        ]
    )


def test_split_is_seeded_and_stratified_by_answer_type():
    frame = typed_frame(20, 10, 10)
    data = load_vqa(DataConfig(eval_fraction=0.25), seed=0, frame=frame)
    # 10 eval examples: 5 / 2.5 / 2.5 by proportion; the spare one goes to "number" (listed first)
    assert Counter(ex.answer_type for ex in data.eval) == {"yes/no": 5, "number": 3, "other": 2}
    assert len(data.train) == 30
    ids = [ex.id for ex in data.train + data.eval]
    assert sorted(ids) == sorted(frame["id"]) and len(set(ids)) == 40
    again = load_vqa(DataConfig(eval_fraction=0.25), seed=0, frame=frame)
    assert [ex.id for ex in again.eval] == [ex.id for ex in data.eval]
    other_seed = load_vqa(DataConfig(eval_fraction=0.25), seed=1, frame=frame)
    assert [ex.id for ex in other_seed.eval] != [ex.id for ex in data.eval]


def test_max_samples_are_stratified_subsets_of_the_split():
    frame = typed_frame(20, 10, 10)
    full = load_vqa(DataConfig(eval_fraction=0.25), seed=3, frame=frame)
    small = load_vqa(DataConfig(eval_fraction=0.25, max_train_samples=20, max_eval_samples=4), seed=3, frame=frame)
    # train 15/7/8 -> 20: 10, 4.67, 5.33 -> 10/5/5; eval 5/3/2 -> 4: 2, 1.2, 0.8 -> 2/1/1
    assert Counter(ex.answer_type for ex in small.train) == {"yes/no": 10, "number": 5, "other": 5}
    assert Counter(ex.answer_type for ex in small.eval) == {"yes/no": 2, "number": 1, "other": 1}
    assert {ex.id for ex in small.train} <= {ex.id for ex in full.train}
    assert {ex.id for ex in small.eval} <= {ex.id for ex in full.eval}


def test_default_split_is_90_10_with_at_least_one_eval_example():
    data = load_vqa(DataConfig(), frame=typed_frame(50, 25, 25))
    assert (len(data.train), len(data.eval)) == (90, 10)
    tiny = load_vqa(DataConfig(), frame=typed_frame(2, 0, 1))
    assert (len(tiny.train), len(tiny.eval)) == (2, 1)


def test_eval_path_is_the_eval_set(tmp_path):
    train = write(GOOD, "jsonl", tmp_path / "train")
    held_out = write(GOOD[:3], "jsonl", tmp_path / "eval")
    data = load_vqa(DataConfig(path=str(train), eval_path=str(held_out), max_eval_samples=2))
    assert len(data.train) == 8 and len(data.eval) == 2
    assert (data.report.rows, data.report.kept) == (11, 11)


# ---------------------------------------------------------------------------------------------
# Errors: one line, naming the fix.


def two_files(folder: Path) -> Path:
    folder.mkdir()
    (folder / "a.jsonl").write_text("{}\n")
    (folder / "b.csv").write_text("id\n1\n")
    return folder


@pytest.mark.parametrize(
    "setup, cfg, match",
    [
        (lambda d: d / "nowhere", DataConfig(), "not found; set data.path"),
        (lambda d: write(GOOD, "jsonl", d), DataConfig(format="xml"), "data.format='xml' is not known"),
        (lambda d: two_files(d), DataConfig(), "several data files"),
        (lambda d: write(GOOD, "jsonl", d), DataConfig(image_root="/no/such/folder"), "data.image_root"),
        (
            lambda d: (d.mkdir(), (d / "x.jsonl").write_text('{"id": 1}\n[1, 2]\n'), d / "x.jsonl")[-1],
            DataConfig(),
            "line 2 is a JSON list",
        ),
        (
            lambda d: (d.mkdir(), (d / "x.jsonl").write_text('{"id": 1}\n{oops\n'), d / "x.jsonl")[-1],
            DataConfig(),
            "line 2 is not valid JSON",
        ),
        (
            lambda d: (d.mkdir(), (d / "x.csv").write_bytes(b"id,question\n1,\xff\xfe\n"), d / "x.csv")[-1],
            DataConfig(),
            "not UTF-8",
        ),
        (lambda d: (d.mkdir(), (d / "x.jsonl").write_text("\n\n"), d / "x.jsonl")[-1], DataConfig(), "holds no rows"),
        (
            lambda d: (d.mkdir(), (d / "x.txt").write_text("hi"), d / "x.txt")[-1],
            DataConfig(),
            "cannot tell the format",
        ),
        (
            lambda d: (d.mkdir(), (d / "x.json").write_text('{"a": 1}'), d / "x.json")[-1],
            DataConfig(),
            "must hold a list of objects",
        ),
    ],
)
def test_unusable_data_is_a_one_line_user_error(tmp_path, setup, cfg, match):
    path = setup(tmp_path / "d")
    with pytest.raises(UserError, match=match) as info:
        load_examples(str(path), cfg)
    assert "\n" not in str(info.value)


def test_unset_path_and_wrong_frame_type():
    with pytest.raises(UserError, match="data.path is not set"):
        load_vqa(DataConfig())
    with pytest.raises(UserError, match="pandas DataFrame, a datasets.Dataset or a list of dicts, got dict"):
        load_vqa(DataConfig(), frame={"question": "q"})
