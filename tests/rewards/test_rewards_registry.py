"""compute_rewards (training) and score_predictions (evaluation): batched, named parts, weighted total."""

import subprocess
import sys

import numpy as np
import pytest

from vqa_grpo.config import RewardConfig
from vqa_grpo.config_load import load_config
from vqa_grpo.data.benchmarks import resolve as resolve_benchmark
from vqa_grpo.rewards import REWARD_COMPONENTS, RewardResult, compute_rewards, score_predictions
from vqa_grpo.rewards.semantic import semantic_available

PREDS = ["It is red.", "three", "Yes, there is", "blue"]
ANSWERS = [["red"], ["3", "3", "4"], ["yes"] * 10, ["green"]]
TYPES = ["other", "number", "yes/no", "other"]


def test_components_are_the_config_names():
    assert REWARD_COMPONENTS[:5] == ("composite", "vqa_accuracy", "answer_type", "format", "semantic")
    assert {"anls", "relaxed_accuracy", "exact_match", "multiple_choice"} <= set(REWARD_COMPONENTS)
    load_config(None, ["reward.components=[composite,format]", "reward.weights=[0.5,0.5]"])  # validates


def test_registry_imports_nothing_of_config():
    code = "import sys, vqa_grpo.rewards.registry; assert 'vqa_grpo.config' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_default_config_is_the_composite_and_guard_off_is_the_seeds():
    r = compute_rewards(PREDS, ANSWERS, TYPES, RewardConfig(composite_guard=False))
    assert isinstance(r, RewardResult)
    # composite totals: "It is red." vs "red" 0.5; "three" vs 3/3/4 shares no token 0; "Yes, there is"
    # vs "yes": bleu 1/3, substring 1, jaccard 1/3, extractable 1 -> 0.5; "blue" vs "green" 0
    assert r.total.tolist() == pytest.approx([0.5, 0.0, 0.5, 0.0])
    assert r.total.dtype == np.float64 and r.total.shape == (4,)
    assert set(r.parts) == {"composite"} | {
        f"composite/{k}" for k in ("bleu1", "exact_match", "substring", "jaccard", "extractable")
    }
    assert r.parts["composite/substring"].tolist() == [1.0, 0.0, 1.0, 0.0]
    guarded = compute_rewards(PREDS, ANSWERS, TYPES, RewardConfig())
    # the default guard scales each part of a 3-token answer to a 1-token reference by 1/3
    assert guarded.total.tolist() == pytest.approx([0.5 / 3, 0.0, 0.5 / 3, 0.0])
    assert guarded.parts["composite/substring"].tolist() == pytest.approx([1 / 3, 0.0, 1 / 3, 0.0])


def test_the_default_config_scores_as_a_training_run_does():
    """compute_rewards with RewardConfig() against a run that sets no reward key, scored as
    training/steps.py hands the run's settings to the rollout, on answers where the composite's
    guard matters: "no no no no" against "no" keeps bleu1 1/4, substring, Jaccard and extractable,
    0.2/4 + 0.2 + 0.1 + 0.2 = 0.55 unguarded, and the guard scales every part by 1/4: 0.1375; the
    answer_type reward scores an "other" answer by the same composite."""
    preds, answers, types = ["no no no no", "no"], [["no"], ["no"]], ["other", "other"]
    both = ["composite", "answer_type"]
    run = resolve_benchmark(load_config(None, ["reward.components=[composite,answer_type]"]))
    trained = compute_rewards(
        preds, answers, types, run.reward, vqa_convention=run.eval.vqa_convention, benchmark=run.data.benchmark
    )
    public = compute_rewards(preds, answers, types, RewardConfig(components=both))
    assert public.total.tolist() == trained.total.tolist() == pytest.approx([2 * 0.1375, 2.0])
    assert {k: v.tolist() for k, v in public.parts.items()} == {k: v.tolist() for k, v in trained.parts.items()}
    unguarded = compute_rewards(preds, answers, types, RewardConfig(components=both, composite_guard=False))
    assert unguarded.total.tolist() == pytest.approx([2 * 0.55, 2.0])


def test_total_is_the_weighted_sum_of_components():
    cfg = RewardConfig(components=["composite", "vqa_accuracy", "answer_type", "format"], weights=[0.4, 0.3, 0.2, 0.1])
    r = compute_rewards(PREDS, ANSWERS, TYPES, cfg)
    # lenient VQA accuracy: "three" -> "3" matches 2 of 3 entries: (2 * 1/3 + 1 * 2/3) / 3 = 4/9
    assert r.parts["vqa_accuracy"].tolist() == pytest.approx([0.0, 4 / 9, 0.0, 0.0])
    # answer type: other -> the guarded composite 0.5 / 3; number 3 == 3; "Yes, ..." is yes; "blue" vs "green" 0
    assert r.parts["answer_type"].tolist() == pytest.approx([0.5 / 3, 1.0, 1.0, 0.0])
    assert r.parts["format"].tolist() == [1.0, 1.0, 1.0, 1.0]  # all one line of <= 5 words
    # e.g. row 1: .4 * 0 + .3 * 4/9 + .2 * 1 + .1 * 1 = 0.4333
    expected = sum(w * r.parts[c] for c, w in zip(cfg.components, cfg.weights))
    np.testing.assert_allclose(r.total, expected)
    assert r.total[1] == pytest.approx(0.3 * 4 / 9 + 0.3)


def test_composite_weights_come_from_the_config():
    w = {"bleu1": 0.0, "exact_match": 1.0, "substring": 0.0, "jaccard": 0.0, "extractable": 0.0}
    r = compute_rewards(["red.", "It is red."], [["red"], ["red"]], ["other"] * 2, RewardConfig(composite_weights=w))
    assert r.total.tolist() == [1.0, 0.0]


def test_completions_are_cleaned_before_scoring():
    r = compute_rewards(["red\nbecause it is red", "red because"], [["red"]] * 2, ["other"] * 2, RewardConfig())
    assert r.parts["composite/exact_match"].tolist() == [1.0, 0.0]  # first line only


def test_reasoning_mode_scores_the_tagged_answer():
    cfg = RewardConfig(components=["composite", "format"], weights=[0.5, 0.5], reasoning=True)
    preds = ["<think>it is red</think><answer>red</answer>", "<answer>red</answer><answer>red</answer>"]
    r = compute_rewards(preds, [["red"]] * 2, ["other"] * 2, cfg)
    assert r.parts["format"].tolist() == [1.0, 0.0]
    assert r.parts["composite"].tolist() == [1.0, 0.0]  # duplicated tags: cleaned to "", scores 0


def test_mismatched_lengths_raise():
    with pytest.raises(ValueError, match="one of each"):
        compute_rewards(["a", "b"], [["a"]], ["other", "other"], RewardConfig())


def test_empty_batch():
    r = compute_rewards([], [], [], RewardConfig())
    assert r.total.shape == (0,)


def test_score_predictions_keys_and_values():
    s = score_predictions(
        ["Yes", "two", "It is red."], [["yes"] * 10, ["2"] * 3 + ["3"] * 7, ["red"]], ["yes/no", "number", "other"]
    )
    parts = ("bleu1", "exact_match", "substring", "jaccard", "extractable")
    keys = {"vqa_accuracy", "composite", *(f"composite/{k}" for k in parts)}
    assert set(s) == keys | ({"semantic"} if semantic_available() else set())
    # official: ten identical "yes" are not normalised, so "Yes" scores 0;
    # "two" -> "2" (answers differ): M = 3 -> (3 * 2/3 + 7 * 1) / 10 = 0.9; "It is red." vs one "red": 0
    assert s["vqa_accuracy"].tolist() == pytest.approx([0.0, 0.9, 0.0])
    assert s["composite"].tolist() == pytest.approx([1.0, 0.0, 0.5])
    assert all(v.dtype == np.float64 and v.shape == (3,) for v in s.values())


def test_answer_type_scores_its_other_answers_with_the_guarded_composite():
    # "It is red." vs "red" (other): the composite's 0.5, guarded 0.5 / 3 (3 tokens for 1); yes/no and
    # number answers are read by their first yes/no or number token, guard or not.
    preds = ["It is red.", "red red red", "three", "Yes, there is"]
    answers = [["red"], ["red"], ["3", "3", "4"], ["yes"] * 10]
    types = ["other", "other", "number", "yes/no"]

    def totals(**kw):
        cfg = RewardConfig(components=["answer_type"], weights=[1.0], **kw)
        return compute_rewards(preds, answers, types, cfg).total.tolist()

    # "red red red" vs "red": bleu1 1/3, exact 0, substring 1, jaccard 1, extractable 1 -> 0.2/3 + 0.5
    assert totals(composite_guard=False) == pytest.approx([0.5, 0.2 / 3 + 0.5, 1.0, 1.0])
    assert totals() == pytest.approx([0.5 / 3, (0.2 / 3 + 0.5) / 3, 1.0, 1.0])
