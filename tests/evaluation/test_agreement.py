"""``vqa-grpo agreement``: the statistics against hand-computed values, judgments written as the
judge page exports them (test_judge_browser.py makes them in a real browser), and the refusals."""

from __future__ import annotations

import json
import shutil
import warnings

import numpy as np
import pytest
from test_judge import make_evals  # tests/evaluation is on sys.path (pytest's rootdir-relative import)

from vqa_grpo import cli
from vqa_grpo.evaluation.agreement_stats import agreement, average_ranks, kappa_rows, spearman_rows


def brevity(completions, **kwargs):
    """A user's reward function for --reward: 1 for an answer of one word, else 0."""
    return [1.0 if len(c.split()) == 1 else 0.0 for c in completions]


def test_ranks_kappa_and_spearman_by_hand():
    assert average_ranks(np.array([3, 1, 4, 1, 5])).tolist() == [[3, 1.5, 4, 1.5, 5]]
    # x ranks [1..5], y [5, 6, 7, 8, 7] ranks [1, 2, 3.5, 5, 3.5]: dx [-2, -1, 0, 1, 2], dy [-2, -1, .5, 2, .5];
    # rho = 8 / sqrt(10 * 9.5) = 0.820783 (scipy.stats.spearmanr gives 0.8207826816681233)
    rho = spearman_rows(np.array([[1.0, 2, 3, 4, 5]]), np.array([[5.0, 6, 7, 8, 7]]))
    assert rho[0] == pytest.approx(0.8207826816681233, abs=1e-12)
    # three categories: p_o = 4/6; p_a = (2, 2, 2)/6, p_b = (2, 3, 1)/6, p_e = 12/36; kappa = (2/3 - 1/3) / (2/3)
    # (sklearn.metrics.cohen_kappa_score gives 0.4999999999999999)
    acc, kappa = kappa_rows(np.array([0, 0, 1, 1, 2, 2]), np.array([0, 1, 1, 1, 2, 0]), 3)
    assert acc[0] == pytest.approx(4 / 6) and kappa[0] == pytest.approx(0.5)
    # undefined: one rater always says the same, and so does the other (p_e = 1); a constant side has no rho
    same = agreement(np.zeros(4, int), np.zeros(4, int), np.ones(4), np.arange(4.0), 2, samples=50)
    assert same["accuracy"]["value"] == 1.0 and same["kappa"]["value"] is None and same["spearman"]["value"] is None
    assert same["kappa"]["ci95"] is None and same["accuracy"]["ci95"] == [1.0, 1.0]
    a, b = np.array([1, 0, 1, 0, 1, 1, 0, 0]), np.array([1, 0, 0, 0, 1, 1, 1, 0])
    res = agreement(a, b, a * 1.0, b * 1.0, 2, samples=200)
    assert res == agreement(a, b, a * 1.0, b * 1.0, 2, samples=200)  # seeded
    lo, hi = res["kappa"]["ci95"]
    assert res["kappa"]["value"] == pytest.approx(0.5) and lo < 0.5 < hi  # p_o 6/8, p_e 1/2


@pytest.fixture(scope="module")
def page(tmp_path_factory, synth_dir):
    root = tmp_path_factory.mktemp("agreement")
    evals = make_evals(root, synth_dir)
    for mode in ("grade", "pairwise"):
        args = ["judge", evals["base"], evals["grpo"], "--data", evals["data"], "--out", str(root / mode)]
        assert cli.main([*args, "--mode", mode]) == 0
    return root, evals


def judgments(page, mode: str, judge: str, skip: int = 0) -> list[dict]:
    """The lines the page would export for the plan's labels (grade) or preferences (pairwise)."""
    root, plan = page[0], page[1]["plan"]
    key = json.loads((root / mode / "key.json").read_text())
    lines = []
    for q in key["questions"]:
        if mode == "grade":
            for s in q["slots"]:
                lines.append({"question": q["id"], "slot": s["slot"], "label": plan[(q["id"], s["answer"])]})
        else:  # the person prefers the answer the plan calls right
            best = [s["slot"] for s in q["slots"] if plan[(q["id"], s["answer"])] == "right"]
            lines.append({"question": q["id"], "slot": None, "label": best[0]})
    for line in lines:
        line.update(page=key["page"], mode=mode, judge=judge, time="2026-12-06T12:00:00.000Z")
    return lines[skip:]


def write(path, lines: list) -> str:
    path.write_text("".join((x if isinstance(x, str) else json.dumps(x)) + "\n" for x in lines))
    return str(path)


def run(capsys, *args) -> tuple[int, dict | str, str]:
    capsys.readouterr()
    code = cli.main(["agreement", *args])
    out, err = capsys.readouterr()
    return code, json.loads(out) if "--json" in args and code == 0 else out, err


def test_two_judges_their_ceiling_and_a_users_function(page, tmp_path, capsys):
    root, evals = page
    ids = evals["ids"]
    ada = write(tmp_path / "ada.jsonl", judgments(page, "grade", "Ada"))
    # Bob calls the shared answer to question 1 and the "close guess" wrong
    bob_lines = judgments(page, "grade", "Bob")
    for line in bob_lines:
        if line["question"] in (ids[1], ids[2]) and line["label"] in ("partly", "right"):
            line["label"] = "wrong"
    bob = write(tmp_path / "bob.jsonl", bob_lines)
    code, result, _ = run(
        capsys, ada, bob, "--judge-dir", str(root / "grade"), "--json", "--reward", "test_agreement:brevity"
    )
    assert code == 0 and result["judges"] == ["Ada", "Bob"] and result["judgments"] == 10
    # people's right/wrong, Ada [1, 0, 1, 0, 1], Bob [1, 0, 0, 0, 0]: accuracy 3/5; p_e = .6 * .2 + .4 * .8 = .44,
    # kappa = (.6 - .44) / .56; rho of (1, 0, .5, 0, 1) and (1, 0, 0, 0, 0): 3.75 / sqrt(9 * 5)
    (ceiling,) = result["judges_agreement"]
    assert ceiling["judges"] == ["Ada", "Bob"] and ceiling["n"] == 5
    assert ceiling["accuracy"]["value"] == pytest.approx(0.6)
    assert ceiling["kappa"]["value"] == pytest.approx(0.16 / 0.56)
    assert ceiling["spearman"]["value"] == pytest.approx(3.75 / 45**0.5)
    # VQA accuracy [1, 0, 1, 0, 0] against both: Ada 4 of 5, Bob 4 of 5
    assert result["metrics"]["vqa_accuracy"]["n"] == 10
    assert result["metrics"]["vqa_accuracy"]["accuracy"]["value"] == pytest.approx(0.8)
    assert result["thresholds"]["semantic"] == 0.8 and result["thresholds"]["vqa_accuracy"] == 0.5
    assert "brevity" in result["metrics"] and "anls" in result["metrics"] and "answer_type" in result["metrics"]
    assert any(n.startswith("multiple_choice: left out") for n in result["notes"])


def test_judges_with_nothing_in_common_get_a_note_not_a_warning(page, tmp_path, capsys):
    root = page[0]
    ada = write(tmp_path / "ada.jsonl", judgments(page, "grade", "Ada")[:3])  # answers 1-3
    bob = write(tmp_path / "bob.jsonl", judgments(page, "grade", "Bob", skip=3))  # answers 4-5
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # numpy's "Mean of empty slice" would fail here
        code, result, _ = run(capsys, ada, bob, "--judge-dir", str(root / "grade"), "--json")
    assert code == 0 and result["judgments"] == 5 and result["judges_agreement"] == []
    assert result["notes"][-1] == "judges Ada and Bob judged nothing in common: no ceiling from them"


def test_pairwise(page, tmp_path, capsys):
    root, _ = page
    path = write(tmp_path / "pair.jsonl", judgments(page, "pairwise", "Ada"))
    code, result, _ = run(capsys, path, "--judge-dir", str(root / "pairwise"), "--json")
    assert code == 0 and result["mode"] == "pairwise" and result["judged_units"] == 2
    # VQA accuracy ties the two wrong answers of question 2, which the person does not: 1 of 2
    assert result["metrics"]["vqa_accuracy"]["accuracy"]["value"] == 0.5
    assert result["metrics"]["semantic"]["accuracy"]["value"] == 1.0
    assert [(m["wins"], m["ties"], m["losses"]) for m in result["models"]] == [(1, 0, 1), (1, 0, 1)]
    # the evaluations as the user gave them (absolute here: below no working directory), not "../base"
    assert [m["eval"] for m in result["models"]] == [str(root / "base"), str(root / "grpo")]


def test_half_judged_and_a_corrupt_line_are_scored_on_what_is_judged(page, tmp_path, capsys):
    root, _ = page
    lines = judgments(page, "grade", "Ada", skip=3)
    path = write(tmp_path / "half.jsonl", ["{not json", *lines, json.dumps({"label": "maybe"})])
    code, out, err = run(capsys, path, "--judge-dir", str(root / "grade"))
    assert code == 0 and err == ""
    assert "2 judgments by 1 judge(s) (Ada); 2 of 5 answers judged" in out
    assert "2 line(s) that are not a judgment skipped (lines 1, 4)" in out
    assert "vqa_accuracy" in out and "per question type" in out


@pytest.mark.parametrize(
    "case, message",
    [
        ("empty", "no judgments in"),
        ("other page", "is from judge page 0123456789abcdef (grade), not page"),
        ("a pairwise page's file", "(pairwise), not page"),
        ("a pairwise page's file after a grade one", "ada.jsonl line 1 is from judge page"),
        ("unknown question", "question 'nowhere' slot 'A' is not on page"),
        ("no slot", "slot None is not on page"),
        ("no key", "has no key.json: give the --out folder of `vqa-grpo judge`"),
        ("changed evaluation", "no longer holds the answer the page showed"),
        ("bad threshold", "--threshold 'semantic': give NAME=VALUE"),
        ("unknown metric", "--threshold for bleu: not a metric here"),
    ],
)
def test_bad_input_is_one_line(page, tmp_path, capsys, case, message):
    root, evals = page
    judge_dir, extra = root / "grade", []
    lines = judgments(page, "grade", "Ada")
    if case == "empty":
        lines = []
    elif case == "other page":
        lines[1]["page"] = "0123456789abcdef"
    elif case == "a pairwise page's file":  # its labels (A, B, tie) are no grades: the page is named
        lines = judgments(page, "pairwise", "Ada")
    elif case == "a pairwise page's file after a grade one":  # on the pairwise page: the grade file
        extra = [
            write(tmp_path / "pw.jsonl", judgments(page, "pairwise", "Ada")),
            "--judge-dir",
            str(root / "pairwise"),
        ]
        path = write(tmp_path / "ada.jsonl", lines)
        code, out, err = run(capsys, path, *extra)
        assert code == 2 and out == "" and err.startswith("error: ") and message in err and err.count("\n") == 1
        assert "(grade), not page" in err and "(pairwise) of" in err
        return
    elif case == "unknown question":
        lines[2].update(question="nowhere", slot="A")
    elif case == "no slot":
        lines[0]["slot"] = None
    elif case == "no key":
        judge_dir = tmp_path
    elif case == "changed evaluation":  # a copy of the page and the evaluations, one answer rewritten
        shutil.copytree(root, tmp_path / "copy", ignore=shutil.ignore_patterns("pairwise"))
        judge_dir = tmp_path / "copy" / "grade"
        preds = tmp_path / "copy" / "grpo" / "predictions.jsonl"
        preds.write_text(preds.read_text().replace('"prediction": "nothing"', '"prediction": "something"'))
    elif case == "bad threshold":
        extra = ["--threshold", "semantic"]
    elif case == "unknown metric":
        extra = ["--threshold", "bleu=0.3"]
    path = write(tmp_path / "j.jsonl", lines)
    code, out, err = run(capsys, path, "--judge-dir", str(judge_dir), *extra)
    assert code == 2 and out == "" and err.startswith("error: ") and message in err and err.count("\n") == 1
