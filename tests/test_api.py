"""The Python API (docs/python.md): the documented example runs as written, in-memory data of
every kind maps to the same examples, and the CLI goes through the same functions."""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd
import pytest

import vqa_grpo
from vqa_grpo.config import DataConfig
from vqa_grpo.data.loader import load_vqa

DOC = Path(__file__).resolve().parents[1] / "docs" / "python.md"


def test_the_documented_example_runs_as_written(tiny_model_dir, tmp_path, monkeypatch, capsys):
    code = re.search(r"```python\n(.*?)```", DOC.read_text(), re.S).group(1)
    (tmp_path / "tiny-model").symlink_to(tiny_model_dir)
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(code, str(DOC), "exec"), namespace)
    result, metrics = namespace["result"], namespace["metrics"]
    assert result.steps == 2 and (tmp_path / "runs" / "notebook" / "final" / "config.json").is_file()
    # The last evaluation under evaluate()'s names; metrics.jsonl's names still read the same value.
    assert result.metrics["step"] == 2 and set(metrics) >= set(result.metrics) - {"step"} >= {"vqa_accuracy"}
    assert (
        result.metrics["eval/vqa_accuracy"] == result.metrics.get("eval/vqa_accuracy") == result.metrics["vqa_accuracy"]
    )
    card = (tmp_path / "runs" / "notebook" / "best" / "README.md").read_text()  # best/ has its model card
    assert "## Metrics at step 2, the best train.eval_metric=vqa_accuracy" in card
    assert f"| vqa_accuracy | {result.metrics['vqa_accuracy']:.4f} |" in card
    assert Path(result.final_dir).resolve() == (tmp_path / "runs" / "notebook" / "final").resolve()
    assert metrics["per_answer_type"]["other"]["n"] == 4 and 0.0 <= metrics["vqa_accuracy"] <= 1.0
    printed = capsys.readouterr().out.splitlines()
    assert printed[0] == f"2 {result.final_dir}" and printed[-1] == "1.0"


def test_rows_in_memory_of_every_kind_give_the_same_examples(synth_dir):
    import datasets

    frame = pd.read_json(synth_dir / "data.jsonl", lines=True)
    cfg = DataConfig(eval_fraction=0.2, image_root=str(synth_dir))  # the image paths are relative
    want = load_vqa(cfg, seed=3, frame=frame)
    for data in (frame.to_dict("records"), datasets.Dataset.from_pandas(frame)):
        got = load_vqa(cfg, seed=3, frame=data)
        assert [(e.id, e.question, e.answers, e.answer_type) for e in got.train] == [
            (e.id, e.question, e.answers, e.answer_type) for e in want.train
        ]
        assert [e.id for e in got.eval] == [e.id for e in want.eval] and len(got.eval) == 40
    assert want.train[0].load_image().size == (112, 112)


def test_bad_rows_in_memory_are_skipped_and_bad_containers_refused(synth_dir):
    rows = pd.read_json(synth_dir / "data.jsonl", lines=True).to_dict("records")
    rows[0]["question"] = ""
    rows[1]["image"] = "missing.png"
    data = load_vqa(DataConfig(eval_fraction=0.0, image_root=str(synth_dir)), frame=rows)
    skipped = {k: n for k, n in data.report.to_dict()["skipped"].items() if n}
    assert data.report.kept == 198 and skipped == {"empty_question": 1, "missing_image": 1}
    with pytest.raises(vqa_grpo.UserError, match="data as a list must hold one dict per row, got a str"):
        load_vqa(DataConfig(), frame=["a.png"])
    with pytest.raises(
        vqa_grpo.UserError, match="data must be a pandas DataFrame, a datasets.Dataset or a list of dicts, got int"
    ):
        load_vqa(DataConfig(), frame=3)


def test_the_cli_calls_the_api(monkeypatch, tmp_path):
    from vqa_grpo.cli import main

    calls = []
    monkeypatch.setattr(vqa_grpo, "train", lambda cfg: calls.append(("train", cfg.train.max_steps)) or _Result())
    monkeypatch.setattr(vqa_grpo, "sft", lambda cfg: calls.append(("sft", cfg.train.max_steps)) or _Result())
    assert main(["train", "train.max_steps=3"]) == 0 and main(["sft", "train.max_steps=4"]) == 0
    assert calls == [("train", 3), ("sft", 4)]


class _Result:
    eval_history: list = []
    steps, wall_seconds, final_dir = 0, 0.0, "x"
