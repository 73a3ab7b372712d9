"""The seed's composite reward, each component computed by hand (seed weights .2 .3 .2 .1 .2)."""

import re

import pytest

from vqa_grpo.rewards import SEED_REPORT_WEIGHTS, composite_reward
from vqa_grpo.rewards.composite import COMPONENTS, check_weights, composite_batch


def test_identical_after_normalisation_scores_one():
    # "Red." and "red" both normalise to "red"
    assert composite_reward("Red.", "red") == {"total": 1.0, **dict.fromkeys(COMPONENTS, 1.0)}


def test_answer_longer_than_reference():
    r = composite_reward("It is red.", "red")
    # A = [it, is, red], R = [red]
    assert r["bleu1"] == pytest.approx(1 / 3)  # one of three answer tokens in R
    assert r["exact_match"] == 0.0
    assert r["substring"] == 1.0  # "red" in "it is red"
    assert r["jaccard"] == pytest.approx(1 / 3)  # {red} / {it, is, red}
    assert r["extractable"] == 1.0  # " red " in " it is red "
    # .2 * 1/3 + .3 * 0 + .2 * 1 + .1 * 1/3 + .2 * 1 = 0.0667 + 0.2 + 0.0333 + 0.2 = 0.5
    assert r["total"] == pytest.approx(0.5)


def test_substring_but_not_extractable():
    r = composite_reward("reddish", "red")
    # "red" in "reddish" as a substring, not as a whole word; no token shared
    assert (r["bleu1"], r["exact_match"], r["substring"], r["jaccard"], r["extractable"]) == (0, 0, 1, 0, 0)
    assert r["total"] == pytest.approx(0.2)  # .2 * substring


def test_bleu1_clips_repeated_tokens():
    r = composite_reward("red red red", "red car")
    # count_A(red) = 3, clipped to count_R(red) = 1: 1 / 3
    assert r["bleu1"] == pytest.approx(1 / 3)
    assert r["jaccard"] == pytest.approx(1 / 2)  # {red} / {red, car}
    assert r["substring"] == r["extractable"] == r["exact_match"] == 0.0  # "red car" not in "red red red"
    # .2 * 1/3 + .1 * 1/2 = 0.0667 + 0.05 = 0.1167
    assert r["total"] == pytest.approx(0.2 / 3 + 0.05)


def test_bleu1_has_no_brevity_penalty():
    r = composite_reward("red", "a big red car")
    assert r["bleu1"] == 1.0  # the only answer token is in R
    assert r["jaccard"] == pytest.approx(1 / 4)
    # .2 * 1 + .1 * 1/4 = 0.225
    assert r["total"] == pytest.approx(0.225)


def test_extractable_is_a_whole_word_regex_match():
    for answer, ref in [
        ("it is red.", "red"),
        ("a red car", "red car"),
        ("reddish", "red"),
        ("red car", "car"),
        ("carpet", "car"),
    ]:
        a, r = " ".join(answer.rstrip(".").lower().split()), ref
        expected = bool(re.search(r"(?<!\S)" + re.escape(r) + r"(?!\S)", a))
        assert composite_reward(answer, ref)["extractable"] == float(expected)


def test_empty_answer_scores_zero():
    assert composite_reward("", "red") == {"total": 0.0, **dict.fromkeys(COMPONENTS, 0.0)}
    assert composite_reward("...", "red")["total"] == 0.0  # empty after normalisation


def test_multiple_references_take_the_best_reference_by_total():
    # pred "red car": vs "red car wash": bleu 2/2 = 1, exact 0, substring 0, jaccard 2/3, extractable 0
    #   total = .2 + .1 * 2/3 = 0.2667
    # vs "car": bleu 1/2, exact 0, substring 1, jaccard 1/2, extractable 1
    #   total = .1 + .2 + .05 + .2 = 0.55  -> the best; its parts are reported, bleu1 0.5 (not 1)
    r = composite_reward("red car", ["red car wash", "car"])
    assert r["total"] == pytest.approx(0.55)
    assert r["bleu1"] == pytest.approx(0.5)
    assert r["jaccard"] == pytest.approx(0.5)
    assert (r["substring"], r["extractable"]) == (1.0, 1.0)


def test_one_reference_in_a_list_is_the_plain_definition():
    assert composite_reward("It is red.", ["red"]) == composite_reward("It is red.", "red")


def test_ten_vqa_answers():
    answers = ["no"] * 6 + ["yes"] * 4
    assert composite_reward("Yes", answers)["total"] == 1.0  # a minority answer counts fully (documented)
    assert composite_reward("maybe", answers)["total"] == 0.0


def test_custom_weights():
    w = {"bleu1": 0.0, "exact_match": 0.0, "substring": 0.0, "jaccard": 1.0, "extractable": 0.0}
    assert composite_reward("red car", "red", w)["total"] == pytest.approx(0.5)  # jaccard {red}/{red, car}


@pytest.mark.parametrize(
    "weights",
    [
        {"bleu1": 1.0},  # missing keys
        {**SEED_REPORT_WEIGHTS, "other": 0.0},  # extra key
        {**SEED_REPORT_WEIGHTS, "bleu1": -0.1, "jaccard": 0.4},  # negative
        {**SEED_REPORT_WEIGHTS, "bleu1": 0.3},  # sums to 1.1
        {**SEED_REPORT_WEIGHTS, "bleu1": float("nan")},
        {**SEED_REPORT_WEIGHTS, "bleu1": "0.2"},
        [0.2, 0.3, 0.2, 0.1, 0.2],  # not a dict
    ],
)
def test_bad_weights_raise_value_error(weights):
    with pytest.raises(ValueError):
        composite_reward("red", "red", weights)


def test_weights_within_tolerance_are_accepted():
    w = {**SEED_REPORT_WEIGHTS, "bleu1": 0.2 + 5e-7}
    assert check_weights(w)[0] == pytest.approx(0.2 + 5e-7)


def test_batch_matches_single_calls():
    preds, answers = ["It is red.", "two", "red car"], [["red"], ["2", "two"], ["red car wash", "car"]]
    batch = composite_batch(preds, answers)
    for i, (p, a) in enumerate(zip(preds, answers)):
        single = composite_reward(p, a)
        for key, value in single.items():
            assert batch[key][i] == pytest.approx(value)
    assert batch["total"].dtype.name == "float64" and batch["total"].shape == (3,)


# The guard (reward.composite_guard): hand-computed. "no no no no" vs "no": bleu1 1/4, substring 1,
# jaccard 1, extractable 1 -> 0.2/4 + 0.2 + 0.1 + 0.2 = 0.55 for the seed, times 1/4 guarded.
# "yes no" vs "no": bleu1 1/2, substring 1, jaccard 1/2, extractable 1 -> 0.55, times 1/2 guarded.
@pytest.mark.parametrize(
    "prediction, seed_total, guarded_total",
    [("no no no no", 0.55, 0.1375), ("yes no", 0.55, 0.275), ("no", 1.0, 1.0), ("yes", 0.0, 0.0)],
)
def test_the_guard_scales_longer_answers_by_the_length_ratio(prediction, seed_total, guarded_total):
    assert composite_reward(prediction, "no")["total"] == pytest.approx(seed_total)
    guarded = composite_reward(prediction, "no", guard=True)
    assert guarded["total"] == pytest.approx(guarded_total)
    assert guarded["total"] == pytest.approx(sum(w * guarded[k] for k, w in SEED_REPORT_WEIGHTS.items()))


def test_the_guard_leaves_answers_no_longer_than_the_reference_alone():
    for prediction in ("red", "dark red", "red car", "car"):
        assert composite_reward(prediction, "dark red", guard=True) == composite_reward(prediction, "dark red")


def test_the_guard_picks_the_best_reference_after_scaling():
    # vs "red": 3 tokens -> 0.5 / 3; vs "it is red": exact, 1.0
    r = composite_reward("it is red", ["red", "it is red"], guard=True)
    assert r["total"] == 1.0 and r["exact_match"] == 1.0
