"""``vqa-grpo judge EVAL_DIR [EVAL_DIR ...] --data DATA --out DIR``: a page on which a person judges
the models' answers, unnamed and in random order.

Writes two files into DIR:

* ``judge.html``: one self-contained page (images as data URIs, style and script inline, a
  Content-Security-Policy that forbids any other source). Each question shows its image, the
  reference answers, and the answers. In ``grade`` mode each answer is marked right / partly /
  wrong; in ``pairwise`` mode (two evaluations) the person picks the better answer or a tie. The
  marks live in the browser's localStorage under the page's id and leave the page as a JSONL file
  (Export); judge_html.py is the page itself.
* ``key.json``: which evaluation each hidden slot (A, B, ...) of each question holds. It is not in
  the page, so the person judging cannot see it; ``vqa-grpo agreement`` reads it.

What is asked: the question ids every evaluation answered (an id answered twice: its first row),
``n`` of them drawn at random (seeded), in that random order. Grade mode: answers with the same
text (``prediction``, stripped) are shown once as one slot and judged once; the key maps that slot
to every evaluation that gave it. Pairwise mode: a question whose two answers are the same text has
nothing to judge and is not drawn. Each question's slots are shuffled with the same seeded
generator, so the same inputs and seed give the same bytes. The page id is a hash of the mode, the
seed, everything shown and each slot's evaluations by their place in the command line (not their
paths), so judgments exported from another page are recognised as such.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np

from vqa_grpo.errors import UserError
from vqa_grpo.evaluation.compare import load_eval_dir
from vqa_grpo.evaluation.judge_html import DEFAULT_N, MODES, judge_page
from vqa_grpo.evaluation.report import load_thumbnails
from vqa_grpo.evaluation.report_html import answers_text
from vqa_grpo.paths import check_folder

IMAGE_PX = 320
"""The longest side of each image on the page (report.py's thumbnail, larger: a person reads it)."""
PAGE_FILE, KEY_FILE = "judge.html", "key.json"


def _first_rows(rows: list[dict]) -> dict[str, dict]:
    out: dict[str, dict] = {}
    for r in rows:
        out.setdefault(str(r["id"]), r)
    return out


def _answer(row: dict) -> str:
    value = row.get("prediction")
    return value.strip() if isinstance(value, str) else ""


def letters(k: int) -> list[str]:
    """Slot names: A, B, ..., Z, then S27, S28, ... (more than 26 distinct answers is unusual)."""
    return [chr(ord("A") + i) if i < 26 else f"S{i + 1}" for i in range(k)]


def build_items(by_eval: list[dict[str, dict]], mode: str, n: int, seed: int) -> tuple[list[dict], int, int]:
    """The questions asked, in page order; how many ids every evaluation answered; how many of
    those could be asked (pairwise: not those with the same answer twice).

    Each item: {"id", "question", "answers" (the reference text), "question_type", "answer_type",
    "slots": [{"slot", "answer", "evals": [indices into the evaluations]}]}.
    """
    shared = [i for i in by_eval[0] if all(i in rows for rows in by_eval[1:])]
    if mode == "pairwise":  # identical answers: nothing to prefer
        candidates = [i for i in shared if _answer(by_eval[0][i]) != _answer(by_eval[1][i])]
    else:
        candidates = shared
    rng = np.random.default_rng(seed)
    drawn = [candidates[int(j)] for j in rng.permutation(len(candidates))[: min(n, len(candidates))]]
    items = []
    for qid in drawn:
        groups: dict[str, list[int]] = {}
        for e, rows in enumerate(by_eval):
            text = _answer(rows[qid])
            key = text if mode == "grade" else f"{e}\0{text}"  # pairwise: one slot per evaluation
            groups.setdefault(key, []).append(e)
        order = rng.permutation(len(groups))
        answers = list(groups.items())
        slots = [
            {"slot": s, "answer": _answer(by_eval[answers[j][1][0]][qid]), "evals": answers[j][1]}
            for s, j in zip(letters(len(groups)), order)
        ]
        first = by_eval[0][qid]
        items.append(
            {
                "id": qid,
                "question": str(first.get("question", "")),
                "answers": answers_text(first.get("answers", [])),
                "question_type": str(first.get("question_type", "")),
                "answer_type": str(first.get("answer_type", "")),
                "slots": slots,
            }
        )
    return items, len(shared), len(candidates)


def page_id(mode: str, seed: int, items: list[dict]) -> str:
    """16 hex digits of the SHA-256 of the mode, the seed and the items: what the page shows and
    each slot's evaluations by index (the key's questions); the evaluations' paths are not in it."""
    blob = json.dumps({"mode": mode, "seed": seed, "items": items}, sort_keys=True, ensure_ascii=True)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:16]


def _check_out(out: Path, pid: str, overwrite: bool) -> None:
    """Refuse an --out holding another page's key: judgments exported from that page need it."""
    check_folder(out, "--out")
    key = out / KEY_FILE
    if not key.is_file() or overwrite:
        return
    try:
        held = json.loads(key.read_text(encoding="utf-8")).get("page")
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, AttributeError):
        held = None
    if held != pid:
        raise UserError(
            f"--out {out} holds the key of another judge page ({held or 'unreadable'}); the judgments "
            "exported from it need that key: choose another --out, or pass --overwrite to replace it"
        )


def write_judge(
    eval_dirs: list[str],
    out: str,
    data_path: str,
    *,
    n: int = DEFAULT_N,
    seed: int = 0,
    mode: str = "grade",
    overwrite: bool = False,
) -> tuple[Path, dict]:
    """Write DIR/judge.html and DIR/key.json; return the page's path and the key.

    Raises UserError (one line) for a mode that is not grade or pairwise, pairwise with other than
    two evaluations, n < 1, an unreadable evaluation, evaluations that share no question id, data
    that holds none of the questions, or an --out that holds another page's key.
    """
    if mode not in MODES:
        raise UserError(f"--mode {mode!r}: choose grade or pairwise")
    if mode == "pairwise" and len(eval_dirs) != 2:
        raise UserError(f"--mode pairwise compares two evaluations, got {len(eval_dirs)}: give exactly two EVAL_DIRs")
    if n < 1:
        raise UserError(f"--n {n}: give how many questions to ask, at least 1")
    if len(set(map(os.path.abspath, eval_dirs))) != len(eval_dirs):
        raise UserError("the same evaluation directory is given twice: give each EVAL_DIR once")
    if not data_path.startswith("hf:") and not Path(data_path).exists():
        raise UserError(f"--data {data_path} not found: give the data the evaluations ran on (for the images)")
    by_eval = [_first_rows(load_eval_dir(d)[1]) for d in eval_dirs]
    items, n_shared, n_asked = build_items(by_eval, mode, n, seed)
    if n_shared == 0:
        raise UserError(
            "the evaluations share no question id: evaluate every model on the same data "
            "(`vqa-grpo evaluate --data` with the same file)"
        )
    if not items:
        raise UserError(
            f"all {n_shared} shared questions have the same answer from both models: nothing to prefer; "
            "use --mode grade"
        )
    pid = page_id(mode, seed, items)
    out_dir = Path(out)
    _check_out(out_dir, pid, overwrite)
    thumbs, notes = load_thumbnails(data_path, {it["id"] for it in items}, size=IMAGE_PX)
    if not thumbs:
        raise UserError(
            f"none of the {len(items)} questions has an image in --data {data_path}: "
            "give the data the evaluations ran on"
        )
    dropped = [len(rows) - n_shared for rows in by_eval]
    if any(dropped):
        notes.append(f"{sum(dropped)} answer(s) to questions not every evaluation answered are left out")
    if n_asked < n_shared:
        notes.append(f"{n_shared - n_asked} question(s) the two models answered alike are left out: nothing to prefer")
    key = {
        "page": pid,
        "mode": mode,
        "seed": seed,
        "evals": [os.path.relpath(os.path.abspath(d), os.path.abspath(out_dir)) for d in eval_dirs],
        "questions": [{"id": it["id"], "slots": it["slots"]} for it in items],
    }
    page = judge_page(items, thumbs, pid, mode, notes)
    out_dir.mkdir(parents=True, exist_ok=True)
    for name, text in ((PAGE_FILE, page), (KEY_FILE, json.dumps(key, indent=1) + "\n")):
        (out_dir / f"{name}.tmp").write_text(text, encoding="utf-8")
    for name in (KEY_FILE, PAGE_FILE):
        os.replace(out_dir / f"{name}.tmp", out_dir / name)
    return out_dir / PAGE_FILE, key


def format_written(path: Path, key: dict) -> str:
    """Two lines on what ``write_judge`` wrote: the page (``path``) with what it asks, and its key."""
    answers = sum(len(q["slots"]) for q in key["questions"])
    n = len(key["questions"])
    what = f"{answers} answers to grade" if key["mode"] == "grade" else f"{n} pairs to compare"
    return (
        f"wrote {path} (page {key['page']}: {n} questions, {what})\n"
        f"wrote {path.parent / KEY_FILE}: the models behind the slots; keep it for `vqa-grpo agreement`"
    )
