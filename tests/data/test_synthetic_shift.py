"""The out-of-distribution set: byte-identical for a seed, and shifted from the demo's training set in
exactly the stated ways (more objects, held-out pairs, other wordings), with answers still right."""

from __future__ import annotations

import json
import random
import re
from collections import Counter
from pathlib import Path

import pytest

from vqa_grpo.data.synthetic import MAX_OBJECTS, VOCABULARY, allowed_kinds, synthesize
from vqa_grpo.data.synthetic_shift import HELD_OUT_PAIRS, reword, synthesize_shifted
from vqa_grpo.demo.recognised import recognises
from vqa_grpo.demo.replies import REPLY_WORDS
from vqa_grpo.models.tiny_parts import PROMPT_WORDS

TEMPLATES = (
    r"Is there a \w+ \w+\?",
    r"How many objects are there\?",
    r"How many \w+ objects are there\?",
    r"How many \w+s are there\?",
    r"What color is the \w+\?",
    r"What shape is the \w+ object\?",
    r"Is the \w+ \w+ left or right of the \w+ \w+\?",
)


def _read(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _tree_bytes(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def sets(tmp_path_factory):
    root = tmp_path_factory.mktemp("shift")
    train = _read(synthesize(root / "train", n=300, seed=0, held_out_pairs=HELD_OUT_PAIRS))
    return train, _read(synthesize_shifted(root / "ood", n=90, seed=0)), root


def test_same_seed_same_bytes_and_a_third_per_shift(sets, tmp_path):
    _, ood, root = sets
    assert _tree_bytes(synthesize_shifted(tmp_path / "again", n=90, seed=0).parent) == _tree_bytes(root / "ood")
    assert Counter(r["shift"] for r in ood) == {"crowded": 30, "pairs": 30, "rephrased": 30}
    assert list(ood[0]) == [
        *("id", "image", "question", "answer", "answers", "question_type", "answer_type", "shift", "scene")
    ]


def test_training_scenes_hold_no_held_out_pair_and_at_most_six_objects(sets):
    train, _, _ = sets
    kinds = {(o["color"], o["shape"]) for r in train for o in r["scene"]}
    assert kinds == set(allowed_kinds(HELD_OUT_PAIRS)) and len(kinds) == 12  # 18 pairs less the 6
    assert max(len(r["scene"]) for r in train) == MAX_OBJECTS


def test_each_shift_differs_from_training_in_its_own_way_only(sets):
    train, ood, _ = sets
    held = set(HELD_OUT_PAIRS)
    for r in ood:
        kinds = {(o["color"], o["shape"]) for o in r["scene"]}
        templated = any(re.fullmatch(t, r["question"]) for t in TEMPLATES)
        if r["shift"] == "crowded":
            assert 7 <= len(r["scene"]) <= 9 and not kinds & held and templated
        elif r["shift"] == "pairs":
            assert len(r["scene"]) <= MAX_OBJECTS and templated
            if r["question_type"] == "is there a":  # the asked pair is a held-out one, there or not
                assert tuple(r["question"][len("Is there a ") : -1].split()) in held
            else:  # the object the answer rests on is of a held-out pair
                assert kinds & held
        else:
            assert len(r["scene"]) <= MAX_OBJECTS and not kinds & held and not templated
    assert not {r["question"] for r in ood if r["shift"] == "rephrased"} & {r["question"] for r in train}


def test_ood_answers_follow_from_the_scene_and_are_recognised(sets):
    from test_synthetic import _answer_from_scene  # tests/data is on the path (rootdir-relative import)

    _, ood, _ = sets
    for r in ood:
        if r["shift"] != "rephrased":
            assert _answer_from_scene(r["question"], r["scene"]) == r["answer"], r
        assert recognises(r["answer"], r["question_type"], r["answer"])
        assert recognises(f"it is {r['answer']}", r["question_type"], r["answer"])


def test_rephrased_questions_use_only_words_the_tiny_tokenizers_know(sets):
    _, ood, _ = sets
    known = set(VOCABULARY) | set(PROMPT_WORDS) | set(REPLY_WORDS)
    for r in ood:
        assert set(re.findall(r"\w+|[^\w\s]", r["question"].lower())) <= known, r["question"]


@pytest.mark.parametrize(
    "question, wordings",
    [
        ("Is there a red circle?", {"Is a red circle there?", "Are there red circles?"}),
        ("How many objects are there?", {"How many objects?", "There are how many objects?"}),
        ("How many cyan objects are there?", {"How many cyan objects?", "How many objects are cyan?"}),
        ("How many squares are there?", {"How many squares?", "How many objects are squares?"}),
        ("What color is the circle?", {"What is the color of the circle?", "The circle is what color?"}),
        (
            "What shape is the red object?",
            {"What is the shape of the red object?", "The red object is what shape?"},
        ),
        (
            "Is the red circle left or right of the blue square?",
            {
                "Is the red circle to the left or right of the blue square?",
                "Is the red circle to the left or to the right of the blue square?",
            },
        ),
    ],
)
def test_reword_gives_the_other_wordings(question, wordings):
    rng = random.Random(0)
    assert {reword(question, rng) for _ in range(20)} == wordings


def test_bad_held_out_pairs_raise():
    with pytest.raises(ValueError, match="every colour and every shape"):
        allowed_kinds([("red", "circle"), ("red", "square"), ("red", "triangle")])
    with pytest.raises(ValueError, match="unknown"):
        allowed_kinds([("pink", "circle")])
    with pytest.raises(ValueError, match="not a synthetic question"):
        reword("What is this?", random.Random(0))


def test_data_synth_ood_writes_the_shifted_set_and_refuses_unanswerable(tmp_path, capsys):
    from vqa_grpo.cli import main

    assert main(["data", "synth", "--out", str(tmp_path / "o"), "--n", "6", "--seed", "2", "--ood"]) == 0
    assert capsys.readouterr().out == f"wrote 6 questions to {tmp_path / 'o' / 'data.jsonl'}\n"
    assert Counter(r["shift"] for r in _read(tmp_path / "o" / "data.jsonl")) == {
        "crowded": 2,
        "pairs": 2,
        "rephrased": 2,
    }
    assert main(["data", "synth", "--out", str(tmp_path / "u"), "--ood", "--unanswerable", "0.1"]) == 2
    assert capsys.readouterr().err.startswith("error: --ood takes no --unanswerable")
    assert not (tmp_path / "u" / "data.jsonl").exists()
