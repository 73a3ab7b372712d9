"""What a user met that was silent or misleading, each through the command or the API as they met it.

The report and compare cases use evaluate outputs written by evaluate's own ``summarise`` and
``write_outputs``; the evaluate and train cases run the tiny Qwen2-VL of tests/conftest.py.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from vqa_grpo.cli import main
from vqa_grpo.data.types import VQAExample
from vqa_grpo.evaluation.compare import compare_runs
from vqa_grpo.evaluation.evaluate import summarise, write_outputs


def refused(capsys, args: list[str]) -> str:
    """The one-line error of a refused command (exit 2, no traceback)."""
    rc = main(args)
    err = capsys.readouterr().err
    assert rc == 2, err
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    return err


def write_eval(path: Path, accuracy: list[float]) -> str:
    """An evaluate output dir: question i is of answer type i % 3, its VQA accuracy ``accuracy[i]``."""
    types = ["yes/no", "number", "other"]
    examples = [VQAExample(f"q{i}", f"q {i}?", ["a"], "a", types[i % 3], f"t{i % 2}") for i in range(len(accuracy))]
    scores = {"vqa_accuracy": np.array(accuracy, dtype=float), "composite": np.array(accuracy, dtype=float) / 2}
    preds = [f"p{i}" for i in range(len(accuracy))]
    write_outputs(path, examples, preds, preds, scores, summarise(scores, examples, samples=50))
    return str(path)


# ---- report: a directory that is not a run is refused, nothing written --------------------------


def test_report_on_a_directory_that_is_not_a_run_writes_nothing(tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("mine")
    err = refused(capsys, ["report", str(tmp_path)])
    assert "neither config.yaml nor metrics.jsonl" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]


def test_report_out_that_is_a_directory_is_refused_before_writing(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_text('{"step": 1, "loss": 0.5}\n')
    err = refused(capsys, ["report", str(run), "--out", str(tmp_path)])
    assert "is a folder" in err
    assert sorted(p.name for p in run.iterdir()) == ["metrics.jsonl"]


# ---- report and compare: the same pair gives the same p-values ----------------------------------


def test_report_and_compare_give_the_same_p_values(tmp_path, capsys):
    rng = np.random.default_rng(3)
    before = rng.integers(0, 2, 40).astype(float)
    after = np.where(rng.random(40) < 0.3, 1.0, before)  # some questions gained, none lost
    a, b = write_eval(tmp_path / "before", list(before)), write_eval(tmp_path / "after", list(after))
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text("train:\n  max_steps: 1\n")

    assert main(["compare", a, b, "--json"]) == 0
    diff = json.loads(capsys.readouterr().out)["differences"][0]
    assert main(["report", str(run), "--before", a, "--after", b]) == 0
    page = (run / "report.html").read_text()
    shown = re.findall(r"<td class=num>(\d\.\d{4})</td></tr>", page)  # the p column ends each row
    subsets = [diff["overall"], *diff["per_answer_type"].values(), *diff["per_question_type"].values()]
    expected = [f"{t['vqa_accuracy']['p_value']:.4f}" for t in subsets]
    assert shown == expected and len(expected) == 6
    # The test tells the two apart: 2,000 resamples (the report's number before) give other values.
    old = compare_runs([a, b], samples=2000)["differences"][0]["overall"]["vqa_accuracy"]["p_value"]
    assert f"{old:.4f}" != expected[0]


# ---- evaluate: an earlier evaluation, an --out that is a file, data.max_eval_samples ------------


def evaluate_args(model, data, out, *more: str) -> list[str]:
    quick = ["train.device=cpu", "train.progress=false", "eval.max_new_tokens=2", "eval.bootstrap_samples=10"]
    return ["evaluate", "--model", str(model), "--data", str(data), "--out", str(out), *quick, *more]


def test_evaluate_keeps_an_earlier_evaluation_unless_told_and_draws_max_eval_samples(
    synth_dir, tiny_model_dir, tmp_path, capsys
):
    from vqa_grpo.config import DataConfig
    from vqa_grpo.data.loader import load_vqa

    out = tmp_path / "eval"
    assert main(evaluate_args(tiny_model_dir, synth_dir, out, "data.max_eval_samples=3")) == 0
    ids = [json.loads(line)["id"] for line in (out / "predictions.jsonl").read_text().splitlines()]
    # The draw train makes of its eval set from the same file (data.eval_path), seed train.seed=0.
    drawn = load_vqa(DataConfig(path=str(synth_dir), eval_path=str(synth_dir), max_eval_samples=3), seed=0).eval
    assert ids == [e.id for e in drawn] and len(ids) == 3
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    capsys.readouterr()

    err = refused(capsys, evaluate_args(tiny_model_dir, synth_dir, out, "data.max_eval_samples=2"))
    assert "holds an earlier evaluation (predictions.jsonl, metrics.json)" in err and "--overwrite" in err
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before

    args = evaluate_args(tiny_model_dir, synth_dir, out, "data.max_eval_samples=2", "train.seed=1")
    assert main([*args, "--overwrite"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["metrics.json", "predictions.jsonl"]
    rows = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert json.loads((out / "metrics.json").read_text())["n"] == len(rows) == 2


def test_an_out_that_is_a_file_is_refused_before_the_model_loads(synth_dir, tmp_path, capsys):
    file = tmp_path / "taken"
    file.write_text("mine")
    missing = tmp_path / "no-model"  # never reached: loading it would fail with another message
    for out in (file, file / "below"):
        err = refused(capsys, evaluate_args(missing, synth_dir, out))
        assert f"--out {out}" in err and "is a file" in err
        err = refused(
            capsys, ["train", f"data.path={synth_dir}", f"model.name_or_path={missing}", f"train.output_dir={out}"]
        )
        assert f"train.output_dir {out}" in err and "is a file" in err
        for command in (["data", "synth", "--n", "1"], ["model", "tiny"], ["demo"]):
            assert f"--out {out}" in refused(capsys, [*command, "--out", str(out)])
    assert file.read_text() == "mine"


# ---- the Python API checks the Config it is given ------------------------------------------------


@pytest.mark.parametrize(
    "section, key, value, says",
    [
        ("train", "max_steps", -5, "train.max_steps=-5: must be >= 1"),
        ("grpo", "num_generations", 1, "grpo.num_generations=1: must be >= 2 (a group needs two samples to compare)"),
        ("train", "max_steps", "5", "train.max_steps must be an integer, got '5'"),
        ("train", "learning_rate", "fast", "train.learning_rate must be a number, got 'fast'"),
        (  # a section given as a dict
            "data",
            "columns",
            {"answr": "x"},
            "unknown config key data.columns.answr; allowed here: data.columns.image, data.columns.video, "
            "data.columns.question, data.columns.answer, data.columns.answers, data.columns.question_type, "
            "data.columns.answer_type, data.columns.id",
        ),
    ],
)
def test_the_api_checks_a_config_changed_after_load_config(synth_dir, tmp_path, section, key, value, says):
    import vqa_grpo
    from vqa_grpo.config import ConfigError

    cfg = vqa_grpo.load_config(None, [f"data.path={synth_dir}", f"train.output_dir={tmp_path / 'run'}"])
    setattr(getattr(cfg, section), key, value)
    calls = [lambda: vqa_grpo.train(cfg), lambda: vqa_grpo.sft(cfg), lambda: vqa_grpo.evaluate("x", synth_dir, cfg)]
    for call in calls:
        with pytest.raises(ConfigError) as info:
            call()
        assert str(info.value) == says
    assert not (tmp_path / "run").exists()


# ---- GRPO whose groups all agree says so -----------------------------------------------------------


def test_grpo_warns_once_when_every_group_agrees(synth_dir, tiny_model_dir, tmp_path, capsys):
    run = tmp_path / "run"
    args = [f"data.path={synth_dir}", f"model.name_or_path={tiny_model_dir}", f"train.output_dir={run}"]
    args += ["train.max_steps=4", "train.per_device_batch_size=1", "grpo.num_generations=2"]
    args += ["grpo.top_ps=[1e-6]", "grpo.max_completion_length=2", "data.eval_fraction=0"]  # G equal answers
    args += ["train.save_steps=0", "train.progress=false", "train.device=cpu"]
    assert main(["train", *args]) == 0
    err = capsys.readouterr().err
    warning = (
        "warning: every group's G rewards were equal for 3 steps: no advantage, no gradient; "
        "raise grpo.temperatures or grpo.num_generations, or check the rewards"
    )
    assert err.count(warning) == 1, err
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    logged = [(r["step"], r["frac_reward_zero_std"], r["equal_reward_steps"]) for r in lines if "loss" in r]
    assert logged == [(1, 1.0, 1), (2, 1.0, 2), (3, 1.0, 3), (4, 1.0, 4)]


# ---- the right key, and --debug after the subcommand ---------------------------------------------


def test_a_missing_eval_path_is_named_data_eval_path(synth_dir, tiny_model_dir, tmp_path, capsys):
    missing = tmp_path / "eval.jsonl"
    args = [f"data.path={synth_dir}", f"data.eval_path={missing}", f"model.name_or_path={tiny_model_dir}"]
    err = refused(capsys, ["train", *args, f"train.output_dir={tmp_path / 'run'}"])
    assert f"data path '{missing}' not found; set data.eval_path to a file or folder" in err
    assert "data.path" not in err and not (tmp_path / "run").exists()


@pytest.mark.parametrize("where", ["before", "after"])
def test_debug_before_or_after_the_subcommand_shows_the_traceback(tmp_path, where):
    from vqa_grpo.config import ConfigError

    command = ["train", "--config", str(tmp_path / "nope.yaml")]
    with pytest.raises(ConfigError, match="config file not found"):
        main(["--debug", *command] if where == "before" else [*command, "--debug"])


def test_evaluate_says_how_many_rows_it_skipped_as_the_data_loaded(synth_dir, tiny_model_dir, tmp_path, capsys):
    rows = [json.loads(x) for x in (synth_dir / "data.jsonl").read_text().splitlines()[:3]]
    rows.append({**rows[0], "id": "gone", "image": "images/nowhere.png"})
    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "eval"
    rc = main(evaluate_args(tiny_model_dir, data, out, "data.max_skip_fraction=0.5", f"data.image_root={synth_dir}"))
    err = capsys.readouterr().err
    assert rc == 0, err
    assert [x for x in err.splitlines() if x.startswith("evaluate:")] == [
        "evaluate: 1 of 4 rows skipped as the data loaded (missing_image 1); not evaluated "
        "(`vqa-grpo data inspect` lists them)"
    ]
    metrics = json.loads((out / "metrics.json").read_text())
    assert (metrics["n"], metrics["skipped"], metrics["skipped_at_load"]) == (3, 0, {"missing_image": 1})
