"""``compare`` on runs scored by a benchmark's metric (ANLS) and by different VQA conventions."""

from __future__ import annotations

import numpy as np
import pytest

from vqa_grpo.data.types import VQAExample
from vqa_grpo.evaluation.compare import compare_runs, format_comparison, load_eval_dir
from vqa_grpo.evaluation.evaluate import format_table, summarise, write_outputs
from vqa_grpo.evaluation.paired import paired_bootstrap


def write_run(path, anls: list[float], convention: str) -> str:
    """An evaluate output dir of four questions with the given ANLS scores (vqa_accuracy 0 throughout)."""
    examples = [VQAExample(f"q{i}", "what is written?", ["a"], "a", "other", "what is") for i in range(4)]
    scores = {"vqa_accuracy": np.zeros(4), "anls": np.array(anls)}
    metrics = summarise(scores, examples, samples=50)
    metrics["vqa_convention"] = convention
    write_outputs(path, examples, ["p"] * 4, ["p"] * 4, scores, metrics)
    return str(path)


def test_anls_is_compared_with_its_interval_and_per_type(tmp_path):
    a = write_run(tmp_path / "a", [0.5, 0.0, 1.0, 0.8], "official")
    b = write_run(tmp_path / "b", [1.0, 0.6, 1.0, 0.8], "official")
    result = compare_runs([a, b], samples=200)
    assert result["metrics"] == ["vqa_accuracy", "anls"]
    assert result["overall"]["anls"] == pytest.approx([0.575, 0.85])
    assert result["differences"][0]["overall"]["anls"]["mean"] == pytest.approx((0.5 + 0.6) / 4)
    assert result["per_answer_type"]["other"]["anls"] == pytest.approx([0.575, 0.85])
    table = format_comparison(result)
    assert "anls" in table and "vqa_accuracy as official" in table


def test_runs_of_different_conventions_leave_vqa_accuracy_out(tmp_path):
    a = write_run(tmp_path / "a", [0.5, 0.0, 1.0, 0.8], "official")
    b = write_run(tmp_path / "b", [1.0, 0.6, 1.0, 0.8], "lmms_eval")
    result = compare_runs([a, b], samples=200)
    assert result["metrics"] == ["anls"]
    assert [r["vqa_convention"] for r in result["runs"]] == ["official", "lmms_eval"]
    assert "vqa_accuracy not compared: the runs computed it by different conventions" in format_comparison(result)


def test_the_evaluate_table_shows_the_benchmark_metric():
    examples = [VQAExample(f"q{i}", "q?", ["a"], "a", "other") for i in range(2)]
    metrics = summarise({"vqa_accuracy": np.zeros(2), "composite": np.zeros(2), "anls": np.array([1.0, 0.5])}, examples)
    assert metrics["per_answer_type"]["other"]["ci95"]["anls"] == [0.5, 1.0]  # per type, as vqa_accuracy's
    head, _, overall, _ = format_table(metrics).splitlines()
    assert head.split() == ["subset", "n", "vqa_accuracy", "composite", "anls"]
    assert overall.split() == ["overall", "2", "0.0000", "0.0000", "0.7500"]


def test_the_report_names_the_convention(tmp_path):
    from vqa_grpo.evaluation.report_html import _types_section

    examples = [VQAExample("q0", "q?", ["a"], "a", "other")]
    metrics = summarise({"vqa_accuracy": np.ones(1)}, examples, samples=10)
    assert "(official convention: eval.vqa_convention)" in _types_section(None, metrics, None)
    metrics["vqa_convention"] = "lmms_eval"
    assert "(lmms_eval convention: eval.vqa_convention)" in _types_section(None, metrics, None)


def test_the_report_shows_the_headline_metric_with_its_interval_per_type(tmp_path):
    from vqa_grpo.evaluation.report_html import _types_section

    a = write_run(tmp_path / "a", [0.5, 0.0, 1.0, 0.8], "lmms_eval")
    b = write_run(tmp_path / "b", [1.0, 0.6, 1.0, 0.8], "lmms_eval")
    before, after = (load_eval_dir(p)[0] for p in (a, b))
    before["primary_metric"] = after["primary_metric"] = "anls"
    page = _types_section(before, after, compare_runs([a, b], samples=200)["differences"][0])
    assert page.index("<h3>Overall: anls</h3>") < page.index("<h3>Overall: vqa_accuracy</h3>")
    assert "<h3>Per answer type: anls</h3>" in page and "<h3>Per question type: anls</h3>" in page
    anls_overall = page.split("<h3>Overall: anls</h3>")[1].split("</table>")[0]
    assert "<td class=num>57.5</td>" in anls_overall and "<td class=num>85.0</td>" in anls_overall
    assert f"<td class=num>{_ci_text(after)}</td>" in anls_overall and "<td class=num>+27.5</td>" in anls_overall


def _ci_text(metrics: dict) -> str:
    low, high = metrics["ci95"]["anls"]
    return f"[{100 * low:.1f}, {100 * high:.1f}]"


def test_a_user_metric_none_leaves_its_row_out_of_that_metric_only(tmp_path):
    """A user metric that scored a row None (predictions.jsonl's null): compare leaves the row out
    of that metric's difference, as the perturbed and rephrased passes do, and keeps it for the rest."""
    examples = [VQAExample(f"q{i}", "is it?", ["yes"], "yes", "yes/no", "is it") for i in range(4)]
    paths = []
    for name, acc, mine in (("a", [1, 0, 0, 1], [0.5, np.nan, 0.5, 0.5]), ("b", [1, 1, 0, 1], [1.0, 1.0, np.nan, 0.5])):
        scores = {"vqa_accuracy": np.array(acc, dtype=float), "mine": np.array(mine)}
        write_outputs(tmp_path / name, examples, ["p"] * 4, ["p"] * 4, scores, summarise(scores, examples, samples=50))
        paths.append(str(tmp_path / name))
    result = compare_runs(paths, samples=200)
    assert result["metrics"] == ["vqa_accuracy", "mine"]
    d = result["differences"][0]["overall"]
    # mine: only q0 (0.5 -> 1.0) and q3 (0.5 -> 0.5) are scored by both; p from the same bootstrap
    p = float(paired_bootstrap(np.array([[0.5], [0.0]]), samples=200, seed=0)["p_value"][0])
    assert d["mine"] == {"mean": 0.25, "ci95": [0.0, 0.5], "p_value": p, "n": 2}
    assert d["n"] == 4 and d["vqa_accuracy"]["mean"] == 0.25 and "n" not in d["vqa_accuracy"]
    assert "mine" in format_comparison(result)
