"""The benchmarks' metrics (ANLS, relaxed accuracy, GQA's exact match, multiple choice) and the two
VQA accuracy conventions, on hand-computed cases; as rewards, as metrics, and through ``score``."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from vqa_grpo.cli import main
from vqa_grpo.config import RewardConfig
from vqa_grpo.config_load import load_config
from vqa_grpo.rewards import (
    anls,
    compute_rewards,
    exact_match,
    multiple_choice,
    relaxed_accuracy,
    score_predictions,
    vqa_accuracy,
)
from vqa_grpo.rewards.anls import levenshtein
from vqa_grpo.rewards.normalize import evalai_answer, evalai_normalize, normalize_answer


def test_levenshtein_by_hand():
    assert levenshtein("kitten", "sitting") == 3  # k->s, e->i, +g
    assert (levenshtein("", "abc"), levenshtein("abc", ""), levenshtein("same", "same")) == (3, 3, 0)
    assert levenshtein("a" * 300, "b" * 300) == 300  # past the cached length: the same programme


def test_anls_by_hand():
    assert anls("1/8/93", ["1/8/93", "1/8/1993"]) == 1.0  # the best accepted answer counts
    assert anls("Dear Dr. Lobo", ["Dear Dr Lobo"]) == 1 - 1 / 13  # one deletion in max(12, 13) characters
    assert anls("abcdef", ["abcxyz"]) == 0.5  # 3 edits in 6: at the threshold, kept
    assert anls("abcdef", ["abwxyz"]) == 0.0  # 4 edits in 6: 1/3 < 0.5
    # the length is the unnormalised one: " abc " is 5 long, so one edit costs 1/5, not 1/3
    assert anls(" abc ", ["abd"]) == 0.8
    assert anls("straße", ["strasse"]) == 1 - 2 / 7  # "STRASSE" is 7 long upper-cased; 2 edits
    assert anls("RED", ["red"]) == 1.0


def test_relaxed_accuracy_by_hand():
    assert relaxed_accuracy("12.6", ["12.5"]) == 1.0  # 0.8% off
    assert relaxed_accuracy("13.2", ["12.5"]) == 0.0  # 5.6% off
    assert relaxed_accuracy("-5", ["-5.2"]) == 1.0  # 3.8% of |t|
    assert relaxed_accuracy("12.5%", ["0.125"]) == 1.0  # a percentage is a fraction
    assert relaxed_accuracy("12.5%", ["12.5"]) == 0.0  # ... so it is not 12.5
    assert relaxed_accuracy("1e3", ["1000"]) == 1.0
    assert relaxed_accuracy("0", ["0"]) == 1.0 and relaxed_accuracy("0.0", ["0"]) == 0.0  # a zero target: text
    assert relaxed_accuracy("5 kg", ["5"]) == 0.0  # not a number, not the same text
    assert relaxed_accuracy("Yes", ["yes"]) == 1.0 and relaxed_accuracy("yes ", ["yes"]) == 0.0  # no stripping
    assert relaxed_accuracy("nan", ["nan"]) == 0.0  # both numbers; |nan - nan| / nan is no tolerance
    assert relaxed_accuracy("10", ["7", "10.4"]) == 1.0  # the best answer counts


def test_exact_match_by_hand():
    assert exact_match("Yes.", ["yes"]) == 1.0 and exact_match("t-shirt", ["tshirt"]) == 1.0
    assert exact_match("yes ", ["yes"]) == 0.0  # whitespace counts
    assert exact_match("«yes»", ["yes"]) == 0.0  # only ASCII punctuation is ignored
    assert exact_match("İ", ["i"]) == 1.0  # NumPy keeps "İ".lower() to one character
    assert exact_match("red car", ["blue", "Red car!"]) == 1.0


def test_multiple_choice_by_hand(caplog):
    right = ["B", "a red car"]
    for pred in ("B", "b", "(B)", "B.", "B)", "B: a red car", "(B) a red car", "a red car", " A Red  Car. "):
        assert multiple_choice(pred, right) == 1.0, pred
    for pred in ("A", "A. a red car", "a blue car", "C) a red car", "red car"):
        assert multiple_choice(pred, right) == 0.0, pred
    with caplog.at_level(logging.WARNING, logger="vqa_grpo.rewards"):
        assert multiple_choice("a red car", ["a red car"]) == 0.0  # no letter: not a multiple-choice example
    assert "1 references not [choice letter, choice text]" in caplog.text


def test_bad_input_scores_0_and_is_counted(caplog):
    with caplog.at_level(logging.WARNING, logger="vqa_grpo.rewards"):
        values = [f(None, ["x"]) for f in (anls, relaxed_accuracy, exact_match)]
        values += [f("  ", [" "]) for f in (anls, relaxed_accuracy, exact_match)]  # lmms-eval: 1, 1, 1
        values += [f("x", []) for f in (anls, relaxed_accuracy, exact_match)]
    assert values == [0.0] * 9
    assert caplog.text.count("prediction None") == 3 and caplog.text.count("empty reference list") == 3


def test_a_metric_on_data_without_answers_is_one_line():
    from vqa_grpo.errors import UserError
    from vqa_grpo.rewards.benchmark import check_metrics_fit

    check_metrics_fit(["vqa_accuracy", "composite"], [[], []], "data x")  # not a benchmark metric: no check
    with pytest.raises(UserError) as e:  # a split without answers (a Hub test split)
        check_metrics_fit(["relaxed_accuracy"], [[], []], "data x")
    assert str(e.value) == (
        "relaxed_accuracy needs reference answers, and no example of data x has one; "
        "evaluate on a split with answers, or drop the metric"
    )


def test_the_two_vqa_conventions():
    yes = ["yes"] * 10
    assert vqa_accuracy("Yes", yes) == 0.0  # official: identical answers are not normalised
    assert vqa_accuracy("Yes", yes, convention="lmms_eval") == 1.0  # lmms-eval always normalises
    # "1,,000": lmms-eval's digit-comma pattern takes repeated commas (-> "1000"); vqaEval.py's does not
    # (each comma becomes a space -> "1 000"). 9 of 10 answers match: every leave-one-out set holds >= 3.
    answers = ["1000"] * 9 + ["one thousand"]
    assert vqa_accuracy("1,,000", answers) == 0.0 and vqa_accuracy("1,,000", answers, convention="lmms_eval") == 1.0
    assert normalize_answer("٣.٥") == "٣٥" and evalai_normalize("٣.٥") == "٣.٥"  # Unicode digits
    assert evalai_answer("The dog's bone, right?") == "dog 's bone right"  # TextVQA's processor call
    assert vqa_accuracy("?", ["?"] * 10, convention="lmms_eval") == 1.0  # both normalise to "", as lmms-eval
    assert vqa_accuracy("3", ["3"] * 3, convention="lmms_eval") == 2 / 3  # leave-one-out: 2 of 3 others
    assert vqa_accuracy("red", ["red"], convention="lmms_eval") == 1.0  # one answer: lmms-eval gives 0
    # lmms-eval's TextVQA, OK-VQA and VizWiz tasks call the processor whole: "?" is deleted first
    unanswerable = ["Unanswerable"] * 10
    assert vqa_accuracy("Unanswera?ble", unanswerable, convention="lmms_eval") == 0.0  # "unanswera ble"
    assert vqa_accuracy("Unanswera?ble", unanswerable, convention="lmms_eval", benchmark="vizwiz") == 1.0
    with pytest.raises(ValueError, match="convention='vlmevalkit'; choose one of official, lmms_eval"):
        vqa_accuracy("x", ["x"], convention="vlmevalkit")


def test_each_is_a_reward_component_and_a_metric():
    preds = ["Dear Dr Lobo", "12.6", "Yes.", "B"]
    answers = [["Dear Dr. Lobo"], ["12.5"], ["yes"], ["B", "a red car"]]
    types = ["other"] * 4
    names = ["anls", "relaxed_accuracy", "exact_match", "multiple_choice"]
    # "12.6"/"12.5" and "yes."/"yes": 1 edit in 4 characters; "B" equals the answer "B" as text;
    # only the last example is a multiple-choice one (the others score 0 there and are counted)
    expected = {
        "anls": [1 - 1 / 13, 0.75, 0.75, 1.0],
        "relaxed_accuracy": [0.0, 1.0, 0.0, 1.0],
        "exact_match": [1.0, 0.0, 1.0, 1.0],
        "multiple_choice": [0.0, 0.0, 0.0, 1.0],
    }
    for name in names:
        got = compute_rewards(preds, answers, types, RewardConfig(components=[name], weights=None))
        assert got.total.tolist() == expected[name] and got.parts[name].tolist() == expected[name], name
    scores = score_predictions(preds, answers, types, metrics=names)
    assert {k: scores[k].tolist() for k in names} == expected
    assert "exact_match" not in score_predictions(preds, answers, types)  # asked for only


def test_the_reward_follows_the_convention():
    answers = [["1000"] * 9 + ["one thousand"]]
    for convention, expected in (("lmms_eval", 1.0), ("official", 0.0)):  # official: its lenient form
        cfg = load_config(None, ["reward.components=[vqa_accuracy]", f"eval.vqa_convention={convention}"])
        scored = compute_rewards(["1,,000"], answers, ["number"], cfg.reward, vqa_convention=cfg.eval.vqa_convention)
        assert scored.total.tolist() == [expected]  # as the trainer scores (training/steps.py)
    assert not hasattr(cfg.reward, "vqa_convention")  # the config itself is left as it was


def test_score_with_metrics_and_convention(tmp_path, capsys):
    path = tmp_path / "p.jsonl"
    rows = [{"prediction": "Yes", "answers": ["yes"] * 10}, {"prediction": "1/8/93", "answers": ["1/8/93", "x"]}]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    assert main(["score", str(path), "--metric", "anls", "--vqa-convention", "lmms_eval", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["vqa_convention"] == "lmms_eval"
    assert out["metrics"]["overall"]["anls"] == 1.0
    # "1/8/93" against ["1/8/93", "x"]: leaving out the match leaves 0 matches, leaving out "x" 1: (0 + 1/3) / 2
    assert out["metrics"]["overall"]["vqa_accuracy"] == pytest.approx((1.0 + 1 / 6) / 2)
    # a benchmark adds its metric and, under lmms_eval, its task's form
    assert main(["score", str(path), "--benchmark", "DocVQA", "--json"]) == 0  # lmms_eval: as evaluate's default
    out = json.loads(capsys.readouterr().out)
    assert out["benchmark"] == "docvqa" and out["metrics"]["overall"]["anls"] == 1.0
    assert out["vqa_convention"] == "lmms_eval"
    # each group's 95% intervals, as metrics.json's: VQA accuracy's and the benchmark metric's
    assert out["metrics"]["overall"]["ci95"] == {"vqa_accuracy": [1 / 6, 1.0], "anls": [1.0, 1.0]}
    assert main(["score", str(path), "--benchmark", "docvqa"]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == (
        "95% CI overall (bootstrap over rows): vqa_accuracy [16.67, 100.00], anls [100.00, 100.00]"
    )
    assert main(["score", str(path), "--benchmark", "nope"]) == 2
    assert capsys.readouterr().err.startswith("error: --benchmark 'nope' is not a known benchmark; choose one of")
    assert main(["score", str(path), "--metric", "multiple_choice"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: multiple_choice needs each example's answers as [choice letter, choice text]")
    assert err.count("\n") == 1


@pytest.mark.parametrize(
    "name, metric, old, new",
    [
        # per row in docs/metrics.md: VQA accuracy 1/6 for a right answer given two accepted forms
        ("docvqa_like", "anls", (0.1875, 0.5625), (1 + (1 - 1 / 13) + 1 + 1) / 8),
        ("chartqa_like", "relaxed_accuracy", (0.25, 0.4), 0.75),
    ],
)
def test_the_old_and_new_figures_of_docs_metrics(name, metric, old, new, capsys):
    path = Path(__file__).parent / "data" / f"{name}.jsonl"
    assert main(["score", str(path), "--metric", metric, "--json"]) == 0
    overall = json.loads(capsys.readouterr().out)["metrics"]["overall"]
    assert (overall["vqa_accuracy"], overall["composite"]) == pytest.approx(old)
    assert overall[metric] == pytest.approx(new)


def test_the_score_command_offers_every_benchmark_metric():
    from vqa_grpo.cli import build_parser
    from vqa_grpo.rewards import BENCHMARK_METRICS

    score = build_parser()._subparsers._group_actions[0].choices["score"]
    metric = next(a for a in score._actions if a.dest == "metric")
    assert tuple(metric.choices) == tuple(BENCHMARK_METRICS)
