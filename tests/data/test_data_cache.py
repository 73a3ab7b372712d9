"""The loaded-examples index (data/cache.py), the examples as columns (data/table.py), a stream's
spill file (data/spill.py) and the cap on the evaluation during training (eval.max_examples)."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from vqa_grpo.cli import main
from vqa_grpo.config import ConfigError, DataConfig
from vqa_grpo.config_load import load_config
from vqa_grpo.data.images import StoredImage
from vqa_grpo.data.loader import LoadedData, cap_eval, load_examples, load_vqa
from vqa_grpo.data.spill import StreamSpill, spilled_rows
from vqa_grpo.data.synthetic import synthesize
from vqa_grpo.data.table import ExampleTable
from vqa_grpo.errors import UserError


def small_set(folder: Path, n: int = 12) -> Path:
    """``n`` synthetic questions at 32 px, plus one row whose image is missing (skipped)."""
    data = synthesize(folder, n=n, seed=0, image_size=32)
    with data.open("a") as f:
        f.write(json.dumps({"id": "lost", "image": "nowhere.png", "question": "What?", "answer": "x"}) + "\n")
    return data


def indexes(folder: Path) -> list[Path]:
    return sorted((folder / ".vqa_grpo_cache").glob("*.arrow"))


def as_tuples(examples) -> list[tuple]:
    return [
        (e.id, e.question, e.answers, e.answer, e.answer_type, e.question_type, e.fields, e.image_loader.source)
        for e in examples
    ]


def test_the_index_is_written_once_read_again_and_rebuilt_when_the_data_or_images_change(tmp_path):
    data = small_set(tmp_path)
    cfg = DataConfig(path=str(data), max_skip_fraction=0.5)
    first, first_report = load_examples(cfg.path, cfg)
    [index] = indexes(tmp_path)
    written = index.stat().st_mtime_ns
    again, again_report = load_examples(cfg.path, cfg)
    assert isinstance(again, ExampleTable) and indexes(tmp_path) == [index]
    assert index.stat().st_mtime_ns == written  # read, not written again
    plain, plain_report = load_examples(cfg.path, DataConfig(path=str(data), max_skip_fraction=0.5, cache_dir="none"))
    assert isinstance(plain, ExampleTable) and len(plain) == 12
    assert as_tuples(first) == as_tuples(again) == as_tuples(plain)
    assert [e.load_image().size for e in again] == [(32, 32)] * 12
    assert first_report.to_dict() == again_report.to_dict() == plain_report.to_dict()
    assert again_report.skipped["missing_image"] == 1 and again_report.samples == first_report.samples
    assert again_report.rejected == first_report.rejected and again_report.source == f"{data} (jsonl)"
    Image.new("RGB", (8, 8)).save(tmp_path / "nowhere.png")  # the missing image appears: built again
    found, found_report = load_examples(cfg.path, cfg)
    assert len(found) == 13 and found_report.skipped["missing_image"] == 0 and indexes(tmp_path) == [index]
    assert index.stat().st_mtime_ns != written
    with data.open("a") as f:  # a changed file: a new index, the old one removed
        f.write(json.dumps({"id": "new", "image": "images/000000.png", "question": "New?", "answer": "yes"}) + "\n")
    changed, _ = load_examples(cfg.path, cfg)
    assert len(changed) == 14 and changed[-1].id == "new"
    assert len(indexes(tmp_path)) == 1 and indexes(tmp_path) != [index]


def test_the_split_from_the_index_is_the_split_of_the_list(tmp_path):
    data = synthesize(tmp_path, n=40, seed=1, image_size=32)
    cfg = DataConfig(path=str(data), eval_fraction=0.25, max_train_samples=20)
    table = load_vqa(cfg, seed=3)
    rows = [json.loads(line) for line in data.read_text().splitlines()]
    in_memory = DataConfig(eval_fraction=0.25, max_train_samples=20, image_root=str(tmp_path))
    listed = load_vqa(in_memory, seed=3, frame=rows)
    assert isinstance(table.train, ExampleTable) and isinstance(listed.train, list)
    assert [e.id for e in table.train] == [e.id for e in listed.train] and len(table.train) == 20
    assert [e.id for e in table.eval] == [e.id for e in listed.eval] and len(table.eval) == 10
    assert table.eval == listed.eval  # the examples' fields compare equal
    assert [e.id for e in table.train + table.eval] == [e.id for e in listed.train + listed.eval]
    assert pickle.loads(pickle.dumps(table.train))[4] == table.train[4]


_READ = """
import json, sys
from vqa_grpo.config import DataConfig
from vqa_grpo.data.loader import load_vqa
d = load_vqa(DataConfig(path=sys.argv[1], max_skip_fraction=0.5), seed=0)
print(json.dumps([[e.id, e.answers, str(e.image_loader.source)] for e in d.eval] + [len(d.train)]))
"""


def test_two_processes_build_one_index_and_read_the_same_examples(tmp_path):
    data = small_set(tmp_path, n=30)
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    procs = [
        subprocess.Popen([sys.executable, "-c", _READ, str(data)], stdout=subprocess.PIPE, text=True, env=env)
        for _ in range(2)
    ]
    outs = [p.communicate(timeout=120)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0]
    assert outs[0] == outs[1] and json.loads(outs[0])[-1] == 27  # 30 kept, 3 held out
    assert len(indexes(tmp_path)) == 1


def test_a_stream_keeps_its_images_in_the_spill_file_not_in_memory(tmp_path):
    images = []
    for color in ("red", "green", "blue"):
        path = tmp_path / f"{color}.png"
        Image.effect_noise((64, 64), 40).convert("RGB").save(path)  # noise: no compression, ~12 kB
        images.append(path.read_bytes())
    stream = ({"id": str(i), "image": {"bytes": b, "path": None}} for i, b in enumerate(images))
    spill = StreamSpill()
    rows = list(spilled_rows(stream, "image", spill))
    assert [r.reread_image()["bytes"] for r in rows] == images
    assert Path(spill.path).stat().st_size == sum(map(len, images)) > 30_000
    assert len(pickle.dumps(spill)) < 1_000  # row -> (offset, length), no bytes
    assert [spill(i)["bytes"] for i in range(3)] == images


def test_a_streamed_hub_dataset_keeps_no_image_bytes(tmp_path, monkeypatch):
    import datasets
    from datasets import Dataset, Features, Value
    from datasets import Image as ImageFeature

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf_cache")
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    cells = []
    for i in range(4):
        Image.effect_noise((64, 64), 40 + i).convert("RGB").save(tmp_path / "x.png")
        cells.append({"bytes": (tmp_path / "x.png").read_bytes(), "path": None})
    rows = {"question": [f"Q{i}?" for i in range(4)], "answer": ["yes"] * 4, "image": cells}
    features = Features({"question": Value("string"), "answer": Value("string"), "image": ImageFeature()})
    (tmp_path / "repo" / "data").mkdir(parents=True)
    Dataset.from_dict(rows, features=features).to_parquet(str(tmp_path / "repo/data/train-00000-of-00001.parquet"))
    cfg = DataConfig(path=f"hf:{tmp_path / 'repo'}", streaming=True)
    examples, report = load_examples(cfg.path, cfg)
    assert report.kept == 4 and isinstance(examples, ExampleTable)
    assert all(isinstance(e.image_loader.source, StoredImage) for e in examples)
    assert len(pickle.dumps(list(examples))) < sum(len(c["bytes"]) for c in cells) / 10
    assert [e.load_image().tobytes() for e in examples] == [
        Image.open(__import__("io").BytesIO(c["bytes"])).convert("RGB").tobytes() for c in cells
    ]


def test_cap_eval_draws_as_max_eval_samples_and_says_so_once(tmp_path):
    data = synthesize(tmp_path, n=40, seed=1, image_size=32)
    loaded = load_vqa(DataConfig(path=str(data), eval_fraction=0.5), seed=0)
    capped, note = cap_eval(loaded, 5, DataConfig(), seed=0)
    drawn = load_vqa(DataConfig(path=str(data), eval_fraction=0.5, max_eval_samples=5), seed=0)
    assert capped.eval == drawn.eval and capped.train == loaded.train and len(capped.eval) == 5
    assert note == (
        "eval: 5 of the 20 evaluation questions, a seeded draw stratified by answer type (eval.max_examples=5); "
        "set eval.max_examples=null to evaluate on all of them"
    )
    assert cap_eval(drawn, 3, DataConfig(max_eval_samples=5), seed=0) == (drawn, None)  # the user's setting wins
    assert cap_eval(loaded, None, DataConfig(), seed=0) == (loaded, None)
    assert cap_eval(LoadedData([], loaded.eval, loaded.report), 20, DataConfig(), seed=0)[1] is None


def test_training_says_the_eval_cap_once(tmp_path, tiny_model_dir, capsys):
    data = synthesize(tmp_path / "data", n=24, seed=0, image_size=32)
    args = ["sft", f"model.name_or_path={tiny_model_dir}", f"data.path={data}", f"train.output_dir={tmp_path / 'run'}"]
    args += ["train.device=cpu", "train.cpu_threads=1", "train.progress=false", "train.max_steps=1"]
    args += ["data.eval_fraction=0.25", "eval.max_examples=2", "eval.max_new_tokens=1", "train.report_to=none"]
    assert main(args) == 0
    err = capsys.readouterr().err
    line = "eval: 2 of the 6 evaluation questions, a seeded draw stratified by answer type (eval.max_examples=2)"
    assert err.count(line) == 1


@pytest.mark.parametrize(
    ("key", "message"),
    [
        ("eval.max_examples=0", "eval.max_examples=0: must be >= 1 or null"),
        ("data.cache_dir=' '", "data.cache_dir is empty; give a folder, none, or null"),
    ],
)
def test_bad_cache_and_cap_settings_are_one_line(key, message):
    with pytest.raises(ConfigError, match="^" + message.replace("(", r"\(").replace(")", r"\)") + "$"):
        load_config(None, [key])


def test_a_cache_dir_that_cannot_be_written_is_one_line(tmp_path):
    data = synthesize(tmp_path, n=4, seed=0, image_size=32)
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    cfg = DataConfig(path=str(data), cache_dir=str(blocker / "cache"))
    with pytest.raises(UserError) as e:
        load_examples(cfg.path, cfg)
    assert str(e.value) == (
        f"data.cache_dir={str(blocker / 'cache')!r} cannot be written; set it to a folder you can write, or to "
        "none to read the data without an index"
    )
    assert not (tmp_path / ".vqa_grpo_cache").exists()


def test_fields_are_json_in_the_index_and_a_date_keeps_the_table_in_memory(tmp_path):
    import datetime

    import pandas as pd

    synthesize(tmp_path, n=2, seed=0, image_size=32)
    rows = [json.loads(line) for line in (tmp_path / "data.jsonl").read_text().splitlines()]
    for r in rows:
        r["meta"] = {"source": "synth", "boxes": [[1, 2.5], [3, 4]]}
    (tmp_path / "plain.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = DataConfig(path=str(tmp_path / "plain.jsonl"))
    load_examples(cfg.path, cfg)
    again, _ = load_examples(cfg.path, cfg)
    assert [e.fields["meta"] for e in again] == [{"source": "synth", "boxes": [[1, 2.5], [3, 4]]}] * 2
    assert [e.fields["scene"] for e in again] == [r["scene"] for r in rows]
    assert len(indexes(tmp_path)) == 1
    frame = pd.DataFrame(rows).assign(when=[datetime.datetime(2024, 1, d) for d in (1, 2)]).drop(columns="meta")
    frame.to_parquet(tmp_path / "dated.parquet")
    dated, _ = load_examples(str(tmp_path / "dated.parquet"), DataConfig(path=str(tmp_path / "dated.parquet")))
    assert [e.fields["when"] for e in dated] == [pd.Timestamp(2024, 1, 1), pd.Timestamp(2024, 1, 2)]
    assert len(indexes(tmp_path)) == 1  # JSON cannot hold the dates: no index (never a pickle)
