"""`vqa-grpo demo`: the shipped pretrained base (hash, recorded answers) and the pipeline end to end
at a tiny size (the real stages on the real base, a few steps)."""

from __future__ import annotations

import json
import shutil

import pytest

from vqa_grpo.demo import base, format_summary, run_demo
from vqa_grpo.demo import run as demo_run
from vqa_grpo.errors import UserError


def test_the_shipped_base_matches_its_recorded_hashes():
    assert base.base_model_dir() == base.BASE_DIR
    assert base.file_hashes(base.BASE_DIR) == base.SHA256  # every shipped file is recorded
    size = sum(p.stat().st_size for p in base.BASE_DIR.iterdir())
    assert size <= 20 * 2**20


@pytest.mark.slow
def test_the_shipped_base_answers_fixed_questions_as_recorded(tmp_path):
    from vqa_grpo.config_load import load_config
    from vqa_grpo.data.loader import load_vqa
    from vqa_grpo.data.synthetic import synthesize
    from vqa_grpo.evaluation.evaluate import evaluate

    data = synthesize(tmp_path / "data", n=8, seed=7, image_size=base.IMAGE_SIZE).parent
    cfg = load_config(None, [f"data.path={data}", "data.eval_fraction=0", "eval.max_new_tokens=16"])
    evaluate(str(base.BASE_DIR), load_vqa(cfg.data, seed=0).train, cfg, tmp_path / "eval")
    rows = [json.loads(x) for x in (tmp_path / "eval" / "predictions.jsonl").read_text().splitlines()]
    assert [(r["question"], r["raw"]) for r in rows] == RECORDED


def test_the_vision_stage_names_the_object_centred_in_each_cell():
    from vqa_grpo.demo.vision_pretrain import cell_targets

    scene = [
        {"shape": "circle", "color": "cyan", "box": [2, 26, 36, 60]},  # centre (19, 43): row 1, column 0
        {"shape": "triangle", "color": "blue", "box": [60, 12, 80, 32]},  # centre (70, 22): row 0, column 2
        {"shape": "square", "color": "red", "box": [92, 92, 112, 112]},  # centre (102, 102): the last cell
    ]
    shape, color = cell_targets(scene, image_size=112, cells=4)  # 28 px cells
    assert shape == [0, 0, 3, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2]  # 1 + index in (circle, square, triangle)
    assert color == [0, 0, 3, 0, 6, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]  # 1 + index in (red, green, blue, ..., cyan)


@pytest.mark.slow
def test_the_shipped_base_keeps_its_pretrained_tower_a_linear_probe_names_shapes_and_colours(tmp_path):
    """Fresh linear heads on the frozen tower's tokens (scripts/probe_vision.py at a small size): the
    shipped base's tower still encodes each object's shape and colour. The same call on 061ab25's base
    (`git archive 061ab25 src/vqa_grpo/demo/base_model`), whose SFT stage trained the tower, gave 0.286
    and 0.687 (0.218 and 0.677 from scripts/probe_vision.py at its defaults)."""
    from vqa_grpo.data.synthetic import synthesize
    from vqa_grpo.demo.vision_pretrain import probe_vision

    data = synthesize(tmp_path / "scenes", n=48, seed=3, image_size=base.IMAGE_SIZE).parent
    probe = probe_vision(base.BASE_DIR, data, steps=150, batch=8, image_size=base.IMAGE_SIZE)
    assert probe["objects"] == 3015  # the objects in the last 100 batches of 8 scenes
    assert probe["shape"] >= 0.95 and probe["color"] >= 0.95  # 0.991 and 0.998 when written


# The replies the shipped base gave to these questions when it was made (greedy, on the CPU).
RECORDED: list[tuple[str, str]] = [
    ("What color is the circle?", "the circle is yellow ."),
    ("How many green objects are there?", "there are 6 green objects ."),
    ("What color is the triangle?", "the triangle is green ."),
    ("How many circles are there?", "there are 3 circles ."),
    (
        "Is the cyan square left or right of the green triangle?",
        "the cyan square is to the left of the green triangle .",
    ),
    ("Is there a green triangle?", "no"),
    ("Is there a purple triangle?", "yes"),
    ("What shape is the red object?", "the red object is a square ."),
]


def test_a_shift_with_no_question_is_null_in_the_summary():
    from vqa_grpo.demo.run import _per_shift

    rows = [{"id": "a", "vqa_accuracy": 1.0}, {"id": "b", "vqa_accuracy": 0.0}, {"id": "c", "vqa_accuracy": 0.5}]
    got = _per_shift(rows, {"a": "crowded", "b": "crowded", "c": "rephrased"})
    assert got == {"crowded": 0.5, "pairs": None, "rephrased": 0.5}
    assert json.loads(json.dumps(got, allow_nan=False)) == got  # summary.json stays JSON


def _damaged_copy(tmp_path, monkeypatch):
    copy = tmp_path / "base_model"
    shutil.copytree(base.BASE_DIR, copy)
    weights = copy / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    monkeypatch.setattr(base, "BASE_DIR", copy)
    return copy


def test_a_damaged_base_is_one_line_naming_the_recipe(tmp_path, monkeypatch):
    shipped = base.BASE_DIR
    _damaged_copy(tmp_path, monkeypatch)
    with pytest.raises(UserError, match=r"damaged: .*model.safetensors has sha256 .*reinstall vqa-grpo, or rebuild"):
        base.base_model_dir()
    shutil.copy2(shipped / "model.safetensors", base.BASE_DIR / "model.safetensors")  # whole again
    (base.BASE_DIR / "tokenizer.json").unlink()
    with pytest.raises(UserError, match=r"missing .*tokenizer.json; .*scripts/build_demo_base.py.* record the sha256"):
        base.base_model_dir()
    out = tmp_path / "demo"
    with pytest.raises(UserError):
        run_demo(out, n_questions=20, rl_steps=1, progress=False)
    assert not out.exists()  # nothing written


def test_demo_cli_rejects_a_non_integer_seed_and_a_bad_override(tmp_path, capsys):
    from vqa_grpo.cli import main

    with pytest.raises(SystemExit) as e:
        main(["demo", "--out", str(tmp_path / "d"), "--seed", "one"])
    assert e.value.code == 2 and "--seed: invalid int value: 'one'" in capsys.readouterr().err
    assert main(["demo", "--out", str(tmp_path / "d"), "reward.composite_gard=false"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ") and "composite_gard" in err
    assert main(["demo", "--out", str(tmp_path / "d"), "train.max_steps=5"]) == 2
    assert "grpo.* and reward.* overrides only" in capsys.readouterr().err
    assert main(["demo", "--out", str(tmp_path / "d"), "--train-questions", "0"]) == 2
    assert "--train-questions=0: give a positive number" in capsys.readouterr().err
    assert not (tmp_path / "d").exists()


@pytest.mark.slow
def test_demo_runs_every_stage_and_writes_the_summary(tmp_path, monkeypatch):
    # Every stage on one thread, as every test process runs (tests/conftest.py): the demo's two
    # (train.cpu_threads=2) spin against the other test worker on a 2-core machine (5x the time),
    # and its evaluation would leave this process at two threads for the tests after it.
    common = [o for o in demo_run.COMMON if not o.startswith("train.cpu_threads=")]
    assert len(common) == len(demo_run.COMMON) - 1
    monkeypatch.setattr(demo_run, "COMMON", [*common, "train.cpu_threads=1"])
    out = tmp_path / "demo"
    summary = run_demo(
        out, seed=1, n_questions=60, rl_steps=2, learning_rate=2e-5, progress=False, train_questions=40, n_ood=6
    )

    on_disk = json.loads((out / "summary.json").read_text())
    assert on_disk == summary
    for stage in ("warm_start", "grpo", "sft_same_budget"):
        for key in ("accuracy", "recognised", "repeating", "composite", "accuracy_ood", "recognised_ood"):
            assert 0.0 <= summary[f"{key}_{stage}"] <= 1.0
        per_shift = summary["per_shift_ood"][stage]
        assert list(per_shift) == ["crowded", "pairs", "rephrased"] and all(0 <= v <= 1 for v in per_shift.values())
        # 2 questions a shift: the overall OOD accuracy is the mean of the three
        assert sum(per_shift.values()) / 3 == pytest.approx(summary[f"accuracy_ood_{stage}"])
    assert summary["n_eval"] == 12  # 20% of 60, stratified by answer type
    assert summary["n_ood"] == 6 and summary["train_questions"] == 40  # of the 48 training questions
    assert summary["wall_seconds"] > 0 and summary["warm_start_steps"] == base.STEPS
    assert summary["rl_steps"] == 2 and summary["learning_rate"] == 2e-5
    assert set(summary["per_answer_type"]["grpo"]) == {"yes/no", "number", "other"}
    # Both trained stages start from the shipped base and are ordinary run directories.
    for stage in ("grpo", "sft-same-budget"):
        assert (out / stage / "final" / "config.json").is_file()
        config = (out / stage / "config.yaml").read_text()
        assert f"name_or_path: {base.BASE_DIR}" in config and "learning_rate: 2.0e-05" in config  # both stages'
        assert "max_train_samples: 40" in config
    steps = lambda name: [
        json.loads(x)["step"]
        for x in (out / name / "metrics.jsonl").read_text().splitlines()
        if "eval/vqa_accuracy" not in x
    ]
    assert steps("grpo") == steps("sft-same-budget") == [1, 2]
    # The figures are the evaluation's and compare's own, on the same held-out questions.
    from vqa_grpo.demo.recognised import recognised_share
    from vqa_grpo.evaluation.compare import compare_runs

    for name in ("warm_start", "grpo", "sft_same_budget"):
        metrics = json.loads((out / "eval" / name / "metrics.json").read_text())
        assert metrics["n"] == summary["n_eval"]
        assert metrics["vqa_accuracy"] == summary[f"accuracy_{name}"]
        rows = [json.loads(x) for x in (out / "eval" / name / "predictions.jsonl").read_text().splitlines()]
        assert recognised_share(rows) == summary[f"recognised_{name}"]
    compared = compare_runs([str(out / "eval" / n) for n in ("warm_start", "grpo")])
    assert compared["differences"][0]["overall"]["vqa_accuracy"] == summary["difference_vs_warm_start"]["grpo"]
    assert "+ GRPO (2 steps)" in format_summary(summary)
    assert "out of distribution: 6 questions" in format_summary(summary)
    for name in ("warm_start", "grpo", "sft_same_budget"):
        metrics = json.loads((out / "eval-ood" / name / "metrics.json").read_text())
        assert metrics["n"] == 6 and metrics["vqa_accuracy"] == summary[f"accuracy_ood_{name}"]
    report = (out / "grpo" / "report.html").read_text()
    assert "data:image/png;base64," in report and "http://" not in report
