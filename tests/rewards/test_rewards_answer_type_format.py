"""The answer-type aware reward, clean_answer and the format reward."""

import pytest

from vqa_grpo.rewards import clean_answer
from vqa_grpo.rewards.answer_type import answer_type_batch, parse_number, parse_yes_no
from vqa_grpo.rewards.format import format_batch, format_score


@pytest.mark.parametrize(
    "text, value",
    [("yes", "yes"), ("Yes, there is.", "yes"), ("No.", "no"), ("nope", "no"), ("there is", None), ("", None)],
)
def test_parse_yes_no(text, value):
    assert parse_yes_no(text) == value


@pytest.mark.parametrize(
    "text, value",
    [
        ("3", 3.0),
        ("three", 3.0),  # VQA's map: three -> 3
        ("There are 2 dogs", 2.0),
        ("1,000", 1000.0),  # digit comma removed by the VQA normalisation
        ("twenty-one", 21.0),  # '-' -> ' ', "one" -> "1", then tens + unit
        ("fifteen", 15.0),
        ("3.5", 3.5),
        ("none", 0.0),
        ("many", None),
    ],
)
def test_parse_number(text, value):
    assert parse_number(text) == value


def test_yes_no_reward():
    r = answer_type_batch(["Yes, there is", "no", "maybe"], [["yes"] * 10, ["yes"] * 10, ["yes"]], ["yes/no"] * 3)
    assert r.tolist() == [1.0, 0.0, 0.0]


def test_number_reward_exact_and_partial():
    preds, answers, types = ["three", "3", "2", "6", "lots"], [["3"]] * 2 + [["4"]] * 2 + [["3"]], ["number"] * 5
    assert answer_type_batch(preds, answers, types).tolist() == [1.0, 1.0, 0.0, 0.0, 0.0]
    # partial: max(0, 1 - |p - r| / max(|r|, 1)): r = 4, p = 2 -> 0.5; p = 6 -> 0.5
    partial = answer_type_batch(preds, answers, types, partial_credit=True)
    assert partial.tolist() == pytest.approx([1.0, 1.0, 0.5, 0.5, 0.0])
    # the best of several references: "2" vs 4 gives 0.5, vs 2 gives 1
    assert answer_type_batch(["2"], [["4", "2"]], ["number"]).tolist() == [1.0]


def test_other_answers_use_the_composite():
    # "It is red." vs "red": composite total 0.5 (see the composite tests)
    assert answer_type_batch(["It is red."], [["red"]], ["other"]).tolist() == pytest.approx([0.5])


def test_unknown_type_is_inferred_from_the_answers():
    # majority "2" -> "number", so "two" is parsed as 2
    assert answer_type_batch(["two"], [["2", "2", "3"]], [""]).tolist() == [1.0]
    # majority "yes" -> "yes/no"
    assert answer_type_batch(["Yes, it is"], [["yes", "yes", "no"]], ["?"]).tolist() == [1.0]


@pytest.mark.parametrize(
    "text, reasoning, cleaned",
    [
        ("  red car \nbecause it is red", False, "red car"),
        ("\n\nred", False, "red"),
        ("", False, ""),
        (None, False, ""),
        ("<think>it is red</think><answer> red </answer>", True, "red"),
        ("<answer>\nred\nor blue</answer>", True, "red"),  # DOTALL content, then its first line
        ("<answer>red</answer><answer>blue</answer>", True, ""),  # duplicated tags
        ("<answer>red", True, ""),  # no closing tag
        ("</answer>red<answer>", True, ""),  # wrong order
        ("red", True, ""),
    ],
)
def test_clean_answer(text, reasoning, cleaned):
    assert clean_answer(text, reasoning=reasoning) == cleaned


def test_clean_answer_is_idempotent_for_plain_completions():
    once = clean_answer(" red car\nmore text ")
    assert clean_answer(once) == once


@pytest.mark.parametrize(
    "text, score",
    [
        ("red", 1.0),
        ("a big red car", 1.0),  # 4 words
        ("one two three four five", 1.0),  # MAX_WORDS = 5
        ("one two three four five six", 0.0),
        ("red\nbecause", 0.0),  # two lines
        ("   ", 0.0),
        (None, 0.0),
    ],
)
def test_format_plain(text, score):
    assert format_score(text) == score


@pytest.mark.parametrize(
    "text, score",
    [
        ("<think>hmm</think>\n<answer>red</answer>", 1.0),
        ("<answer>\nred\n</answer>", 1.0),  # DOTALL
        ("<answer> </answer>", 0.0),  # blank content
        ("<answer>red</answer> <answer>red</answer>", 0.0),  # duplicated
        ("<answer>red</answer></answer>", 0.0),
        ("red", 0.0),
    ],
)
def test_format_reasoning(text, score):
    assert format_score(text, reasoning=True) == score


def test_format_batch():
    assert format_batch(["red", "x\ny"]).tolist() == [1.0, 0.0]
