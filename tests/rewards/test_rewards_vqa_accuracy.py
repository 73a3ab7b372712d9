"""Official VQA accuracy, each case derived by hand from vqaEval.py (master, 2021).

Formula: M = entries equal to the prediction; each of the n entries is left out once;
an entry equal to the prediction sees M - 1 matches, any other sees M; score each min(1, m / 3).
"""

import pytest

from vqa_grpo.rewards import vqa_accuracy


def test_leave_one_out_is_by_entry():
    answers = ["red"] * 3 + ["blue"] * 7
    # M = 3: the 3 "red" entries see 2 -> 2/3; the 7 others see 3 -> 1
    # (3 * 2/3 + 7 * 1) / 10 = 9 / 10  (by value, dropping every "red" at once, it would differ)
    assert vqa_accuracy("red", answers) == pytest.approx(0.9)


@pytest.mark.parametrize(
    "matches, expected",
    [
        (0, 0.0),
        (1, 0.3),  # (1 * 0 + 9 * 1/3) / 10
        (2, 0.6),  # (2 * 1/3 + 8 * 2/3) / 10 = (2/3 + 16/3) / 10
        (3, 0.9),  # (3 * 2/3 + 7 * 1) / 10
        (4, 1.0),  # (4 * 1 + 6 * 1) / 10
        (10, 1.0),
    ],
)
def test_accuracy_by_number_of_matches(matches, expected):
    answers = ["cat"] * matches + ["dog"] * (10 - matches)
    assert vqa_accuracy("cat", answers) == pytest.approx(expected)


def test_commas_in_numbers():
    # answers differ, so all are normalised: "1,000" has digit-comma-digit -> "1000"
    answers = ["1,000", "1,000"] + ["one thousand"] * 8  # "one thousand" -> "1 thousand"
    # prediction "1000": M = 2 -> (2 * 1/3 + 8 * 2/3) / 10 = 0.6
    assert vqa_accuracy("1000", answers) == pytest.approx(0.6)
    # a comma between words becomes a space: "red,white" -> "red white"
    assert vqa_accuracy("red white", ["red,white"] * 4 + ["red"] * 6) == 1.0  # M = 4


def test_periods():
    answers = ["dog."] * 4 + ["cat"] * 6  # "dog." -> "dog" (period not before a digit)
    assert vqa_accuracy("dog", answers) == 1.0  # M = 4
    answers = ["3.5"] * 4 + ["4"] * 6  # "3.5" keeps its period
    assert vqa_accuracy("3.5", answers) == 1.0
    assert vqa_accuracy("35", answers) == 0.0


def test_articles():
    answers = ["a dog"] * 4 + ["the dog"] * 3 + ["cat"] * 3  # "a dog", "the dog" -> "dog": M = 7
    assert vqa_accuracy("dog", answers) == 1.0
    assert vqa_accuracy("The dog", answers) == 1.0


def test_contractions():
    answers = ["don't"] * 4 + ["no"] * 6
    assert vqa_accuracy("dont", answers) == 1.0  # "dont" -> "don't"


def test_number_words():
    answers = ["2"] * 2 + ["two"] * 2 + ["3"] * 6  # "two" -> "2": M = 4
    assert vqa_accuracy("Two", answers) == 1.0
    assert vqa_accuracy("eleven", ["11"] * 5 + ["12"] * 5) == 0.0  # only zero..ten are mapped


def test_identical_answers_are_not_normalised_in_official_mode():
    answers = ["yes"] * 10  # all identical: neither side is normalised, compared exactly
    assert vqa_accuracy("yes", answers) == 1.0
    assert vqa_accuracy("Yes", answers) == 0.0
    assert vqa_accuracy("yes.", answers) == 0.0
    assert vqa_accuracy(" yes\n", answers) == 1.0  # "\n" and "\t" -> " " then strip, always
    # one differing answer switches normalisation on for both sides: all ten become "yes"
    assert vqa_accuracy("Yes", ["yes"] * 9 + ["Yes"]) == 1.0


def test_lenient_mode_always_normalises():
    assert vqa_accuracy("Yes", ["yes"] * 10, official=False) == 1.0
    assert vqa_accuracy("yes.", ["yes"] * 10, official=False) == 1.0
    assert vqa_accuracy("The Two dogs!", ["2 dogs"] * 10, official=False) == 1.0


def test_tabs_and_newlines_become_spaces():
    answers = ["red car"] * 4 + ["blue"] * 6
    assert vqa_accuracy("red\tcar", answers) == 1.0
    assert vqa_accuracy("red\ncar", answers) == 1.0


def test_fewer_than_ten_answers_use_the_same_formula():
    # 3 identical entries, prediction equal: each sees 2 others -> 2/3
    assert vqa_accuracy("red", ["red", "red", "red"]) == pytest.approx(2 / 3)
    # 5 entries, 4 match: matching ones see 3 -> 1, the other sees 4 -> 1
    assert vqa_accuracy("red", ["red"] * 4 + ["blue"]) == 1.0


def test_one_answer_is_an_exact_comparison():
    assert vqa_accuracy("red", ["red"]) == 1.0
    assert vqa_accuracy("Red", ["red"]) == 0.0  # one answer: all identical, so not normalised
    assert vqa_accuracy("Red", ["red"], official=False) == 1.0


def test_nothing_to_match_scores_zero():
    assert vqa_accuracy("red", []) == 0.0
    assert vqa_accuracy("", ["", "red"]) == 0.0  # an empty prediction never matches
    assert vqa_accuracy("the", ["a", "an"] * 5) == 0.0  # empty after normalisation
