"""``vqa-grpo judge``: the page and its key from hand-made evaluations, and the refusals.

``make_evals`` writes two evaluations of three synthetic questions with evaluate's own writer:
question 0 one right and one wrong answer, question 1 the same right answer from both (one slot),
question 2 two wrong answers. test_judge_browser.py judges that page in Chromium.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from vqa_grpo import cli
from vqa_grpo.data.types import VQAExample
from vqa_grpo.evaluation.evaluate import summarise, write_outputs

# per eval, the answer to each of the first three synthetic questions: its own answer (None) or a wrong one
ANSWERS = {"base": [None, None, "no such thing"], "grpo": ["nothing", None, "close guess"]}
# hand-set semantic similarity of the wrong answers: "close guess" is close for this metric
SEMANTIC = {"no such thing": 0.3, "nothing": 0.3, "close guess": 0.85}


def make_evals(root: Path, synth_dir: Path) -> dict:
    """Two evaluations and the data; "plan": {(question id, answer): the label a person gives it}."""
    rows = [json.loads(line) for line in (Path(synth_dir) / "data.jsonl").read_text().splitlines()[:3]]
    examples = [
        VQAExample(r["id"], r["question"], r["answers"], r["answer"], r["answer_type"], r["question_type"])
        for r in rows
    ]
    out = {"data": str(synth_dir), "ids": [e.id for e in examples], "plan": {}}
    for name, given in ANSWERS.items():
        preds = [g or e.answer for g, e in zip(given, examples)]
        right = np.array([float(g is None) for g in given])
        semantic = np.array([SEMANTIC.get(g, 1.0) for g in given])
        scores = {"vqa_accuracy": right, "composite": 0.9 * right, "semantic": semantic}
        write_outputs(root / name, examples, preds, preds, scores, summarise(scores, examples, samples=20))
        out[name] = str(root / name)
    (a, b, _), ids = examples, out["ids"]
    out["plan"] = {
        (ids[0], a.answer): "right",
        (ids[0], "nothing"): "wrong",
        (ids[1], b.answer): "partly",  # both evaluations' answer: one slot
        (ids[2], "no such thing"): "wrong",
        (ids[2], "close guess"): "right",  # the metrics' wrong answer that a person accepts
    }
    return out


@pytest.fixture
def evals(tmp_path, synth_dir):
    return make_evals(tmp_path, synth_dir)


def judge(evals, out, *extra) -> int:
    return cli.main(["judge", evals["base"], evals["grpo"], "--data", evals["data"], "--out", str(out), *extra])


def test_page_and_key(evals, tmp_path, capsys):
    assert judge(evals, tmp_path / "page") == 0
    assert "3 questions, 5 answers to grade" in capsys.readouterr().out
    page = (tmp_path / "page" / "judge.html").read_text()
    key = json.loads((tmp_path / "page" / "key.json").read_text())
    assert key["mode"] == "grade" and key["evals"] == ["../base", "../grpo"]
    assert sorted(q["id"] for q in key["questions"]) == evals["ids"]
    slots = {q["id"]: {s["answer"]: s["evals"] for s in q["slots"]} for q in key["questions"]}
    (q0, a0), _, (q1, a1), _, _ = evals["plan"]
    assert slots == {
        q0: {a0: [0], "nothing": [1]},
        q1: {a1: [0, 1]},  # the same answer: one slot, both evaluations
        evals["ids"][2]: {"no such thing": [0], "close guess": [1]},
    }
    # self-contained, models unnamed, every item on the page in the key's order
    sources = re.findall(r"""\ssrc\s*=\s*["']?([^"' >]*)""", page)
    assert len(sources) == 3 and all(s.startswith("data:image/jpeg;base64,") for s in sources)
    text = re.sub(r'src="data:[^"]*"', "", page).replace("vqa-grpo", "")
    assert "http://" not in text and "https://" not in text and "<link" not in text
    assert "base" not in text and "grpo" not in text and "../" not in text  # no eval dir is named
    shown = re.findall(r'data-q="([^"]+)" data-slot="([^"]*)"', page)
    assert shown == [(q["id"], s["slot"]) for q in key["questions"] for s in q["slots"]]
    assert f'data-page="{key["page"]}"' in page
    # the same inputs and seed: the same bytes; another seed: another page
    assert judge(evals, tmp_path / "again") == 0
    assert (tmp_path / "again" / "judge.html").read_text() == page
    assert judge(evals, tmp_path / "other", "--seed", "1") == 0
    assert json.loads((tmp_path / "other" / "key.json").read_text())["page"] != key["page"]


def test_pairwise_leaves_out_identical_answers(evals, tmp_path, capsys):
    assert judge(evals, tmp_path / "pair", "--mode", "pairwise", "--n", "1") == 0
    key = json.loads((tmp_path / "pair" / "key.json").read_text())
    assert len(key["questions"]) == 1 and key["questions"][0]["id"] in (evals["ids"][0], evals["ids"][2])
    assert sorted(s["slot"] for s in key["questions"][0]["slots"]) == ["A", "B"]
    assert "1 questions, 1 pairs to compare" in capsys.readouterr().out
    assert "1 question(s) the two models answered alike are left out" in (tmp_path / "pair" / "judge.html").read_text()


@pytest.mark.parametrize(
    "args, message",
    [
        (["--mode", "pairwise", "EXTRA"], "--mode pairwise compares two evaluations, got 3"),
        (["--n", "0"], "--n 0: give how many questions to ask"),
        (["--data", "/nonexistent"], "--data /nonexistent not found"),
        (["SAME"], "the same evaluation directory is given twice"),
        (["OTHER"], "the evaluations share no question id"),
    ],
)
def test_bad_input_is_one_line(evals, tmp_path, capsys, args, message):
    extra = []
    if "EXTRA" in args or "SAME" in args:
        extra = [evals["base"]]
    if "OTHER" in args:
        other = tmp_path / "other"
        other.mkdir()
        (other / "metrics.json").write_text("{}")
        (other / "predictions.jsonl").write_text(json.dumps({"id": "elsewhere", "prediction": "x"}) + "\n")
        extra = [str(other)]
    rest = [a for a in args if a not in ("EXTRA", "SAME", "OTHER")]
    code = cli.main(
        ["judge", evals["base"], evals["grpo"], *extra, "--data", evals["data"], "--out", str(tmp_path / "p"), *rest]
    )
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: ") and message in err and err.count("\n") == 1
    assert not (tmp_path / "p").exists()


def test_another_pages_key_is_kept(evals, tmp_path, capsys):
    assert judge(evals, tmp_path / "page") == 0
    key = (tmp_path / "page" / "key.json").read_text()
    assert judge(evals, tmp_path / "page", "--seed", "1") == 2
    assert "holds the key of another judge page" in capsys.readouterr().err
    assert (tmp_path / "page" / "key.json").read_text() == key
    assert judge(evals, tmp_path / "page", "--seed", "1", "--overwrite") == 0
