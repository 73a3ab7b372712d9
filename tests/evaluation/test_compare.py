"""``vqa-grpo compare``: side-by-side metrics and the paired bootstrap, on hand-made evaluate outputs.

The evaluation directories are written by evaluate's own ``summarise`` and ``write_outputs`` from
per-question scores chosen here, so every expected difference is plain arithmetic.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from vqa_grpo.cli import main
from vqa_grpo.data.types import VQAExample
from vqa_grpo.errors import UserError
from vqa_grpo.evaluation.compare import compare_runs
from vqa_grpo.evaluation.evaluate import summarise, write_outputs
from vqa_grpo.evaluation.paired import paired_bootstrap

QTYPE = {"yes/no": "is the", "number": "how many", "other": "what color is the"}


def write_eval(path, rows: list[tuple[str, str, float, float]]):
    """An evaluate output dir from rows (id, answer type, vqa_accuracy, composite)."""
    examples = [VQAExample(i, f"question {i}?", ["a"], "a", t, QTYPE[t]) for i, t, _, _ in rows]
    scores = {"vqa_accuracy": np.array([r[2] for r in rows]), "composite": np.array([r[3] for r in rows])}
    preds = [f"p{i}" for i, *_ in rows]
    write_outputs(path, examples, preds, preds, scores, summarise(scores, examples, samples=50))
    return str(path)


@pytest.fixture
def two_runs(tmp_path):
    # shared ids q0..q5; A also has q7, B also has q9 (not shared, so not compared). B is written in
    # reverse order: pairs are matched by id, not by line.
    a = [
        ("q0", "yes/no", 1, 0.5),
        ("q1", "yes/no", 0, 0.5),
        ("q2", "yes/no", 0, 0.5),
        ("q3", "number", 1, 0.5),
        ("q4", "number", 0, 0.5),
        ("q5", "number", 0.3, 0.5),
        ("q7", "other", 1, 1),
    ]
    b = [
        ("q0", "yes/no", 1, 0.5),
        ("q1", "yes/no", 1, 0.2),
        ("q2", "yes/no", 0, 0.5),
        ("q3", "number", 1, 0.5),
        ("q4", "number", 1, 0.5),
        ("q5", "number", 0.6, 0.5),
        ("q9", "other", 0, 0),
    ]
    return write_eval(tmp_path / "a", a), write_eval(tmp_path / "b", b[::-1])


def test_differences_are_the_paired_means_over_shared_ids(two_runs):
    result = compare_runs(list(two_runs), samples=2000)
    d = result["differences"][0]
    assert d["n_shared"] == 6
    # vqa_accuracy B - A per shared question: [0, 1, 0, 0, 1, 0.3]
    assert d["overall"]["vqa_accuracy"]["mean"] == pytest.approx(2.3 / 6)
    assert d["per_answer_type"]["yes/no"]["vqa_accuracy"]["mean"] == pytest.approx(1 / 3)  # [0, 1, 0]
    assert d["per_answer_type"]["number"]["vqa_accuracy"]["mean"] == pytest.approx(1.3 / 3)  # [0, 1, 0.3]
    # composite: only q1 moves, 0.5 -> 0.2
    assert d["overall"]["composite"]["mean"] == pytest.approx(-0.3 / 6)
    assert d["per_answer_type"]["yes/no"]["composite"]["mean"] == pytest.approx(-0.1)
    assert d["per_answer_type"]["number"]["composite"]["mean"] == pytest.approx(0.0)
    assert d["per_question_type"]["how many"]["n"] == 3
    assert "other" not in d["per_answer_type"]  # q7 and q9 are in one run each
    for t in [d["overall"], *d["per_answer_type"].values()]:
        lo, hi = t["vqa_accuracy"]["ci95"]
        assert lo <= t["vqa_accuracy"]["mean"] <= hi
    # the side-by-side values are each run's own metrics.json (all 7 questions)
    assert result["overall"]["vqa_accuracy"] == pytest.approx([3.3 / 7, 4.6 / 7])
    assert result["per_answer_type"]["other"]["vqa_accuracy"] == [1.0, 0.0]
    assert result["metrics"] == ["vqa_accuracy", "composite"]


def test_p_value_small_for_a_clear_win_and_one_for_identical_runs(tmp_path):
    n = 50
    worse = write_eval(tmp_path / "worse", [(f"q{i}", "other", 0.0, 0.1) for i in range(n)])
    better = write_eval(tmp_path / "better", [(f"q{i}", "other", float(i % 10 != 0), 0.1) for i in range(n)])
    result = compare_runs([worse, better, worse], samples=2000)
    win, same = result["differences"]
    assert win["overall"]["vqa_accuracy"]["mean"] == pytest.approx(0.9)  # 45 of 50 go 0 -> 1
    assert win["overall"]["vqa_accuracy"]["p_value"] == pytest.approx(1 / 2001)  # no resample reaches 0
    assert same["overall"]["vqa_accuracy"] == {"mean": 0.0, "ci95": [0.0, 0.0], "p_value": 1.0}
    assert win["overall"]["composite"]["p_value"] == 1.0  # composite unchanged


def test_p_value_is_calibrated_on_a_borderline_difference():
    # 60 questions +1, 40 questions -1: mean 0.2, sd 0.98, standard error 0.098, z = 2.04, normal p = 0.041
    diffs = np.array([1.0] * 60 + [-1.0] * 40)[:, None]
    res = paired_bootstrap(diffs, samples=10_000, seed=0)
    assert res["mean"][0] == pytest.approx(0.2)
    assert 0.02 < res["p_value"][0] < 0.08
    assert res["ci95"][0][0] == pytest.approx(0.2 - 1.96 * 0.098, abs=0.03)
    again = paired_bootstrap(diffs, samples=10_000, seed=0)
    assert again["p_value"][0] == res["p_value"][0]  # seeded


def test_command_prints_a_table_and_json(two_runs, capsys):
    assert main(["compare", *map(str, two_runs)]) == 0
    out = capsys.readouterr().out
    assert "B - A" in out and "vqa_accuracy" in out and "yes/no" in out
    overall = next(line for line in out.splitlines() if line.startswith("overall") and "vqa_accuracy" in line)
    assert "+0.3833" in overall and overall.split()[2] == "6"
    assert main(["compare", *map(str, two_runs), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["differences"][0]["overall"]["vqa_accuracy"]["mean"] == pytest.approx(2.3 / 6)
    assert result["bootstrap"]["samples"] == 10_000 and result["bootstrap"]["seed"] == 0


def test_bad_input_is_one_line_user_error(two_runs, tmp_path):
    a, b = two_runs
    cases = [
        [a, str(tmp_path / "nope")],
        [a],
    ]
    (tmp_path / "empty").mkdir()
    cases.append([a, str(tmp_path / "empty")])
    only_metrics = tmp_path / "only_metrics"
    only_metrics.mkdir()
    (only_metrics / "metrics.json").write_text("{}")
    cases.append([a, str(only_metrics)])
    other = write_eval(tmp_path / "other", [("x1", "other", 1.0, 1.0)])
    cases.append([a, other])  # no shared ids
    for paths in cases:
        with pytest.raises(UserError) as info:
            compare_runs(paths)
        assert "\n" not in str(info.value)
