"""Calibrated abstention (rewards/abstention.py): the reward's table, the answerability figures
against scikit-learn (VizWiz's evaluation calls its average_precision_score and f1_score), and the
reward as a component of compute_rewards."""

from __future__ import annotations

import json

import numpy as np
import pytest

from vqa_grpo.config import RewardConfig
from vqa_grpo.rewards import abstention, answerability, compute_rewards  # exported as the other metrics
from vqa_grpo.rewards.abstention import abstention_batch, is_unanswerable

VIZWIZ_UNANSWERABLE = ["unanswerable"] * 6 + ["red", "red", "dark red", "maroon"]  # 6 of 10 annotators
VIZWIZ_ANSWERABLE = ["red"] * 3 + ["unanswerable"] * 2 + ["dark red"] * 5  # 2 of 10: answerable


@pytest.mark.parametrize(
    "prediction, answers, expected",
    [
        ("Unanswerable.", VIZWIZ_UNANSWERABLE, 1.0),  # abstains where the annotators mostly do
        ("red", VIZWIZ_UNANSWERABLE, -1.0),  # a confident answer to an unanswerable question
        ("unanswerable", ["red"] * 10, 0.0),  # abstaining on an answerable question costs nothing
        ("blue", ["red"] * 10, -1.0),  # a confident wrong answer costs more than abstaining
        ("Red", ["red"] * 10, 1.0),  # a right answer: its VQA accuracy
        ("red", VIZWIZ_ANSWERABLE, 0.9),  # 3 of 10 say red: (3 * 2/3 + 7 * 1) / 10
        ("unanswerable", VIZWIZ_ANSWERABLE, 0.0),  # 2 of 10 is not "mostly"
        ("unanswerable", ["unanswerable"] * 5 + ["red"] * 5, 1.0),  # half counts as mostly
        ("unanswerable", ["unanswerable"], 1.0),  # the synthetic set's one answer
        ("", ["unanswerable"], 0.0),  # empty: 0, as every reward scores it
        ("red", [], 0.0),
    ],
)
def test_the_reward_table(prediction, answers, expected):
    assert abstention(prediction, answers) == pytest.approx(expected)


def test_unanswerable_means_at_least_half_the_answers():
    assert is_unanswerable(["Unanswerable"]) and is_unanswerable(["unanswerable", "red"])
    assert not is_unanswerable(["unanswerable", "red", "red"]) and not is_unanswerable([])


def test_answerability_by_hand():
    # truth: U U A A A; said: U A U A A -> tp 1, fp 1, fn 1
    answers = [["unanswerable"], VIZWIZ_UNANSWERABLE, ["red"], ["red"], VIZWIZ_ANSWERABLE]
    said = ["unanswerable", "red", "Unanswerable!", "red", "red"]
    got = answerability(said, answers)
    # average precision: recall 1/2 at precision 1/2 (the abstentions), then recall 1 at 2/5 (all)
    assert got == pytest.approx(
        {
            "n": 5,
            "unanswerable": 2,
            "abstained": 2,
            "precision": 0.5,
            "recall": 0.5,
            "f1": 0.5,
            "vizwiz_average_precision": 0.5 * 0.5 + 0.5 * 0.4,
            "vizwiz_f1": 0.5,
        }
    )
    none = answerability(["red"] * 3, [["red"]] * 3)  # no positive: scikit-learn's 0s
    assert (none["precision"], none["recall"], none["f1"], none["vizwiz_average_precision"]) == (0.0, 0.0, 0.0, 0.0)


def random_sets(n: int):
    """n seeded (truth, said) pairs of 1-11 questions, each with its own rates."""
    rng = np.random.default_rng(0)
    for _ in range(n):
        k = int(rng.integers(1, 12))
        yield rng.random(k) < rng.random(), rng.random(k) < rng.random()


# scikit-learn 1.9.1's figures on random_sets(5000), as VizWiz's evaluate_unanswerability calls it
# (the unanswerable class positive, the 0/1 abstention as the score), computed by:
#   for truth, said in random_sets(5000): average_precision_score(truth.astype(int), said.astype(float)),
#   f1_score(truth, said)   (warnings ignored), then the sums and the first five of each.
SKLEARN_AP_SUM, SKLEARN_F1_SUM = 2594.4168360189196, 1794.1504344039174
SKLEARN_AP_FIRST = [0.0, 0.2, 1.0, 0.5, 0.705357142857]
SKLEARN_F1_FIRST = [0.0, 0.333333333333, 1.0, 0.0, 0.75]


def test_vizwiz_figures_equal_scikit_learn_on_5000_random_sets():
    aps, f1s = [], []
    for truth, said in random_sets(5000):
        got = answerability(
            ["unanswerable" if s else "red" for s in said],
            [["unanswerable"] if t else ["red"] for t in truth],
        )
        aps.append(got["vizwiz_average_precision"])
        f1s.append(got["vizwiz_f1"])
    assert np.round(aps[:5], 12).tolist() == SKLEARN_AP_FIRST and np.round(f1s[:5], 12).tolist() == SKLEARN_F1_FIRST
    assert sum(aps) == pytest.approx(SKLEARN_AP_SUM, abs=1e-9) and sum(f1s) == pytest.approx(SKLEARN_F1_SUM, abs=1e-9)


def test_abstention_is_a_reward_component():
    cfg = RewardConfig(components=["abstention", "vqa_accuracy"], weights=[1.0, 0.5])
    preds = ["unanswerable", "red", "blue"]
    answers = [["unanswerable"], ["red"], ["red"]]
    r = compute_rewards(preds, answers, ["other"] * 3, cfg)
    np.testing.assert_allclose(r.parts["abstention"], [1.0, 1.0, -1.0])
    np.testing.assert_allclose(r.total, [1.0 + 0.5, 1.0 + 0.5, -1.0])
    np.testing.assert_allclose(abstention_batch(preds, answers), r.parts["abstention"])


@pytest.mark.slow
def test_abstention_end_to_end_on_unanswerable_synthetic_data(tiny_model_dir, tmp_path, capsys):
    """A tiny GRPO run rewarded by abstention and VQA accuracy on data with unanswerable questions,
    then `vqa-grpo evaluate` reporting the answerability figures."""
    from vqa_grpo.cli import main
    from vqa_grpo.data.synthetic import synthesize

    data = synthesize(tmp_path / "data", n=16, seed=0, image_size=56, unanswerable=0.5).parent
    quick = ["train.device=cpu", "train.cpu_threads=1", "train.progress=false", "eval.max_new_tokens=2"]
    assert main(["train", f"model.name_or_path={tiny_model_dir}", f"data.path={data}", "data.eval_fraction=0",
                 f"train.output_dir={tmp_path / 'run'}", "train.max_steps=2", "train.per_device_batch_size=2",
                 "grpo.num_generations=2", "grpo.max_completion_length=3",
                 "reward.components=[abstention,vqa_accuracy]", *quick]) == 0  # fmt: skip
    steps = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert all(-1.0 <= s["reward/abstention"] <= 1.0 for s in steps if "loss" in s) and len(steps) >= 2
    capsys.readouterr()
    out = tmp_path / "eval"
    assert (
        main(["evaluate", "--model", str(tmp_path / "run" / "final"), "--data", str(data), "--out", str(out), *quick])
        == 0
    )
    metrics = json.loads((out / "metrics.json").read_text())
    a = metrics["answerability"]
    # 8 of the 16 questions cannot be answered; the tiny model's vocabulary has no "unanswerable"
    assert (a["n"], a["unanswerable"], a["abstained"]) == (16, 8, 0)
    assert (a["precision"], a["recall"], a["f1"], a["vizwiz_average_precision"]) == (0.0, 0.0, 0.0, 0.5)
    assert (
        metrics["primary_metric"] == "vqa_accuracy" and "unanswerable 8 of 16, abstained 0" in capsys.readouterr().out
    )
