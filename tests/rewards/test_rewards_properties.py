"""Property tests: every component in [0, 1], an identical answer scores 1, the total is the weighted sum."""

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from vqa_grpo.config import RewardConfig
from vqa_grpo.rewards import composite_reward, compute_rewards, vqa_accuracy
from vqa_grpo.rewards.answer_type import answer_type_batch
from vqa_grpo.rewards.composite import COMPONENTS
from vqa_grpo.rewards.normalize import answer_tokens, normalize_answer

# words VQA answers are made of, with the characters the normalisations treat specially
WORDS = st.sampled_from(
    [
        "red",
        "Red.",
        "a",
        "the",
        "two",
        "2",
        "1,000",
        "3.5",
        "yes",
        "no",
        "don't",
        "dont",
        "c++",
        "(2)",
        "$5",
        "猫",
        "-",
        ",",
        "...",
    ]
)
TEXT = st.one_of(st.lists(WORDS, max_size=5).map(" ".join), st.text(max_size=20))
WEIGHTS = (
    st.lists(st.floats(0, 1), min_size=5, max_size=5)
    .filter(lambda w: sum(w) > 0.01)
    .map(lambda w: [x / sum(w) for x in w])
)
SETTINGS = settings(max_examples=150, deadline=None)


@SETTINGS
@given(TEXT, st.lists(TEXT, min_size=1, max_size=10), WEIGHTS)
def test_components_in_unit_interval_and_total_is_weighted_sum(pred, refs, w):
    weights = dict(zip(COMPONENTS, w))
    if abs(sum(w) - 1) > 1e-6:  # float rounding of the normalised weights
        return
    r = composite_reward(pred, refs, weights)
    assert all(0.0 <= r[k] <= 1.0 for k in COMPONENTS)
    assert abs(r["total"] - sum(weights[k] * r[k] for k in COMPONENTS)) < 1e-12
    assert -1e-12 <= r["total"] <= 1.0 + 1e-12
    for official in (True, False):
        assert 0.0 <= vqa_accuracy(pred, refs, official=official) <= 1.0


@SETTINGS
@given(TEXT)
def test_identical_answer_scores_one(text):
    if answer_tokens(text):  # something left to match after normalisation
        assert composite_reward(text, text) == {"total": 1.0, **dict.fromkeys(COMPONENTS, 1.0)}
        assert answer_type_batch([text], [[text]], [""]).tolist() == [1.0]
    if text.replace("\n", " ").replace("\t", " ").strip():
        assert vqa_accuracy(text, [text] * 10) == 1.0  # official: identical answers compared as is
    if normalize_answer(text.replace("\n", " ").replace("\t", " ")):
        assert vqa_accuracy(text, [text] * 10, official=False) == 1.0


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(TEXT, st.lists(TEXT, min_size=1, max_size=3)), max_size=8), WEIGHTS)
def test_compute_rewards_total_is_weighted_sum(batch, w):
    cfg = RewardConfig(components=["composite", "vqa_accuracy", "answer_type", "format"], weights=w[:4])
    preds, answers = [b[0] for b in batch], [b[1] for b in batch]
    r = compute_rewards(preds, answers, ["other"] * len(batch), cfg)
    expected = sum(wt * r.parts[c] for c, wt in zip(cfg.components, cfg.weights))
    np.testing.assert_allclose(r.total, expected, atol=1e-12)
    for part in r.parts.values():
        assert np.all((part >= 0) & (part <= 1))
