"""recognised: exactly one of the family's candidate answers in the reply, the right one; and the
base's sentence replies, which recognise the answer and score 0 under VQA accuracy."""

import json
import random

import pytest

from vqa_grpo.data.synthetic import synthesize
from vqa_grpo.demo.recognised import FAMILY_OF_QUESTION_TYPE, recognised_share, recognises
from vqa_grpo.demo.replies import base_reply, sentence_reply
from vqa_grpo.rewards import vqa_accuracy


@pytest.mark.parametrize(
    "reply, question_type, answer, expected",
    [
        ("The circle is red.", "what color is the", "red", True),
        ("red", "what color is the", "red", True),
        ("blue", "what color is the", "red", False),
        ("red or blue", "what color is the", "red", False),  # two candidates: no choice made
        ("reddish", "what color is the", "red", False),  # whole words only
        ("There are three.", "how many", "3", True),  # the official normalisation: three -> 3
        ("No, there is no red circle.", "is there a", "no", True),  # "no" twice, one candidate
        ("yes no", "is there a", "no", False),
        ("", "what", "circle", False),
        ("The red circle is to the left of the blue square.", "is the", "left", True),
        ("There is none.", "how many", "0", True),  # VQA maps "none" to 0
    ],
)
def test_recognises(reply, question_type, answer, expected):
    assert recognises(reply, question_type, answer) is expected


def test_share_reads_prediction_rows_raw_replies():
    rows = [
        {"raw": "The square is cyan.", "question_type": "what color is the", "answers": ["cyan"]},
        {"raw": "cyan green", "question_type": "what color is the", "answers": ["cyan"]},
        {"raw": "2", "question_type": "how many", "answers": ["2"]},
        {"raw": "right", "question_type": "is the", "answers": ["left"]},
    ]
    assert recognised_share(rows) == 0.5
    assert recognised_share([]) != recognised_share([])  # NaN


def test_every_question_type_of_the_generator_has_a_family(tmp_path):
    rows = [json.loads(x) for x in synthesize(tmp_path, n=60, seed=3).read_text().splitlines()]
    assert {r["question_type"] for r in rows} == set(FAMILY_OF_QUESTION_TYPE)


def test_sentence_replies_recognise_the_answer_and_score_zero(tmp_path):
    rows = [json.loads(x) for x in synthesize(tmp_path, n=200, seed=4).read_text().splitlines()]
    for r in rows:
        reply = sentence_reply(r["question"], r["question_type"], r["answer"])
        assert recognises(reply, r["question_type"], r["answer"]), reply
        assert vqa_accuracy(reply, r["answers"]) == 0.0, reply


def test_sentence_replies_read_as_written():
    assert sentence_reply("How many circles are there?", "how many", "1") == "There is 1 circle."
    assert sentence_reply("How many red objects are there?", "how many", "0") == "There are 0 red objects."
    assert sentence_reply("Is there a red circle?", "is there a", "yes") == "Yes, there is a red circle."
    assert sentence_reply("What shape is the red object?", "what", "circle") == "The red object is a circle."
    with pytest.raises(ValueError, match="not a synthetic question"):
        sentence_reply("What is this?", "what", "cat")


def test_base_reply_mixes_sentences_at_the_share():
    rng = random.Random(0)
    replies = [base_reply("What color is the circle?", "what color is the", "red", rng, 0.6) for _ in range(2000)]
    assert set(replies) == {"red", "The circle is red."}
    assert replies.count("The circle is red.") / 2000 == pytest.approx(0.6, abs=0.03)
