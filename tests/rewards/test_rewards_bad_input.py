"""Bad input never raises: it scores (0 where nothing matches) and is counted in one logging.warning."""

import logging

import numpy as np
import pytest

from vqa_grpo.config import RewardConfig
from vqa_grpo.rewards import composite_reward, compute_rewards, score_predictions, vqa_accuracy

MEGABYTE = "red " * 262_144  # 1 MiB
ODD = [None, 123, 4.5, b"bytes", ["list"], {"d": 1}, "", "   ", MEGABYTE, "猫 🐈", "c++", "(2)", "$5", "a|b*", "\\d+"]


@pytest.mark.parametrize("value", ODD, ids=lambda v: repr(v)[:20])
def test_composite_and_vqa_accuracy_never_raise(value):
    for pred, ref in [(value, "red"), ("red", value), (value, [value, None])]:
        r = composite_reward(pred, ref)
        assert all(0.0 <= x <= 1.0 for x in r.values())
        assert 0.0 <= vqa_accuracy(pred, ref if isinstance(ref, list) else [ref]) <= 1.0


def test_nothing_to_match_scores_zero_and_is_counted(caplog):
    with caplog.at_level(logging.WARNING, logger="vqa_grpo.rewards"):
        assert composite_reward(None, "red")["total"] == 0.0
        assert composite_reward("", "red")["total"] == 0.0
        assert composite_reward("red", [])["total"] == 0.0
        assert vqa_accuracy(None, ["red"] * 10) == 0.0
    messages = [r.getMessage() for r in caplog.records]
    assert messages == [
        "composite_reward: bad input scored as text: 1 prediction None",
        "composite_reward: bad input scored as text: 1 empty prediction",
        "composite_reward: bad input scored as text: 1 empty reference list",
        "vqa_accuracy: bad input scored as text: 1 prediction None",
    ]


def test_regex_metacharacters_are_plain_text():
    assert composite_reward("c++", "c++")["total"] == 1.0
    assert composite_reward("I like c++", "c++")["extractable"] == 1.0  # tokens [i, like, c] hold [c]
    assert composite_reward("(2)", "2")["exact_match"] == 1.0  # edge punctuation stripped
    r = composite_reward("$5.00", "$5")  # tokens "5.00" and "5": substring, not a whole word
    assert (r["substring"], r["extractable"]) == (1.0, 0.0)
    assert vqa_accuracy("c++", ["c++"] * 10) == 1.0  # identical answers: compared as is
    assert vqa_accuracy("a|b*", ["a|b*"] * 5 + ["x"] * 5) == 1.0


def test_numbers_are_scored_as_their_text():
    assert composite_reward(3, "3")["total"] == 1.0


def test_batches_count_bad_input_once(caplog):
    preds = [None, "", 7, MEGABYTE, "猫", "red"]
    answers = [["red"], None, "7", ["red"], ["猫"], [None, "red"]]
    cfg = RewardConfig(components=["composite", "vqa_accuracy", "answer_type", "format"], weights=[0.25] * 4)
    with caplog.at_level(logging.WARNING, logger="vqa_grpo.rewards"):
        r = compute_rewards(preds, answers, [None, 3, "other", "other", "", "other"], cfg)
    assert r.bad_inputs == 6  # None, "", 7, the megabyte, answers None, reference None
    assert len(caplog.records) == 1 and caplog.records[0].getMessage().startswith("compute_rewards:")
    assert np.all((0 <= r.total) & (r.total <= 1))
    assert r.parts["composite"][4] == 1.0 and r.parts["composite"][5] == 1.0  # unicode; best of [None, "red"]
    assert r.total[0] == 0.0 and r.total[1] == 0.0


def test_a_rollout_counts_bad_input_without_the_warning(caplog):
    """warn_bad_inputs=False (the rollout's: an empty completion is a normal policy output there,
    its count logged instead): the same count and scores, no record, and the logger's level as it was."""
    preds, answers, types = [None, "", "red"], [["red"], ["red"], ["red"]], ["other"] * 3
    level = logging.getLogger("vqa_grpo.rewards").level
    with caplog.at_level(logging.WARNING, logger="vqa_grpo.rewards"):
        quiet = compute_rewards(preds, answers, types, RewardConfig(), warn_bad_inputs=False)
        assert caplog.records == []
        loud = compute_rewards(preds, answers, types, RewardConfig())
        assert len(caplog.records) == 1
    assert quiet.bad_inputs == loud.bad_inputs == 2 and quiet.total.tolist() == loud.total.tolist() == [0.0, 0.0, 1.0]
    assert logging.getLogger("vqa_grpo.rewards").level == level


def test_score_predictions_with_bad_input():
    s = score_predictions([None, MEGABYTE, "猫"], [["red"], ["red"], ["猫"] * 10], ["", "", ""])
    assert s["vqa_accuracy"].tolist() == [0.0, 0.0, 1.0]
    assert s["composite"][0] == 0.0 and s["composite"][2] == 1.0
