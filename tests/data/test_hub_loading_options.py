"""Hub datasets beyond a preset's defaults: a stream gives the same examples as a download and
caches nothing, data.eval_split picks the eval set of the same repository, and without a preset
the columns come from data.columns.

Offline, on tmp repositories laid out as Hub dataset repositories (test_hub.py builds them and
holds the offline fixture).
"""

from __future__ import annotations

import pytest
from test_hub import aokvqa_repo, chartqa_repo, fields, hf, load, offline_tmp_cache, vqav2_repo, written  # noqa: F401

from vqa_grpo.config import ConfigError
from vqa_grpo.config_load import load_config
from vqa_grpo.data.images import StoredImage
from vqa_grpo.data.loader import load_vqa
from vqa_grpo.data.spill import StreamSpill
from vqa_grpo.errors import UserError


def test_streaming_yields_the_same_examples(tmp_path, offline_tmp_cache):
    root = vqav2_repo(tmp_path / "VQAv2")
    streamed, streamed_report = load(root, "data.split=validation", "data.preset=lmms-lab/VQAv2", "data.streaming=true")
    assert written(offline_tmp_cache) == []  # a stream is not cached on disk
    plain, plain_report = load(root, "data.split=validation", "data.preset=lmms-lab/VQAv2")
    assert [fields(e) + (e.id,) for e in streamed] == [fields(e) + (e.id,) for e in plain]
    assert streamed_report.to_dict() == plain_report.to_dict()
    assert [e.load_image().tobytes() for e in streamed] == [e.load_image().tobytes() for e in plain]
    assert "streaming" in streamed_report.source
    # a stream cannot be re-read: its images are read back from the spill file, never held as bytes
    assert all(isinstance(e.image_loader.source, StoredImage) for e in streamed)
    assert all(isinstance(e.image_loader.source.read.func, StreamSpill) for e in streamed)


def test_eval_path_reads_eval_split(tmp_path):
    root = aokvqa_repo(tmp_path / "A-OKVQA")
    cfg = load_config(None, [f"data.path={hf(root)}", f"data.eval_path={hf(root)}", "data.eval_split=validation",
                             "data.preset=HuggingFaceM4/A-OKVQA"]).data  # fmt: skip
    data = load_vqa(cfg)
    assert [e.id for e in data.train] == ["22MexNkBPpdZGX6sxbxVBH"]
    assert [(e.id, e.answer) for e in data.eval] == [("22jbM6gDxdaMaunuzgrsBB", "cigarette")]
    with pytest.raises(ConfigError, match="the eval set would be the training set; set data.eval_split"):
        load_config(None, [f"data.path={hf(root)}", f"data.eval_path={hf(root)}"])


def test_without_a_preset_the_columns_come_from_data_columns(tmp_path):
    root = chartqa_repo(tmp_path / "charts")
    with pytest.raises(UserError, match="has no column 'question' for the question .* data.columns.question=NAME"):
        load(root, "data.split=val")
    examples, _ = load(root, "data.split=val", "data.columns.question=query", "data.columns.answers=label")
    assert [(e.id, e.question, e.answers, e.question_type) for e in examples] == [
        ("row1", "Is the value of Favorable 38 in 2015?", ["Yes"], "is the"),
        ("row2", "How many bars are there?", ["6"], "how many"),
    ]
