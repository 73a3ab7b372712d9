"""The benchmark metrics equal the reference code on a fixed sample of its outputs.

tests/rewards/data/metrics_reference.json holds 230 cases (50 per metric; 10 for each of
lmms-eval's TextVQA, OK-VQA and VizWiz forms of the VQA accuracy) with the values the
reference functions returned, written by the command in its "command" field
(scripts/check_metrics_reference.py, which compares 6,000 cases per metric and documents how to
place the reference files); "sources" names the commits. A case marked "deviation" is one where
vqa-grpo differs on purpose (docs/metrics.md); there the value it gives is recorded as "ours".
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from vqa_grpo.rewards import anls, exact_match, relaxed_accuracy, vqa_accuracy

FIXTURE = json.loads((Path(__file__).parent / "data" / "metrics_reference.json").read_text(encoding="utf-8"))
OURS = {
    "anls": anls,
    "relaxed_accuracy": relaxed_accuracy,
    "exact_match": exact_match,
    "vqa_accuracy": lambda p, g: vqa_accuracy(p, g, convention="lmms_eval"),
    **{
        f"vqa_accuracy/{b}": lambda p, g, b=b: vqa_accuracy(p, g, convention="lmms_eval", benchmark=b)
        for b in ("textvqa", "okvqa", "vizwiz")
    },
}


def test_the_fixture_names_its_command_and_sources():
    assert FIXTURE["command"].startswith("python scripts/check_metrics_reference.py")
    assert "75571cfe0fa36ca5ec2e6aa2bb268f9d38295af3" in FIXTURE["sources"]["lmms-eval"]
    assert {c["metric"] for c in FIXTURE["cases"]} == set(OURS) and len(FIXTURE["cases"]) == 230


@pytest.mark.parametrize("metric", sorted(OURS))
def test_equal_to_the_reference(metric):
    cases = [c for c in FIXTURE["cases"] if c["metric"] == metric]
    for case in cases:
        got = OURS[metric](case["prediction"], case["answers"])
        expected = case["ours"] if "deviation" in case else case["reference"]
        assert got == expected, case  # exactly: same arithmetic, same rounding
    assert sum("deviation" not in c for c in cases) >= len(cases) * 0.8


VQAEVAL = json.loads((Path(__file__).parent / "data" / "vqaeval_reference.json").read_text(encoding="utf-8"))


def test_the_official_convention_equals_vqaeval_py():
    """40 cases with the per-question accuracy vqaEval.py gave under Python 2 (the fixture's
    "command", scripts/check_vqaeval_reference.py, compares 6,600), as floats: its sum-then-divide
    gives 0.6000000000000001 where a closed form gives 0.6."""
    assert VQAEVAL["command"].startswith("python scripts/check_vqaeval_reference.py")
    assert "a013f0043c1e2cdc995922dfe257f7149aa9af06" in VQAEVAL["source"] and len(VQAEVAL["cases"]) == 40
    for case in VQAEVAL["cases"]:
        assert vqa_accuracy(case["prediction"], case["answers"]) == case["reference"], case
