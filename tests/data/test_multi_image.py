"""Several images per question, and text-only questions, in every format the loader reads.

The same rows (three images, one, none, a missing second image, placeholders that fit and one
that does not) as JSONL, CSV (a JSON list in the cell), Parquet, rows in memory and, with the
images as bytes, Parquet, a datasets folder, an hf: repository and a stream's spill file.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import datasets
import pandas as pd
import pytest
from PIL import Image
from test_hub import offline_tmp_cache, write_repo  # noqa: F401  (the fixture: offline, cache in tmp)

from vqa_grpo.cli import main
from vqa_grpo.config import DataConfig
from vqa_grpo.config_load import load_config
from vqa_grpo.data.images import ImageLoader, StoredImage
from vqa_grpo.data.loader import SKIP_REASONS, load_examples, load_vqa
from vqa_grpo.data.rows import ListEntry
from vqa_grpo.data.spill import StreamSpill, spilled_rows
from vqa_grpo.data.table import ExampleTable
from vqa_grpo.errors import UserError

SIZES = {"a": (8, 6), "b": (10, 4), "c": (12, 12)}
LENIENT = DataConfig(max_skip_fraction=0.5)


def draw(folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name, size in SIZES.items():
        Image.new("RGB", size, "red").save(folder / f"{name}.png")


def png(name: str) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", SIZES[name], "blue").save(buf, format="PNG")
    return buf.getvalue()


def rows(image: callable, gone: object) -> list[dict]:
    """The rows of every format: ``image(name)`` is a cell, ``gone`` a bad one."""
    return [
        dict(id="three", images=[image("a"), image("b"), image("c")], question="Which is largest?", answer="c"),
        dict(id="one", images=[image("b")], question="What is it?", answer="b"),
        dict(id="none", images=[], question="What is two and two?", answer="4"),
        dict(id="bad", images=[image("a"), gone, image("c")], question="Which is gone?", answer="b"),
        dict(id="marked", images=[image("c"), image("a")], question="Is <image> larger than <image>?", answer="yes"),
        dict(id="unmarked", images=[image("a"), image("b")], question="Compare <image> with the other", answer="no"),
    ]


KEPT = {"three": [(8, 6), (10, 4), (12, 12)], "one": [(10, 4)], "none": [], "marked": [(12, 12), (8, 6)]}
PLACEHOLDER_DETAIL = "row 6 (id unmarked): the question holds 1 <image> and 0 <video> for 2 images and 0 video"


def check(examples, report, bad_reason: str) -> list[str]:
    """The kept examples' images in order; the report's counts; the bad entry's detail."""
    got = {e.id: [img.size for img in e.load_visuals()] for e in examples}
    assert got == KEPT
    by_id = {e.id: e for e in examples}
    assert (by_id["one"].image_loader is not None, by_id["one"].image_loaders) == (True, ())  # one image: as before
    assert by_id["three"].image_loader is None and len(by_id["three"].image_loaders) == 3
    assert (by_id["none"].num_images, by_id["none"].image_loader, by_id["none"].load_visuals()) == (0, None, [])
    assert report.skipped == {**dict.fromkeys(SKIP_REASONS, 0), bad_reason: 1, "placeholder_mismatch": 1}
    assert (report.rows, report.kept, report.max_images, report.videos) == (6, 4, 3, 0)
    assert report.samples["placeholder_mismatch"] == [PLACEHOLDER_DETAIL]
    return report.samples[bad_reason]


@pytest.mark.parametrize("fmt", ["jsonl", "csv", "parquet", "frame", "list"])
def test_image_paths_in_every_format(tmp_path, fmt):
    draw(tmp_path)
    data = rows(lambda name: f"{name}.png", "gone.png")
    if fmt == "jsonl":
        (tmp_path / "d.jsonl").write_text("".join(json.dumps(r) + "\n" for r in data))
    elif fmt == "csv":  # a JSON list in the cell
        pd.DataFrame([{**r, "images": json.dumps(r["images"])} for r in data]).to_csv(tmp_path / "d.csv", index=False)
    elif fmt == "parquet":
        pd.DataFrame(data).to_parquet(tmp_path / "d.parquet")
    if fmt in ("frame", "list"):
        cfg = DataConfig(image_root=str(tmp_path), max_skip_fraction=0.5, eval_fraction=0.0)
        loaded = load_vqa(cfg, frame=pd.DataFrame(data) if fmt == "frame" else data)
        examples, report = loaded.train, loaded.report
    else:
        examples, report = load_examples(str(next(tmp_path.glob("d.*"))), LENIENT)
    assert check(examples, report, "missing_image") == [f"row 4 (id bad): image 2 of 3: {tmp_path}/gone.png not found"]


def test_the_index_keeps_the_list_and_maps_it_again(tmp_path):
    draw(tmp_path)
    (tmp_path / "d.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows(lambda n: f"{n}.png", "gone.png")))
    first, _ = load_examples(str(tmp_path / "d.jsonl"), LENIENT)
    (index,) = (tmp_path / ".vqa_grpo_cache").glob("*.arrow")
    again, report = load_examples(str(tmp_path / "d.jsonl"), LENIENT)  # mapped from the index
    assert isinstance(again, ExampleTable) and not again.inline
    assert [ex.image_loaders for ex in again] == [ex.image_loaders for ex in first]
    assert again[0].image_loaders[2] == ImageLoader(tmp_path / "c.png", 1_000_000)
    check(again, report, "missing_image")
    assert list((tmp_path / ".vqa_grpo_cache").glob("*.arrow")) == [index]


def test_a_csv_path_that_starts_with_a_bracket_is_one_image(tmp_path):
    Image.new("RGB", (5, 7), "red").save(tmp_path / "[1].png")
    pd.DataFrame([dict(image="[1].png", question="Q?", answer="a")]).to_csv(tmp_path / "d.csv", index=False)
    (ex,), _ = load_examples(str(tmp_path / "d.csv"), DataConfig())
    assert ex.load_image().size == (5, 7)


def bytes_rows() -> list[dict]:
    return rows(lambda name: {"bytes": png(name), "path": None}, {"bytes": b"not a png", "path": None})


def bytes_check(examples, report) -> None:
    (detail,) = check(examples, report, "corrupt_image")
    assert detail.startswith("row 4 (id bad): image 2 of 3: embedded image (9 bytes): ")
    three = next(e for e in examples if e.id == "three")
    assert all(isinstance(loader.source, StoredImage) for loader in three.image_loaders)  # handles, not bytes


def test_image_bytes_in_parquet_and_the_index(tmp_path):
    pd.DataFrame(bytes_rows()).to_parquet(tmp_path / "d.parquet")
    examples, report = load_examples(str(tmp_path / "d.parquet"), LENIENT)
    bytes_check(examples, report)
    assert isinstance(examples, ExampleTable) and not examples.inline  # indexed: entries re-read from the file
    again, report = load_examples(str(tmp_path / "d.parquet"), LENIENT)
    bytes_check(again, report)


FEATURES = datasets.Features(
    {
        "id": datasets.Value("string"),
        "images": datasets.List(datasets.Image()),
        "question": datasets.Value("string"),
        "answer": datasets.Value("string"),
    }
)


def test_a_datasets_folder_and_a_frame_in_memory(tmp_path):
    ds = datasets.Dataset.from_list(bytes_rows(), features=FEATURES)
    ds.save_to_disk(str(tmp_path / "ds"))
    bytes_check(*load_examples(str(tmp_path / "ds"), LENIENT))
    loaded = load_vqa(DataConfig(max_skip_fraction=0.5, eval_fraction=0.0), frame=ds)
    check(loaded.train, loaded.report, "corrupt_image")


def test_an_hf_repository(tmp_path):
    write_repo(tmp_path / "repo", {"default": {"train": datasets.Dataset.from_list(bytes_rows(), features=FEATURES)}})
    cfg = load_config(None, [f"data.path=hf:{tmp_path / 'repo'}", "data.max_skip_fraction=0.5"]).data
    bytes_check(*load_examples(cfg.path, cfg))


def test_a_stream_spills_each_image_of_a_list():
    spill = StreamSpill()
    cells = [{"bytes": png("a"), "path": None}, {"bytes": png("c"), "path": None}]
    values = [{"images": cells}, {"images": [cells[1]]}, {"images": []}, {"image": cells[0]}]
    streamed = list(spilled_rows(values, "image", spill))
    assert len(spill) == 4 and streamed[2].reread_image is None
    assert spill(0) == cells and spill(1) == cells[1] and spill(3) == cells[0]
    second = ImageLoader(StoredImage(ListEntry(streamed[0].reread_image, 1)))()
    assert second.size == SIZES["c"]


def test_a_set_without_an_image_column_is_text_only(tmp_path):
    data = [dict(question="What is two and two?", answer="4"), dict(question="Name a prime.", answer="7")]
    (tmp_path / "d.jsonl").write_text("".join(json.dumps(r) + "\n" for r in data))
    examples, report = load_examples(str(tmp_path / "d.jsonl"), DataConfig())
    assert [(e.num_images, e.load_visuals()) for e in examples] == [(0, []), (0, [])]
    assert (report.kept, report.max_images, report.videos) == (2, 0, 0)
    assert report.table().splitlines()[-1] == "  images per question: none; every question is text-only"


ABSENT = [  # (images, video) of each row; None: a null cell, or no key at all in JSONL
    (["a.png", "b.png"], None),  # kept: 2 images
    (None, ["a.png", "b.png", "c.png"]),  # kept: a video, 0 images
    ([], None),  # kept: text-only, written so
    (None, None),  # missing_image: the set has an image column
    (["c.png"], []),  # kept: 1 image, no video
    (["a.png"], None),  # kept
]


def test_an_absent_image_cell_means_the_same_in_every_format(tmp_path):
    draw(tmp_path)
    data = [dict(id=f"r{i}", images=im, video=vid, question="Q?", answer="x") for i, (im, vid) in enumerate(ABSENT)]
    pd.DataFrame(data).to_parquet(tmp_path / "d.parquet")
    text = [{k: json.dumps(v) if isinstance(v, list) else v for k, v in r.items()} for r in data]
    pd.DataFrame(text).to_csv(tmp_path / "d.csv", index=False)  # a null: an empty cell
    keyless = [{k: v for k, v in r.items() if v is not None} for r in data]  # JSONL: no key for a null
    (tmp_path / "d.jsonl").write_text("".join(json.dumps(r) + "\n" for r in keyless))
    for name in ("d.parquet", "d.csv", "d.jsonl"):
        examples, report = load_examples(str(tmp_path / name), LENIENT)
        counts = [(e.id, e.num_images, e.video_loader is not None) for e in examples]
        assert counts == [("r0", 2, False), ("r1", 0, True), ("r2", 0, False), ("r4", 1, False), ("r5", 1, False)]
        assert report.samples["missing_image"] == [
            "row 4 (id r3): no image in the row; write [] for a question without one"
        ]


def test_rows_without_an_image_are_text_only_until_a_row_shows_the_column(tmp_path):
    draw(tmp_path)
    data = [dict(id="t1", question="Q?", answer="x"), dict(id="t2", question="Q?", answer="y")]
    (tmp_path / "t.jsonl").write_text("".join(json.dumps(r) + "\n" for r in data))
    assert [e.id for e in load_examples(str(tmp_path / "t.jsonl"), DataConfig())[0]] == ["t1", "t2"]
    typo = [
        *data,
        dict(id="i", images=["a.png"], question="Q?", answer="z"),
        dict(id="v", imgs=["a.png"], question="Q?", answer="z"),
    ]
    (tmp_path / "d.jsonl").write_text("".join(json.dumps(r) + "\n" for r in typo))  # a typo'd key: no image
    examples, report = load_examples(str(tmp_path / "d.jsonl"), DataConfig(max_skip_fraction=0.9))
    assert ([e.id for e in examples], [(r["row"], r["id"]) for r in report.rejected]) == (
        ["i"],
        [(1, "t1"), (2, "t2"), (4, "v")],
    )
    video_only = [
        dict(id="v", video=["a.png", "b.png"], question="Q?", answer="x"),
        dict(id="n", question="Q?", answer="y"),
    ]
    (tmp_path / "v.jsonl").write_text("".join(json.dumps(r) + "\n" for r in video_only))
    _, report = load_examples(str(tmp_path / "v.jsonl"), LENIENT)
    assert report.samples["missing_video"] == ["row 2 (id n): no video in the row; write [] for a question without one"]
    assert report.table().splitlines()[-1] == "  images per question: none; questions with a video: 1"


def test_odd_cells_are_skipped_with_their_type(tmp_path):
    draw(tmp_path)
    data = [
        dict(id="ok", images=["a.png", "b.png"], question="Q?", answer="x"),
        dict(id="nested", images=[["a.png", "b.png"]], question="Q?", answer="x"),
        dict(id="int", images=[3], question="Q?", answer="x"),
        dict(id="vid", video=5, question="Q?", answer="x"),
        dict(id="png", video="a.png", question="Q?", answer="x"),
        dict(id="frame", video=["a.png", "gone.png"], question="Q?", answer="x"),
    ]
    (tmp_path / "d.jsonl").write_text("".join(json.dumps(r) + "\n" for r in data))
    examples, report = load_examples(str(tmp_path / "d.jsonl"), DataConfig(max_skip_fraction=0.9))
    assert [e.id for e in examples] == ["ok"]
    kinds = "an image is a path, encoded bytes, a {'bytes', 'path'} mapping or a PIL image"
    assert report.samples["missing_image"] == [
        f"row 2 (id nested): unsupported cell type list: ['a.png', 'b.png']; {kinds}",
        f"row 3 (id int): unsupported cell type int: 3; {kinds}",
        f"row 6 (id frame): video frame 2 of 2: {tmp_path}/gone.png not found",
    ]
    assert report.samples["missing_video"] == [
        "row 4 (id vid): unsupported cell type int: 5; a video is a path, encoded bytes, a {'bytes', 'path'} "
        "mapping or a list of frame images"
    ]
    assert report.samples["corrupt_video"] == [
        f"row 5 (id png): {tmp_path}/a.png is a still image (png_pipe), not a video: put it in the image column"
    ]
    # the fix names each kind of entry once: a frame not found, then cells of a type no reader takes
    assert [line.split(maxsplit=2)[2] for line in report.table().splitlines() if "  missing_" in line] == [
        "video frame not found: check data.image_root and the frame paths in the video column; "
        "an image cell of a type no reader takes: write a path, bytes or a {'bytes', 'path'} mapping",
        "a video cell of a type no reader takes: write a file's path or bytes, or a list of frame images",
    ]
    frames_only = [
        dict(id="f", video=["a.png", "gone.png"], question="Q?", answer="x"),
        dict(id="k", images=["a.png"], question="Q", answer="x"),
    ]
    (tmp_path / "f.jsonl").write_text("".join(json.dumps(r) + "\n" for r in frames_only))
    table = load_examples(str(tmp_path / "f.jsonl"), DataConfig(max_skip_fraction=0.9))[1].table()
    assert (
        "missing_image         video frame not found: check data.image_root and the frame paths in the video column"
        in table
    )
    # a frame of a type no reader takes is named as such, not as a frame not found
    odd_frame = [dict(id="f", video=["a.png", 3], question="Q?", answer="x"), frames_only[1]]
    (tmp_path / "o.jsonl").write_text("".join(json.dumps(r) + "\n" for r in odd_frame))
    report = load_examples(str(tmp_path / "o.jsonl"), DataConfig(max_skip_fraction=0.9))[1]
    assert report.samples["missing_image"] == [
        f"row 1 (id f): video frame 2 of 2: unsupported cell type int: 3; {kinds}"
    ]
    fixes = [line.split(maxsplit=2)[2] for line in report.table().splitlines() if "  missing_" in line]
    assert fixes == [
        "a video frame of a type no reader takes: write each frame as a path, bytes or a {'bytes', 'path'} mapping"
    ]


def test_a_misnamed_image_column_is_named(tmp_path):
    draw(tmp_path)
    (tmp_path / "d.jsonl").write_text(json.dumps(dict(picture="a.png", question="Q?", answer="x")) + "\n")
    with pytest.raises(UserError) as e:
        load_examples(str(tmp_path / "d.jsonl"), DataConfig())
    assert str(e.value) == (
        f"{tmp_path}/d.jsonl (jsonl) has no column 'image' for the image (columns: answer, picture, question); "
        "column 'picture' holds images: map yours with data.columns.image=NAME"
    )


def test_inspect_shows_how_many_images_each_example_has(tmp_path, capsys):
    draw(tmp_path)
    (tmp_path / "d.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows(lambda n: f"{n}.png", "gone.png")))
    assert main(["data", "inspect", str(tmp_path / "d.jsonl"), "data.max_skip_fraction=0.5"]) == 0
    out = capsys.readouterr().out
    three = "      images: 3\n" + "".join(
        f"        {i}: {tmp_path}/{n}.png ({w}x{h} after loading)\n" for i, (n, (w, h)) in enumerate(SIZES.items(), 1)
    )
    assert three in out
    assert f"      image: {tmp_path}/b.png (10x4 after loading)\n" in out
    assert "  [none] What is two and two?\n" in out and "      no image (text-only)\n" in out
    assert "answer type: yes/no   question type: is\n" in out  # the placeholders are not the question's first word
    assert "images per question: at most 3; questions with a video: 0" in out


def test_a_misnamed_video_column_is_named_and_other_file_names_are_text(tmp_path):
    (tmp_path / "d.jsonl").write_text(json.dumps(dict(clip="a.mp4", question="Q?", answer="x")) + "\n")
    with pytest.raises(UserError, match=r"column 'clip' holds videos: map yours with data\.columns\.video=NAME$"):
        load_examples(str(tmp_path / "d.jsonl"), DataConfig())
    (tmp_path / "f.jsonl").write_text(json.dumps(dict(frames=["a.png", "b.png"], question="Q?", answer="x")) + "\n")
    with pytest.raises(UserError, match=r"column 'frames' holds videos: map yours with data\.columns\.video=NAME$"):
        load_examples(str(tmp_path / "f.jsonl"), DataConfig())
    (tmp_path / "e.jsonl").write_text(json.dumps(dict(source="notes.png", question="Q?", answer="x")) + "\n")
    (ex,), report = load_examples(str(tmp_path / "e.jsonl"), DataConfig())  # not named like an image column
    assert (ex.num_images, ex.fields, report.max_images) == (0, {"source": "notes.png"}, 0)


def test_a_template_holding_a_placeholder_is_refused():
    from vqa_grpo.data.prompts import check_template

    assert check_template("{question} <image> Answer.") == (
        "data.prompt_template='{question} <image> Answer.' holds <image>; drop it: the images and video go "
        "where the question's own <image>/<video> say, or first"
    )
    assert "holds <image> and <video>;" in check_template("<image><video>{question}")
    assert check_template("{question} Answer in one word.") is None


def test_a_conversational_prompt_keeps_its_image_positions(tmp_path):
    draw(tmp_path)

    def row(i: int, parts: list, images: list) -> dict:
        content = [{"type": "text", "text": p} if isinstance(p, str) else {"type": p[0]} for p in parts]
        return {"id": f"c{i}", "prompt": [{"role": "user", "content": content}], "images": images, "solution": "x"}

    data = [
        row(0, ["Is", ("image",), "brighter than", ("image",), "?"], ["a.png", "b.png"]),
        row(1, [("image",), ("image",), " Which is larger? "], ["a.png", "b.png"]),  # all first: plain text
        row(2, ["Compare", ("image",)], ["a.png", "b.png"]),  # 1 image part for 2 images
        row(3, [("image",), "Describe."], ["a.png", "b.png"]),  # leading, but 1 part for 2 images
        row(4, ["What is it?"], ["a.png", "b.png"]),  # no part: images first
    ]
    (tmp_path / "d.jsonl").write_text("".join(json.dumps(r) + "\n" for r in data))
    cfg = load_config(None, ["data.columns.answer=solution", "data.max_skip_fraction=0.5"]).data
    examples, report = load_examples(str(tmp_path / "d.jsonl"), cfg)
    assert [(e.id, e.question) for e in examples] == [
        ("c0", "Is <image> brighter than <image> ?"),
        ("c1", "Which is larger?"),
        ("c4", "What is it?"),
    ]
    assert report.samples["placeholder_mismatch"] == [
        "row 3 (id c2): the question holds 1 <image> and 0 <video> for 2 images and 0 video",
        "row 4 (id c3): the prompt's user turn holds 1 image and 0 video parts for 2 images and 0 video",
    ]
