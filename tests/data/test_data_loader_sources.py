"""Sources other than a table of image paths: a datasets data set saved to disk (images read
lazily), Parquet with embedded image bytes across row groups, and the VQA v2 questions and
annotations pair with COCO's image layouts.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image
from test_data_loader import LENIENT, by_id

from vqa_grpo.config import DataConfig
from vqa_grpo.data.images import StoredImage
from vqa_grpo.data.loader import load_examples
from vqa_grpo.errors import UserError


def test_datasets_saved_to_disk_reads_images_lazily(tmp_path):
    import datasets

    images = [Image.new("RGB", (10 + i, 8), (i * 50, 0, 0)) for i in range(4)]
    features = datasets.Features(
        {"image": datasets.Image(), "question": datasets.Value("string"), "answer": datasets.Value("string")}
    )
    cells = images + [{"bytes": b"not an image", "path": None}]
    ds = datasets.Dataset.from_dict(
        {"image": cells, "question": ["How many?"] * 5, "answer": ["1", "2", "3", "4", "5"]}, features=features
    )
    ds.save_to_disk(str(tmp_path / "ds"))
    examples, report = load_examples(str(tmp_path / "ds"), DataConfig(max_skip_fraction=LENIENT))
    assert (report.rows, report.kept, report.skipped["corrupt_image"]) == (5, 4, 1)
    assert all(isinstance(ex.image_loader.source, StoredImage) for ex in examples)
    assert [ex.load_image().size for ex in examples] == [(10, 8), (11, 8), (12, 8), (13, 8)]
    assert report.answer_types["number"] == 4

    datasets.DatasetDict({"train": ds, "validation": ds}).save_to_disk(str(tmp_path / "dd"))
    with pytest.raises(UserError, match="DatasetDict with splits train, validation"):
        load_examples(str(tmp_path / "dd"), DataConfig())
    assert load_examples(str(tmp_path / "dd" / "train"), DataConfig(max_skip_fraction=LENIENT))[1].kept == 4


def test_parquet_with_embedded_bytes_across_row_groups(tmp_path):
    import io

    import pyarrow as pa
    import pyarrow.parquet as pq

    def png(width: int) -> bytes:
        buf = io.BytesIO()
        Image.new("RGB", (width, 5)).save(buf, "PNG")
        return buf.getvalue()

    cells = [{"bytes": png(w), "path": None} for w in (3, 4, 5, 6)] + [{"bytes": b"junk", "path": None}]
    table = pa.table({"image": cells, "question": ["What?"] * 5, "answer": ["x"] * 5})
    pq.write_table(table, tmp_path / "d.parquet", row_group_size=2)
    examples, report = load_examples(str(tmp_path / "d.parquet"), DataConfig(max_skip_fraction=LENIENT))
    assert (report.kept, report.skipped["corrupt_image"]) == (4, 1)
    assert all(isinstance(ex.image_loader.source, StoredImage) for ex in examples)
    assert [ex.load_image().size[0] for ex in reversed(examples)] == [6, 5, 4, 3]  # random access works


def write_vqa_v2(folder: Path, images: Path) -> None:
    folder.mkdir(parents=True)
    (images / "val2014").mkdir(parents=True)
    Image.new("RGB", (30, 20)).save(images / "val2014" / "COCO_val2014_000000000042.jpg")  # COCO's zip layout
    Image.new("RGB", (12, 12)).save(images / "COCO_val2014_000000000007.jpg")  # flat layout
    questions = [
        {"question_id": 42001, "image_id": 42, "question": "How many cats are there?"},
        {"question_id": 42002, "image_id": 42, "question": "Is it sunny?"},
        {"question_id": 7000, "image_id": 7, "question": "What room is this?"},
        {"question_id": 99000, "image_id": 99, "question": "Where is it?"},  # no image 99
    ]
    answers = {
        42001: ["2"] * 7 + ["3"] * 3,
        42002: ["yes"] * 10,
        7000: ["kitchen"] * 9 + ["dining room"],
        99000: ["park"] * 10,
    }
    kinds = {
        42001: ("how many", "number"),
        42002: ("is it", "yes/no"),
        7000: ("what room is", "other"),
        99000: ("where is", "other"),
    }
    annotations = [
        {"question_id": q, "image_id": 0, "question_type": kinds[q][0], "answer_type": kinds[q][1],
         "multiple_choice_answer": a[0],
         "answers": [{"answer": x, "answer_confidence": "yes", "answer_id": i + 1} for i, x in enumerate(a)]}
        for q, a in answers.items()
    ]  # fmt: skip
    (folder / "v2_OpenEnded_mscoco_val2014_questions.json").write_text(
        json.dumps({"data_subtype": "val2014", "questions": questions})
    )
    (folder / "v2_mscoco_val2014_annotations.json").write_text(json.dumps({"annotations": annotations}))


def test_vqa_v2_pair(tmp_path):
    write_vqa_v2(tmp_path / "vqa", tmp_path / "coco")
    cfg = DataConfig(image_root=str(tmp_path / "coco"), max_skip_fraction=LENIENT)
    for path in (tmp_path / "vqa", tmp_path / "vqa" / "v2_OpenEnded_mscoco_val2014_questions.json"):
        examples, report = load_examples(str(path), cfg)
        assert (report.rows, report.kept, report.skipped["missing_image"]) == (4, 3, 1)
        ex = by_id(examples)
        assert list(ex) == ["42001", "42002", "7000"]
        assert (len(ex["42001"].answers), ex["42001"].answer, ex["42001"].answer_type) == (10, "2", "number")
        assert ex["7000"].question_type == "what room is"
        assert ex["42002"].load_image().size == (30, 20) and ex["7000"].load_image().size == (12, 12)
    (tmp_path / "vqa" / "v2_mscoco_val2014_annotations.json").unlink()
    with pytest.raises(UserError, match="annotations"):
        load_examples(str(tmp_path / "vqa"), cfg)
