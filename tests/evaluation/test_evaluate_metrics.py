"""``vqa-grpo evaluate`` with a benchmark metric and the lmms-eval convention, on the tiny model and
synthetic data; a metric the data cannot take is refused before anything is generated or written."""

from __future__ import annotations

import json

from vqa_grpo.cli import main
from vqa_grpo.rewards import anls, vqa_accuracy


def test_evaluate_reports_the_metric_and_the_convention(synth_dir, tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "eval"
    args = ["evaluate", "--model", str(tiny_model_dir), "--data", str(synth_dir), "--out", str(out)]
    overrides = ["data.max_eval_samples=8", "eval.batch_size=8", "eval.max_new_tokens=4"]
    assert main(args + overrides + ["eval.metrics=[anls]", "eval.vqa_convention=lmms_eval"]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert "anls" in printed[0]  # the table's head
    metrics = json.loads((out / "metrics.json").read_text())
    low, high = metrics["ci95"]["vqa_accuracy"]
    assert printed[-2] == (  # under the table: the headline with its interval, and the convention
        f"primary_metric vqa_accuracy {metrics['vqa_accuracy']:.4f} (95% CI {low:.4f}, {high:.4f}); "
        "vqa_accuracy as lmms_eval computes it (eval.vqa_convention)"
    )
    rows = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert metrics["vqa_convention"] == "lmms_eval" and len(rows) == metrics["n"] == 8
    for row in rows:  # each row's scores are the plain functions' on its cleaned answer
        assert row["anls"] == anls(row["prediction"], row["answers"])
        assert row["vqa_accuracy"] == vqa_accuracy(row["prediction"], row["answers"], convention="lmms_eval")
    assert metrics["anls"] == sum(r["anls"] for r in rows) / 8
    low, high = metrics["ci95"]["anls"]
    assert low <= metrics["anls"] <= high
    for name, sub in metrics["per_answer_type"].items():
        assert set(sub["ci95"]) == {"vqa_accuracy", "anls"}, name


def test_a_metric_the_data_cannot_take_is_refused(synth_dir, tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "eval"
    args = ["evaluate", "--model", str(tiny_model_dir), "--data", str(synth_dir), "--out", str(out)]
    assert main(args + ["data.max_eval_samples=4", "eval.metrics=[multiple_choice]"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: multiple_choice needs each example's answers as [choice letter, choice text]")
    assert err.count("\n") == 1 and not out.exists()
    assert main(args + ["eval.metrics=[bleu]"]) == 2  # neither a metric nor an import path
    assert "eval.metrics: 'bleu' is neither a metric (anls, relaxed_accuracy" in capsys.readouterr().err
