"""data/rephrase.py: each rewrite's exact text on fixed questions, and where none applies."""

from __future__ import annotations

import pytest

from vqa_grpo.data.rephrase import REWRITES, rephrasings


def test_every_rewrite_on_questions_of_its_type():
    assert dict(rephrasings("How many dogs are there on the grass?")) == {
        "number_of": "What is the number of dogs on the grass?",
        "please_answer": "Please answer: How many dogs are there on the grass?",
        "in_this_image": "How many dogs are there on the grass in this image?",
    }
    assert dict(rephrasings("what color is the  car?")) == {  # whitespace runs collapsed
        "which_colour": "Which colour is the car?",
        "please_answer": "Please answer: what color is the car?",
        "in_this_image": "what color is the car in this image?",
    }
    assert rephrasings("Is there a red circle?")[0] == ("can_you_see", "Can you see a red circle?")
    assert rephrasings("What is the man holding?")[0] == ("contraction", "What's the man holding?")
    assert rephrasings("Where is the cat?")[0] == ("contraction", "Where's the cat?")
    # the order is REWRITES' order, whatever applies
    names = [n for n, _ in rephrasings("Are there 3 cats?")]
    assert names == ["can_you_see", "please_answer", "in_this_image"]
    assert names == [n for n in REWRITES if n in names]


def test_rewrites_that_could_change_the_answer_are_left_out():
    # a negation: "can you see no milk?" is not asked the same way
    assert [n for n, _ in rephrasings("Is there no milk?")] == ["please_answer", "in_this_image"]
    # the picture is already named: no second "in this image"
    assert [n for n, _ in rephrasings("Is there a dog in the photo?")] == ["can_you_see", "please_answer"]
    # "how many ... are there" only: the verb of other counting questions stays
    assert "number_of" not in dict(rephrasings("How many people are sitting?"))


@pytest.mark.parametrize(
    "question",
    ["Read the sign.", "Which is bigger? A or B?", "What is shown?\nA. cat\nB. dog", "", "?"],
)
def test_no_rewrite_applies_outside_a_single_question(question):
    assert rephrasings(question) == []
