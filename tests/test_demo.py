"""End to end: `vqa-grpo demo` at a tiny size (the real pipeline, the tiny model, a few steps)."""

from __future__ import annotations

import json

import pytest

from vqa_grpo.demo import format_summary, run_demo


@pytest.mark.slow
def test_demo_runs_every_stage_and_writes_the_summary(tmp_path):
    out = tmp_path / "demo"
    summary = run_demo(out, seed=1, n_questions=120, warm_steps=4, rl_steps=2, progress=False)

    on_disk = json.loads((out / "summary.json").read_text())
    assert on_disk == summary
    for key in ("accuracy_warm_start", "accuracy_grpo", "accuracy_sft_same_budget"):
        assert 0.0 <= summary[key] <= 1.0
    assert summary["n_eval"] == 24  # 20% of 120, stratified by answer type
    assert summary["wall_seconds"] > 0
    assert set(summary["per_answer_type"]["grpo"]) == {"yes/no", "number", "other"}
    # Every stage is an ordinary run directory; GRPO and the baseline ran the same number of steps.
    for stage in ("sft-warm-start", "grpo", "sft-same-budget"):
        assert (out / stage / "final" / "config.json").is_file()
        assert (out / stage / "config.yaml").is_file()
    steps = lambda name: [
        json.loads(x)["step"]
        for x in (out / name / "metrics.jsonl").read_text().splitlines()
        if "eval/vqa_accuracy" not in x
    ]
    assert steps("grpo") == steps("sft-same-budget") == [1, 2]
    assert steps("sft-warm-start") == [1, 2, 3, 4]
    # The accuracies are the evaluation's own numbers on the same held-out questions.
    for name in ("warm_start", "grpo", "sft_same_budget"):
        metrics = json.loads((out / "eval" / name / "metrics.json").read_text())
        assert metrics["n"] == summary["n_eval"]
        assert metrics["vqa_accuracy"] == summary[f"accuracy_{name}"]
    assert "+ GRPO (2 steps)" in format_summary(summary)
    report = (out / "grpo" / "report.html").read_text()
    assert "data:image/png;base64," in report and "http://" not in report
