"""`evaluate --perturb`: the questions answered again on perturbed images, metrics.json's
``robustness`` checked against a hand computation from the predictions files, the same images
(and answers) in a second evaluation, `compare` side by side, the report's plot, and bad input.

Model A is the demo's pretrained tiny base (it answers some questions right), model B the
untrained tiny model (it answers none right), so that the differences are not all zero.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from vqa_grpo import cli
from vqa_grpo.demo.base import BASE_DIR

QUICK = ["train.device=cpu", "train.cpu_threads=1", "train.progress=false", "data.max_eval_samples=6"]
QUICK += ["eval.max_new_tokens=6", "eval.bootstrap_samples=50"]
PASSES = ["gaussian_noise:5", "rotate:3"]


def evaluate(model, data, out, *more: str) -> int:
    return cli.main(["evaluate", "--model", str(model), "--data", str(data), "--out", str(out), *QUICK, *more])


def rows(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


# A metric of your own (eval.metrics) that reports the id it was given: the perturbed passes must
# hand it each question's own id.
PROBE = "def id_number(completions, id, **kwargs):\n    return [float(int(i)) for i in id]\n"


@pytest.fixture(scope="module")
def evaluated(synth_dir, tiny_model_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("robustness")
    (root / "robust_probe.py").write_text(PROBE)
    with pytest.MonkeyPatch.context() as mp:
        mp.syspath_prepend(str(root))
        for name, model in (("a", BASE_DIR), ("a_again", BASE_DIR), ("b", tiny_model_dir)):
            more = ["eval.metrics=[robust_probe:id_number]"] if name == "b" else []
            assert evaluate(model, synth_dir, root / name, "--perturb", ",".join(PASSES), *more) == 0
    return root


def hand_bootstrap(d: np.ndarray, samples: int) -> tuple[list[float], float]:
    """paired.paired_bootstrap's interval and p-value, written out: default_rng(0) draws
    [samples, n] indices in one chunk; p = (1 + #{|mean_b - mean| >= |mean|}) / (samples + 1)."""
    idx = np.random.default_rng(0).integers(0, len(d), size=(samples, len(d)))
    means = d[idx].mean(axis=1)
    p = (1 + int((np.abs(means - d.mean()) >= abs(d.mean()) - 1e-12).sum())) / (samples + 1)
    return [float(x) for x in np.percentile(means, [2.5, 97.5])], p


def test_metrics_hold_each_pass_and_its_paired_difference(evaluated, capsys):
    out = evaluated / "a"
    clean = {r["id"]: r for r in rows(out / "predictions.jsonl")}
    perturbed = rows(out / "predictions_perturbed.jsonl")
    # one row per question and pass, in eval.perturb's order, each naming its pass
    assert [(r["id"], r["perturbation"]) for r in perturbed] == [(i, p) for p in PASSES for i in clean]
    robustness = json.loads((out / "metrics.json").read_text())["robustness"]
    assert list(robustness) == PASSES
    differs = 0
    for p in PASSES:
        mine = [r for r in perturbed if r["perturbation"] == p]
        m = robustness[p]
        assert (m["n"], m["skipped"], m["seed"]) == (6, 0, 0)  # train.seed: the images' seed
        acc = np.array([r["vqa_accuracy"] for r in mine])
        d = acc - np.array([clean[r["id"]]["vqa_accuracy"] for r in mine])
        assert m["vqa_accuracy"] == pytest.approx(acc.mean(), abs=1e-12)
        assert m["composite"] == pytest.approx(np.mean([r["composite"] for r in mine]), abs=1e-12)
        diff = m["difference"]["vqa_accuracy"]
        ci, p_value = hand_bootstrap(d, 50)
        assert diff["mean"] == pytest.approx(d.mean(), abs=1e-12)
        assert diff["ci95"] == pytest.approx(ci, abs=1e-12) and diff["p_value"] == pytest.approx(p_value)
        differs += sum(r["raw"] != clean[r["id"]]["raw"] for r in mine)
    assert differs > 0  # the perturbed images changed some answers: the model saw them


def test_a_second_evaluation_sees_the_same_perturbed_images(evaluated):
    a, again = evaluated / "a", evaluated / "a_again"
    assert (a / "predictions_perturbed.jsonl").read_bytes() == (again / "predictions_perturbed.jsonl").read_bytes()
    assert json.loads((a / "metrics.json").read_text()) == json.loads((again / "metrics.json").read_text())


def test_compare_shows_both_models_robustness(evaluated, capsys):
    a, b = evaluated / "a", evaluated / "b"
    capsys.readouterr()
    assert cli.main(["compare", str(b), str(a), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    rob = result["robustness"]
    assert rob["metrics"] == ["vqa_accuracy"] and list(rob["passes"]) == PASSES
    ra, rb = (json.loads((x / "metrics.json").read_text())["robustness"] for x in (a, b))
    pa, pb = rows(a / "predictions_perturbed.jsonl"), rows(b / "predictions_perturbed.jsonl")
    for p in PASSES:
        entry = rob["passes"][p]
        assert entry["vqa_accuracy"] == [rb[p]["vqa_accuracy"], ra[p]["vqa_accuracy"]] and entry["n"] == [6, 6]
        first = {r["id"]: r["vqa_accuracy"] for r in pb if r["perturbation"] == p}
        d = np.array([r["vqa_accuracy"] - first[r["id"]] for r in pa if r["perturbation"] == p])
        (diff,) = entry["differences"]
        assert diff["n_shared"] == 6 and diff["vqa_accuracy"]["mean"] == pytest.approx(d.mean(), abs=1e-12)
    assert all(r["id_number"] == int(r["id"]) for r in pb) and len({r["id"] for r in pb}) == 6
    assert cli.main(["compare", str(b), str(a)]) == 0
    table = capsys.readouterr().out
    assert "robustness (evaluate --perturb)" in table
    line = next(x for x in table.splitlines() if x.startswith("rotate:3"))
    assert line.split()[:4] == [
        "rotate:3",
        "vqa_accuracy",
        f"{rb['rotate:3']['vqa_accuracy']:.4f}",
        f"{ra['rotate:3']['vqa_accuracy']:.4f}",
    ]


def test_compare_pairs_no_passes_perturbed_with_another_seed(evaluated, tmp_path, capsys):
    """Another train.seed perturbs other images: shown, not paired; no seed recorded: said so.
    The passes come in data/perturb.py's order of names whatever order each run holds them in."""
    a = evaluated / "a"
    for name, seed in (("seed7", 7), ("unknown", None)):
        shutil.copytree(a, tmp_path / name)
        metrics = json.loads((a / "metrics.json").read_text())
        rob = metrics["robustness"]
        for p in rob.values():
            p.pop("seed") if seed is None else p.update(seed=seed)
        metrics["robustness"] = dict(reversed(rob.items()))  # rotate:3 first
        (tmp_path / name / "metrics.json").write_text(json.dumps(metrics))
    capsys.readouterr()
    assert cli.main(["compare", str(a), str(tmp_path / "seed7"), "--json"]) == 0
    rob = json.loads(capsys.readouterr().out)["robustness"]
    assert rob["seeds"] == [0, 7] and list(rob["passes"]) == PASSES
    assert [d["n_shared"] for p in PASSES for d in rob["passes"][p]["differences"]] == [0, 0]
    assert cli.main(["compare", str(tmp_path / "seed7"), str(a)]) == 0
    table = capsys.readouterr().out
    assert (
        "robustness not paired: the runs perturbed the images with other seeds (A 7, B 0), so they saw other "
        "images; evaluate them again with the same train.seed" in table
    )
    assert cli.main(["compare", str(tmp_path / "unknown"), str(a)]) == 0
    table = capsys.readouterr().out
    assert "perturbation seeds: A not recorded, B 0; the differences assume the runs used the same" in table
    assert [x.split()[0] for x in table.splitlines() if x.startswith(("gaussian_noise:", "rotate:"))] == PASSES


def test_report_draws_accuracy_against_severity(evaluated, tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_text("")
    assert cli.main(["report", str(run), "--before", str(evaluated / "b"), "--after", str(evaluated / "a")]) == 0
    page = (run / "report.html").read_text()
    assert "<h2>Robustness to perturbed images</h2>" in page and "plots/robustness.png" in page
    assert (run / "plots" / "robustness.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert page.count("<td>gaussian_noise:5</td>") == 1 and page.count("<td>rotate:3</td>") == 1


@pytest.mark.parametrize(
    "bad, says",
    [
        (["--perturb", "fog"], "unknown perturbation 'fog'; the known ones are gaussian_blur, gaussian_noise, jpeg"),
        (["--perturb", "jpeg:6"], "severity 6 is outside 1-5"),
        (["eval.perturb=[crop:0]"], "eval.perturb: perturbation crop: severity 0 is outside 1-5"),
    ],
)
def test_bad_perturbation_is_one_line_and_writes_nothing(bad, says, synth_dir, tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "eval"
    assert evaluate(tiny_model_dir, synth_dir, out, *bad) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and says in err[0]
    assert not out.exists()


def test_evaluating_again_without_perturb_drops_the_old_passes(evaluated, tiny_model_dir, synth_dir, tmp_path, capsys):
    out = tmp_path / "eval"
    shutil.copytree(evaluated / "b", out)
    assert evaluate(tiny_model_dir, synth_dir, out, "--overwrite") == 0
    assert not (out / "predictions_perturbed.jsonl").exists()
    assert "robustness" not in json.loads((out / "metrics.json").read_text())
    capsys.readouterr()
    assert cli.main(["compare", str(evaluated / "a"), str(out)]) == 0
    assert "robustness not compared: eval evaluated without --perturb" in capsys.readouterr().out


def test_plot_layout_one_colour_per_run_shared_y_range_panels_in_table_order():
    from vqa_grpo.evaluation.robustness_view import plot_layout

    flat = {"rotate": ([0, 1], [0.0, 0.0]), "jpeg": ([0, 1], [0.0, 0.0])}
    after = {"crop": ([0, 1, 2], [0.6, 0.5, 0.4]), "jpeg": ([0, 1], [0.6, 0.5])}
    assert plot_layout({"before": flat, "after": after}) == (
        ["jpeg", "crop", "rotate"],
        {"before": "C0", "after": "C1"},
        (-0.03, 1.03),
    )
    # a metric beyond 0-1: the values' range, padded by 5% of it
    assert plot_layout({"run": {"jpeg": ([0, 1], [-1.0, 3.0])}})[2] == (-1.2, 3.2)
