"""``vqa-grpo report``: one self-contained report.html from a hand-made run directory.

``make_run`` writes what a run leaves behind: metrics.jsonl lines (training and eval, a resumed
step written twice, one broken line), before/after evaluate outputs written by evaluate's own
writer, and a small data set copied from the synthetic one with one corrupt image.
test_report_browser.py renders the same run in Chromium.
"""

from __future__ import annotations

import base64
import io
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vqa_grpo.data.types import VQAExample
from vqa_grpo.errors import UserError
from vqa_grpo.evaluation.evaluate import summarise, write_outputs
from vqa_grpo.evaluation.report import PLOTS, read_training_log, write_report

N_GOOD = 12
# per question i: (VQA accuracy before, after); gain = after - before
SCORES = [(0, 1), (1, 0), (0, 0.3), (1, 1), (0, 0), (0.3, 1), (0, 1), (1, 0.6), (0, 0), (0, 1), (1, 1), (0.6, 0)]
TRAIN_LINES = [
    {
        "step": 1,
        "loss": 0.5,
        "reward": 0.1,
        "reward/vqa_accuracy": 0.05,
        "reward/composite": 0.15,
        "kl": 0.0,
        "completion_length": 4.0,
        "entropy": 2.0,
    },
    {"step": 2, "loss": 9.9, "reward": 9.9, "kl": 9.9, "completion_length": 9.9},  # replaced on resume
    {
        "step": 2,
        "loss": 0.4,
        "reward": 0.2,
        "reward/vqa_accuracy": 0.1,
        "reward/composite": 0.3,
        "kl": 0.01,
        "completion_length": 3.5,
        "entropy": 1.8,
    },
    {"step": 2, "eval/vqa_accuracy": 0.3, "eval/composite": 0.4},
    {
        "step": 3,
        "loss": 0.3,
        "reward": 0.3,
        "reward/vqa_accuracy": 0.2,
        "reward/composite": 0.4,
        "kl": 0.02,
        "completion_length": 3.0,
        "entropy": 1.5,
    },
    {"step": 3, "eval/vqa_accuracy": 0.35, "eval/composite": 0.45},
]


def make_run(root: Path, synth_dir: Path, *, eval_lines: bool = True) -> dict:
    """A run dir, before/after eval dirs and a data dir under ``root``; returns their paths and the gains."""
    data = root / "data"
    (data / "images").mkdir(parents=True)
    rows = [json.loads(line) for line in (Path(synth_dir) / "data.jsonl").read_text().splitlines()[:N_GOOD]]
    for row in rows:
        shutil.copy(Path(synth_dir) / row["image"], data / row["image"])
    broken = {**rows[0], "id": "broken", "image": "images/broken.png"}
    (data / "images" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really a png")
    (data / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in [*rows, broken]))

    ids = [r["id"] for r in rows] + ["broken"]
    examples = [
        VQAExample(r["id"], r["question"], r["answers"], r["answer"], r["answer_type"], r["question_type"])
        for r in [*rows, broken]
    ]
    scores = SCORES + [(0, 0)]
    out = {"data": str(data), "gains": {i: a - b for i, (b, a) in zip(ids, scores)}}
    for side, col in (("before", 0), ("after", 1)):
        acc = np.array([s[col] for s in scores], dtype=float)
        preds = [e.answer if s[col] == 1 else f"wrong <{side}>" for e, s in zip(examples, scores)]
        metric = {"vqa_accuracy": acc, "composite": acc * 0.9}
        write_outputs(root / side, examples, preds, preds, metric, summarise(metric, examples, samples=50))
        out[side] = str(root / side)

    run = root / "run"
    run.mkdir()
    lines = [json.dumps(r) for r in TRAIN_LINES if eval_lines or not any(k.startswith("eval/") for k in r)]
    (run / "metrics.jsonl").write_text("\n".join(lines[:2] + ["{not json"] + lines[2:]) + "\n")
    (run / "config.yaml").write_text("train:\n  max_steps: 3\n")
    out["run"] = str(run)
    return out


@pytest.fixture
def run(tmp_path, synth_dir):
    return make_run(tmp_path, synth_dir)


def gallery_ids(page: str) -> list[str]:
    return re.findall(r'<tr data-id="([^"]+)"', page)


def test_report_is_one_self_contained_file(run):
    path = write_report(run["run"], before=run["before"], after=run["after"], data_path=run["data"], out=None)
    assert path == Path(run["run"]) / "report.html"
    page = path.read_text()
    # every src is a data URI; nothing links out
    sources = re.findall(r"""\ssrc\s*=\s*["']?([^"' >]*)""", page)
    assert sources and all(s.startswith("data:image/") for s in sources)
    assert not re.search(r"\shref\s*=", page)
    assert "http://" not in page and "https://" not in page
    assert "<link" not in page and "@import" not in page and "url(" not in page
    # six plots embedded as PNG, and written beside the report
    assert page.count("data:image/png;base64,") == len(PLOTS)
    for name, *_ in PLOTS:
        with Image.open(Path(run["run"]) / "plots" / f"{name}.png") as im:
            assert im.format == "PNG" and im.width > 100
    # the gallery: every joined question once, largest gain first; the corrupt image is skipped
    ids = gallery_ids(page)
    assert sorted(ids) == sorted(run["gains"])
    assert ids == sorted(run["gains"], key=lambda i: (-run["gains"][i], i))
    thumbs = re.findall(r'src="data:image/jpeg;base64,([^"]+)"', page)
    assert len(thumbs) == N_GOOD
    with Image.open(io.BytesIO(base64.b64decode(thumbs[0]))) as im:
        assert max(im.size) <= 128
    assert page.count("no image") == 1
    assert "wrong &lt;before&gt;" in page and "<before>" not in page  # answers are escaped
    # the per-type tables, with before, after and the paired difference
    for text in ("Per answer type", "Per question type", "how many", "yes/no", "after \u2212 before", "95% CI"):
        assert text in page
    assert "1 unreadable line(s) in metrics.jsonl" in page
    assert "max_steps: 3" in page


def test_overall_row_holds_metrics_and_paired_difference(run):
    page = write_report(run["run"], before=run["before"], after=run["after"], data_path=None, out=None).read_text()
    row = re.search(r"<tr><td>overall</td>(.*?)</tr>", page).group(1)
    cells = re.findall(r"<td class=num>([^<]*)</td>", row)
    n, before, _, after, _, _, diff, _, _ = cells
    # before: (0+1+0+1+0+0.3+0+1+0+0+1+0.6+0) / 13 = 4.9/13; after: 6.9/13; all 13 questions are shared
    assert n == "13"
    assert before == f"{100 * 4.9 / 13:.1f}" and after == f"{100 * 6.9 / 13:.1f}"
    assert diff == f"{100 * 2.0 / 13:+.1f}"
    assert "no --data: the gallery has no images" in page


def test_works_with_what_exists(tmp_path, synth_dir):
    run = make_run(tmp_path, synth_dir, eval_lines=False)
    out = tmp_path / "elsewhere" / "r.html"
    page = write_report(run["run"], before=None, after=run["after"], data_path=run["data"], out=str(out)).read_text()
    assert out.is_file() and not (Path(run["run"]) / "report.html").exists()
    assert "(no eval lines in metrics.jsonl)" in page
    assert "<th>before</th>" not in page and "largest gains" not in page and "highest score" in page
    assert len(gallery_ids(page)) == N_GOOD + 1

    empty = tmp_path / "empty"  # a run stopped before its first log line: config.yaml only
    empty.mkdir()
    (empty / "config.yaml").write_text("train:\n  max_steps: 3\n")
    page = write_report(str(empty), before=None, after=None, data_path=None, out=None).read_text()
    assert "no metrics.jsonl" in page and "No evaluation given" in page and "No predictions to show" in page
    assert len(list((empty / "plots").glob("*.png"))) == len(PLOTS)


def test_gallery_keeps_the_largest_gains_and_losses(run):
    page = write_report(
        run["run"], before=run["before"], after=run["after"], data_path=None, out=None, max_examples=6
    ).read_text()
    ids = gallery_ids(page)
    by_gain = sorted(run["gains"], key=lambda i: (-run["gains"][i], i))
    assert len(ids) == 6
    assert ids[:2] == by_gain[:2] and ids[-2:] == by_gain[-2:]
    assert "6 of 13 questions" in page


def test_bad_paths_are_one_line_user_errors(run, tmp_path):
    for kwargs in (
        {"run_dir": str(tmp_path / "nope")},
        {"run_dir": run["run"], "after": str(tmp_path / "nope")},
        {"run_dir": run["run"], "before": run["run"], "after": run["after"]},
    ):
        with pytest.raises(UserError) as info:
            write_report(**{"before": None, "after": None, "data_path": None, "out": None, **kwargs})
        assert "\n" not in str(info.value)


def test_training_log_keeps_the_last_record_of_each_step(run):
    train, evals, bad = read_training_log(Path(run["run"]) / "metrics.jsonl")
    assert [r["step"] for r in train] == [1, 2, 3] and [r["step"] for r in evals] == [2, 3]
    assert train[1]["loss"] == 0.4  # the resumed run's line, not the 9.9 written before the crash
    assert bad == 1
