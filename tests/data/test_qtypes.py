"""Question types (VQA v2 prefixes) and answer types (majority normalised answer)."""

from __future__ import annotations

import pytest

from vqa_grpo.data.qtypes import NO_QUESTION_TYPE, answer_type_of, question_type_of, question_type_prefixes


def test_packaged_prefix_list_is_vqa_v2s_64():
    prefixes = question_type_prefixes()
    assert len(prefixes) == 64
    assert {"how many", "what color is the", "how many people are in", "what brand"} <= set(prefixes)
    assert [len(p) for p in prefixes] == sorted((len(p) for p in prefixes), reverse=True)


@pytest.mark.parametrize(
    "question, expected",
    [
        ("How many dogs are there?", "how many"),
        ("How many people are in the room?", "how many people are in"),  # longest wins over "how many"
        ("How many people are there?", "how many people are"),
        ("What color is the car?", "what color is the"),
        ("  WHAT   color is the car", "what color is the"),  # case and spacing do not matter
        ("Is this a cat?", "is this a"),
        ("Is this an apple?", "is this an"),
        ("Is it raining?", "is it"),
        ("Is?", "is"),
        ("Isn't it red?", NO_QUESTION_TYPE),  # prefixes match whole words only
        ("Whatever happened here", NO_QUESTION_TYPE),
        ("Tell me the time", NO_QUESTION_TYPE),
        ("", NO_QUESTION_TYPE),
    ],
)
def test_question_type_is_the_longest_whole_word_prefix(question, expected):
    assert question_type_of(question) == expected


@pytest.mark.parametrize(
    "answers, expected",
    [
        (["yes"] * 6 + ["no"] * 4, "yes/no"),
        (["Yes.", " no ", "YES"], "yes/no"),  # lower-cased, trailing punctuation dropped
        (["two", "2", "3"], "number"),  # "two" -> "2": the majority is "2"
        (["none", "0", "red"], "number"),  # VQA's evaluation maps "none" to "0"
        (["1,000"], "number"),
        (["3.5"], "number"),
        (["-2"], "number"),
        (["red", "red", "2"], "other"),
        (["2 dogs"], "other"),
        (["yes", "red"], "yes/no"),  # a tie goes to the answer seen first
        (["red", "yes"], "other"),
        (["", "  "], "other"),
        ([], "other"),
    ],
)
def test_answer_type_is_the_type_of_the_majority_answer(answers, expected):
    assert answer_type_of(answers) == expected
