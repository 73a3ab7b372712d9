"""`evaluate`: predictions.jsonl and metrics.json of a real model, and the summary arithmetic.

The end-to-end test evaluates the ``final/`` of a short SFT run (so some answers are right and the
means are not all zero) on 60 synthetic questions plus one whose image does not decode. The unit
tests compute per-type means and intervals on hand-made arrays.
"""

from __future__ import annotations

import dataclasses
import json
from collections import defaultdict

import numpy as np
import pytest
from PIL import Image

from vqa_grpo.config import DataConfig
from vqa_grpo.config_load import load_config
from vqa_grpo.data.loader import load_vqa
from vqa_grpo.data.types import VQAExample
from vqa_grpo.evaluation.evaluate import bootstrap_ci, evaluate, format_table, summarise
from vqa_grpo.rewards import clean_answer, vqa_accuracy
from vqa_grpo.training.loop import run

FIXED_KEYS = {"n", "vqa_accuracy", "composite", "per_answer_type", "per_question_type", "ci95"}


def config(synth_dir, model_dir, out, *overrides: str):
    return load_config(
        None,
        [
            f"model.name_or_path={model_dir}",
            f"data.path={synth_dir}",
            f"train.output_dir={out}",
            "train.device=cpu",
            "train.cpu_threads=1",
            "train.progress=false",
            "eval.max_new_tokens=4",
            "eval.batch_size=16",
            "eval.bootstrap_samples=200",
            *overrides,
        ],
    )


@pytest.fixture(scope="module")
def evaluated(synth_dir, tiny_model_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("evaluate")
    # 40 SFT steps of 4 questions: the model learns the answer words and gets a few right.
    warm = run(
        config(
            synth_dir,
            tiny_model_dir,
            root / "sft",
            "data.eval_fraction=0",
            "train.max_steps=40",
            "train.per_device_batch_size=4",
            "train.learning_rate=3e-3",
        ),
        "sft",
    )
    examples = load_vqa(DataConfig(path=str(synth_dir), eval_fraction=0), seed=0).train[:60]
    broken = root / "broken.png"
    broken.write_bytes(b"not a png")
    bad = dataclasses.replace(examples[0], id="broken", image_loader=lambda: Image.open(broken).convert("RGB"))
    examples = [*examples[:30], bad, *examples[30:]]
    out = root / "eval"
    metrics = evaluate(str(warm.final_dir), examples, config(synth_dir, warm.final_dir, root / "unused"), out)
    rows = [json.loads(s) for s in (out / "predictions.jsonl").read_text().splitlines()]
    return examples, metrics, rows, out


@pytest.mark.slow
def test_predictions_have_one_row_per_example_with_every_metric(evaluated):
    examples, metrics, rows, _ = evaluated
    kept = [e for e in examples if e.id != "broken"]
    assert metrics["skipped"] == 1 and metrics["n"] == len(rows) == len(kept) == 60
    assert [r["id"] for r in rows] == [e.id for e in kept]
    metric_names = set(metrics["ci95"])
    assert {"vqa_accuracy", "composite", "composite/exact_match"} <= metric_names
    for row, ex in zip(rows, kept):
        assert {"id", "question", "answers", "prediction"} | metric_names <= set(row)
        assert row["question"] == ex.question and row["answers"] == ex.answers
        assert row["prediction"] == clean_answer(row["raw"])
        assert row["vqa_accuracy"] == vqa_accuracy(row["prediction"], row["answers"])
        assert all(0.0 <= row[m] <= 1.0 for m in metric_names)


@pytest.mark.slow
def test_metrics_json_means_are_those_of_the_rows(evaluated):
    _, metrics, rows, out = evaluated
    assert json.loads((out / "metrics.json").read_text()) == metrics
    assert FIXED_KEYS <= set(metrics)
    for name, (low, high) in metrics["ci95"].items():
        assert metrics[name] == pytest.approx(np.mean([r[name] for r in rows]), abs=1e-12), name
        assert 0.0 <= low <= metrics[name] <= high <= 1.0, name
    # Not a vacuous check: the warm-started model gets some answers right, not all.
    assert 0.0 < metrics["vqa_accuracy"] < 1.0

    for key, field in (("per_answer_type", "answer_type"), ("per_question_type", "question_type")):
        groups = defaultdict(list)
        for r in rows:
            groups[r[field]].append(r)
        assert set(metrics[key]) == set(groups)
        assert sum(m["n"] for m in metrics[key].values()) == metrics["n"]
        for name, sub in metrics[key].items():
            assert sub["n"] == len(groups[name])
            for m in metrics["ci95"]:
                assert sub[m] == pytest.approx(np.mean([r[m] for r in groups[name]]), abs=1e-12), (name, m)
            low, high = sub["ci95"]["vqa_accuracy"]
            assert low <= sub["vqa_accuracy"] <= high
    assert set(metrics["per_answer_type"]) == {"yes/no", "number", "other"}


@pytest.mark.slow
def test_format_table_has_a_row_per_answer_type(evaluated):
    _, metrics, _, _ = evaluated
    lines = format_table(metrics).splitlines()
    names = [line.split()[0] for line in lines[2:]]
    assert names == ["overall", "number", "other", "yes/no"]  # overall, then the types as in metrics.json
    overall = lines[2].split()
    assert overall[1] == "60" and float(overall[2]) == pytest.approx(metrics["vqa_accuracy"], abs=5e-5)


# ---- summary arithmetic on hand-made scores ----------------------------------------------------


def example(i: int, answer_type: str, question_type: str) -> VQAExample:
    return VQAExample(
        id=str(i), question="q", answers=["a"], answer="a", answer_type=answer_type, question_type=question_type
    )


def test_summarise_by_hand():
    examples = [
        example(0, "yes/no", "is there a"),
        example(1, "number", "how many"),
        example(2, "yes/no", "is there a"),
        example(3, "other", "what color is the"),
        example(4, "yes/no", "is the"),
    ]
    scores = {
        "vqa_accuracy": np.array([1.0, 0.0, 0.5, 0.25, 0.0]),
        "composite": np.array([1.0, 0.5, 0.0, 0.75, 0.25]),
    }
    out = summarise(scores, examples, samples=100)
    # Overall: (1 + 0 + 0.5 + 0.25 + 0) / 5 = 0.35; composite 2.5 / 5 = 0.5.
    assert out["n"] == 5
    assert out["vqa_accuracy"] == pytest.approx(0.35, abs=1e-15) and out["composite"] == 0.5
    # yes/no = rows 0, 2, 4: (1 + 0.5 + 0) / 3 = 0.5 and (1 + 0 + 0.25) / 3 = 5 / 12.
    per_type = out["per_answer_type"]
    assert {k: v["n"] for k, v in per_type.items()} == {"number": 1, "other": 1, "yes/no": 3}
    assert per_type["yes/no"]["vqa_accuracy"] == 0.5
    assert per_type["yes/no"]["composite"] == pytest.approx(5 / 12, abs=1e-15)
    assert (per_type["number"]["vqa_accuracy"], per_type["number"]["composite"]) == (0.0, 0.5)
    assert (per_type["other"]["vqa_accuracy"], per_type["other"]["composite"]) == (0.25, 0.75)
    # Question types: "is there a" = rows 0, 2; "is the" = row 4.
    per_q = out["per_question_type"]
    assert {k: v["n"] for k, v in per_q.items()} == {
        "how many": 1,
        "is the": 1,
        "is there a": 2,
        "what color is the": 1,
    }
    assert per_q["is there a"]["vqa_accuracy"] == 0.75 and per_q["is the"]["vqa_accuracy"] == 0.0
    # A one-example group resamples the same value every time: a zero-width interval.
    assert per_type["other"]["ci95"]["vqa_accuracy"] == [0.25, 0.25]
    assert set(out["ci95"]) == {"vqa_accuracy", "composite"}


def test_bootstrap_ci_on_hand_made_arrays():
    assert bootstrap_ci(np.ones(7), 500) == [1.0, 1.0]
    assert bootstrap_ci(np.zeros(3), 500) == [0.0, 0.0]
    assert bootstrap_ci(np.array([]), 500) == [0.0, 0.0]
    values = np.array([0.0, 1.0] * 10)  # mean 0.5
    low, high = bootstrap_ci(values, 2000, seed=3)
    assert bootstrap_ci(values, 2000, seed=3) == [low, high]  # seeded: the same interval again
    assert bootstrap_ci(values, 2000, seed=4) != [low, high]
    # The mean of 20 coin flips has standard error 0.5 / sqrt(20) = 0.112: a 95% interval of
    # about +- 1.96 * 0.112 = 0.22 around 0.5.
    assert 0.2 < low < 0.4 < 0.6 < high < 0.8
    assert high - low == pytest.approx(2 * 1.96 * 0.5 / np.sqrt(20), abs=0.05)
