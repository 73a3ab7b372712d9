"""`evaluate --rephrase`: the tiny model answers each synthetic question in its other wordings;
metrics.json's ``rephrase`` is checked against a hand computation from the predictions files."""

from __future__ import annotations

import json

from vqa_grpo import cli
from vqa_grpo.data.rephrase import REWRITES, rephrasings
from vqa_grpo.evaluation.rephrase_check import format_rephrase

# A metric of your own (eval.metrics) that reports the id it was given: the rephrased questions
# must hand it each question's own id.
PROBE = "def id_number(completions, id, **kwargs):\n    return [float(int(i)) for i in id]\n"


def test_evaluate_rephrase_reports_each_rewrite_and_the_consistency(
    synth_dir, tiny_model_dir, tmp_path, capsys, monkeypatch
):
    out = tmp_path / "eval"
    args = ["evaluate", "--model", str(tiny_model_dir), "--data", str(synth_dir), "--out", str(out), "--rephrase"]
    quick = ["train.device=cpu", "train.progress=false", "data.max_eval_samples=6", "eval.max_new_tokens=3"]
    (tmp_path / "rephrase_probe.py").write_text(PROBE)
    monkeypatch.syspath_prepend(str(tmp_path))
    assert cli.main([*args, *quick, "eval.bootstrap_samples=50", "eval.metrics=[rephrase_probe:id_number]"]) == 0
    printed = capsys.readouterr().out
    assert "consistency" in printed
    assert (
        printed.splitlines()[-1]
        == f"wrote {out}/predictions_rephrased.jsonl, {out}/predictions.jsonl, {out}/metrics.json"
    )
    originals = {r["id"]: r for r in map(json.loads, (out / "predictions.jsonl").read_text().splitlines())}
    rephrased = [json.loads(s) for s in (out / "predictions_rephrased.jsonl").read_text().splitlines()]
    # every applicable rewrite of every question, in order, and nothing else
    expected = [(i, n, t) for i, r in originals.items() for n, t in rephrasings(r["question"])]
    assert [(r["id"], r["rephrase"], r["question"]) for r in rephrased] == expected
    assert [r["id_number"] for r in rephrased] == [float(i) for i, _, _ in expected]  # the real ids
    r = json.loads((out / "metrics.json").read_text())["rephrase"]
    asked = {r["id"] for r in rephrased}
    assert (r["n_questions"], r["n_variants"]) == (len(asked), len(rephrased)) and len(asked) >= 5
    answers = {i: {originals[i]["prediction"]} for i in asked}
    for row in rephrased:
        answers[row["id"]].add(row["prediction"])
    same = [i for i in asked if len(answers[i]) == 1]
    assert r["consistency"] == len(same) / len(asked)
    assert r["consistent_and_right"] == sum(originals[i]["vqa_accuracy"] == 1.0 for i in same) / len(asked)
    names = [k for k, v in r.items() if isinstance(v, dict)]
    assert names == [n for n in REWRITES if n in {row["rephrase"] for row in rephrased}]  # data/rephrase.py's order
    for name in names:
        rows = [row for row in rephrased if row["rephrase"] == name]
        acc = sum(row["vqa_accuracy"] for row in rows) / len(rows)
        diff = acc - sum(originals[row["id"]]["vqa_accuracy"] for row in rows) / len(rows)
        m = r[name]
        assert m["n"] == len(rows) and abs(m["vqa_accuracy"] - acc) < 1e-12
        d = m["difference"]["vqa_accuracy"]
        assert abs(d["mean"] - diff) < 1e-12 and d["ci95"][0] <= d["mean"] <= d["ci95"][1]
    # evaluated again without --rephrase: the earlier rephrased predictions go with the rest
    assert cli.main([*args[:-1], "--overwrite", *quick, "eval.bootstrap_samples=50"]) == 0
    assert not (out / "predictions_rephrased.jsonl").exists()
    assert "rephrase" not in json.loads((out / "metrics.json").read_text())


def test_rephrase_lines_carry_the_p_value_as_the_perturbed_ones_do():
    d = {"mean": -0.25, "ci95": [-0.5, 0.0], "p_value": 0.0784}
    r = {"n_questions": 4, "n_variants": 6, "consistency": 0.5, "consistent_and_right": 0.25}
    r["plural"] = {"n": 4, "difference": {"vqa_accuracy": d}, "vqa_accuracy": 0.5}
    assert format_rephrase(r).splitlines() == [
        "rephrased: 6 questions from 4 (--rephrase, data/rephrase.py)",
        "  plural         n     4  vqa_accuracy 0.5000  vs original -0.2500 (95% CI -0.5000, +0.0000, p 0.0784)",
        "  consistency 0.5000 (same answer under every wording), consistent and right 0.2500",
    ]
