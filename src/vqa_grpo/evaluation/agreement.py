"""``vqa-grpo agreement JUDGMENTS.jsonl [...] --judge-dir DIR``: how well each automated metric agrees
with the people who judged the answers on a ``vqa-grpo judge`` page.

DIR is the page's folder: its key.json names the page, the evaluations (paths relative to DIR)
and which evaluation each hidden slot holds. Every judgment must come from that page (its
``page``, question and slot are in the key). A judge who marked an answer twice (two exports):
the later mark counts. Lines that are not a judgment are skipped and counted.

Grade mode: a judged answer scores 1 (right), 0.5 (partly) or 0 (wrong) for the people; for the
two-way measures it is right when it scores >= 0.5, so **partly counts as right**, as an answer
with VQA accuracy 0.5 does. Each metric says right when its score >= its threshold
(agreement_scores.py). Per metric: accuracy and Cohen's kappa of the two right/wrong decisions,
Spearman's rho of the metric's score and the people's score, over every (judge, answer) pair,
each with a bootstrap 95% interval (agreement_stats.py); the same per question type (no
intervals). A slot several models share (the same answer) counts once here, and once per model
in the per-model table (the people's mean score beside the model's VQA accuracy on those answers).

Pairwise mode: the people say A, B or tie; a metric says A when A's score is higher, B when
lower, tie when equal. Accuracy and kappa over those three; Spearman's rho of the people's +1 /
0 / -1 and the metric's score difference A - B.

With two or more judges, each pair's agreement with each other on the answers both judged (the
same measures, the first judge in the role of the metric) is the ceiling a metric can be held to.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from vqa_grpo.errors import UserError
from vqa_grpo.evaluation.agreement_scores import score_rows, threshold
from vqa_grpo.evaluation.agreement_stats import BOOTSTRAP_SAMPLES, SEED, agreement
from vqa_grpo.evaluation.compare import load_eval_dir
from vqa_grpo.evaluation.judge import KEY_FILE

GRADES = {"right": 1.0, "partly": 0.5, "wrong": 0.0}
CHOICES = {"A": 1.0, "tie": 0.0, "B": -1.0}
_TIE = 1e-9


def load_key(judge_dir: str) -> dict:
    path = Path(judge_dir) / KEY_FILE
    if not path.is_file():
        raise UserError(f"--judge-dir {judge_dir} has no {KEY_FILE}: give the --out folder of `vqa-grpo judge`")
    try:
        key = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        key = None
    if not isinstance(key, dict) or not {"page", "mode", "evals", "questions"} <= set(key):
        raise UserError(f"{path} is not a judge key: write the page again with `vqa-grpo judge`")
    return key


def _judgment(line: str) -> dict | None:
    """The line as a judgment dict, or None when it is not one (its page is checked apart)."""
    try:
        j = json.loads(line)
    except json.JSONDecodeError:
        return None
    return j if isinstance(j, dict) and isinstance(j.get("page"), str) else None


def _is_mark(j: dict, labels: dict) -> bool:
    return (
        isinstance(j.get("question"), str)
        and j.get("label") in labels
        and isinstance(j.get("judge"), str)
        and isinstance(j.get("time"), str)
    )


def shown_path(judge_dir: str, rel: str) -> str:
    """An evaluation of the key as the user knows it: relative to the working directory when it
    lies below it, else absolute (the key holds it relative to the judge folder)."""
    path = os.path.abspath(os.path.join(judge_dir, rel))
    below = os.path.relpath(path)
    return path if below == ".." or below.startswith(".." + os.sep) else below


def read_judgments(paths: list[str], key: dict, judge_dir: str) -> tuple[dict, list[str]]:
    """{(judge, question, slot): label} (the latest mark of each) and notes on what was skipped."""
    slots = {q["id"]: {s["slot"] for s in q["slots"]} for q in key["questions"]}
    labels = GRADES if key["mode"] == "grade" else CHOICES
    latest: dict[tuple, tuple[str, str]] = {}
    notes = []
    for path in paths:
        try:
            lines = Path(path).read_text(encoding="utf-8").splitlines()
        except FileNotFoundError:
            raise UserError(f"judgments file not found: {path}") from None
        except (OSError, UnicodeDecodeError) as e:
            raise UserError(f"cannot read judgments file {path}: {type(e).__name__}") from None
        bad, kept = [], 0
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            j = _judgment(line)
            if j is None:
                bad.append(number)
                continue
            if j["page"] != key["page"]:  # before the label: another mode's page has other labels
                mode = f" ({j['mode']})" if isinstance(j.get("mode"), str) else ""
                raise UserError(
                    f"{path} line {number} is from judge page {j['page']}{mode}, not page {key['page']} "
                    f"({key['mode']}) of {judge_dir}: give the --judge-dir whose judge.html these were exported from"
                )
            if not _is_mark(j, labels):
                bad.append(number)
                continue
            slot = j.get("slot") if key["mode"] == "grade" else None
            if j["question"] not in slots or (key["mode"] == "grade" and slot not in slots[j["question"]]):
                raise UserError(
                    f"{path} line {number}: question {j['question']!r} slot {slot!r} is not on page {key['page']}: "
                    f"give the --judge-dir whose judge.html these were exported from"
                )
            k = (j["judge"].strip() or "(no name)", j["question"], slot)
            if k not in latest or latest[k][1] <= j["time"]:
                latest[k] = (j["label"], j["time"])
            kept += 1
        if bad:
            shown = ", ".join(map(str, bad[:5])) + (", ..." if len(bad) > 5 else "")
            notes.append(f"{path}: {len(bad)} line(s) that are not a judgment skipped (lines {shown})")
        if not kept:
            notes.append(f"{path}: no judgments")
    if not latest:
        raise UserError(
            f"no judgments in {', '.join(paths)}: judge some answers on {judge_dir}/judge.html and press Export"
        )
    return {k: v[0] for k, v in latest.items()}, notes


def _load_evals(key: dict, judge_dir: str) -> list[tuple[dict, dict[str, dict]]]:
    """(metrics.json, rows by id) of each evaluation in the key, checked against the answers shown."""
    out = []
    for rel in key["evals"]:
        metrics, rows = load_eval_dir(Path(judge_dir) / rel)
        by_id: dict[str, dict] = {}
        for r in rows:
            by_id.setdefault(str(r["id"]), r)
        out.append((metrics, by_id))
    for q in key["questions"]:
        for s in q["slots"]:
            for e in s["evals"]:
                row = out[e][1].get(q["id"])
                shown = row.get("prediction") if row else None
                if not isinstance(shown, str) or shown.strip() != s["answer"]:
                    raise UserError(
                        f"{Path(judge_dir) / key['evals'][e]} no longer holds the answer the page showed for "
                        f"question {q['id']!r}: restore that evaluation, or write and judge a new page"
                    )
    return out


def _scores(key: dict, evals: list, user: list[str]) -> tuple[dict, list[str], dict[str, str]]:
    """{(eval, question): {metric: score}}, the metrics every answer has, and what was left out."""
    table: dict[tuple[int, str], dict[str, float]] = {}
    missing: dict[str, str] = {}
    names: set[str] | None = None
    for e, (metrics_json, by_id) in enumerate(evals):
        qids = [q["id"] for q in key["questions"] if any(e in s["evals"] for s in q["slots"])]
        scores, why = score_rows(metrics_json, [by_id[q] for q in qids], user)
        missing.update(why)
        names = set(scores) if names is None else names & set(scores)
        for i, q in enumerate(qids):
            table[(e, q)] = {m: float(v[i]) for m, v in scores.items()}
    ordered = sorted(names or (), key=lambda m: (m != "vqa_accuracy", m.startswith("composite/"), m))
    return table, ordered, missing


def _rows(key: dict, marks: dict, table: dict, evals: list) -> list[dict]:
    """One row per (judge, unit): people's score, question type, each metric's unit score."""
    by_slot = {(q["id"], s["slot"]): s["evals"] for q in key["questions"] for s in q["slots"]}
    qtype = {q["id"]: str(evals[0][1][q["id"]].get("question_type", "")) for q in key["questions"]}
    rows = []
    for (judge, qid, slot), label in sorted(marks.items()):
        if key["mode"] == "grade":
            e = by_slot[(qid, slot)][0]
            scores, human = table[(e, qid)], GRADES[label]
        else:
            a, b = (table[(by_slot[(qid, s)][0], qid)] for s in ("A", "B"))
            scores, human = {m: a[m] - b[m] for m in a if m in b}, CHOICES[label]
        rows.append({"judge": judge, "question": qid, "slot": slot, "type": qtype[qid], "human": human, **scores})
    return rows


def _codes(values: np.ndarray, mode: str, cut: float) -> np.ndarray:
    """Right (1) / wrong (0) in grade mode, A (0) / tie (1) / B (2) in pairwise mode."""
    if mode == "grade":
        return (values >= cut).astype(int)
    return np.where(values > _TIE, 0, np.where(values < -_TIE, 2, 1))


def _measure(rows: list[dict], metric: str, mode: str, cut: float, samples: int) -> dict:
    kept = [r for r in rows if not np.isnan(r[metric])]
    if not kept:  # a user function that scored none of these answers
        return {"n": 0, **{k: {"value": None, "ci95": None} for k in ("accuracy", "kappa", "spearman")}}
    human = np.array([r["human"] for r in kept], dtype=float)
    score = np.array([r[metric] for r in kept], dtype=float)
    k = 2 if mode == "grade" else 3
    return agreement(_codes(score, mode, cut), _codes(human, mode, 0.5), score, human, k, samples, SEED)


def _judges(rows: list[dict], mode: str, samples: int) -> tuple[list[dict], list[str]]:
    """Each pair of judges on the units both judged, and a note for each pair with none in common."""
    by_judge: dict[str, dict] = {}
    for r in rows:
        by_judge.setdefault(r["judge"], {})[(r["question"], r["slot"])] = r["human"]
    names = sorted(by_judge)
    out, apart = [], []
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            both = sorted(set(by_judge[a]) & set(by_judge[b]))
            if not both:
                apart.append(f"judges {a} and {b} judged nothing in common: no ceiling from them")
                continue
            x = np.array([by_judge[a][u] for u in both], dtype=float)
            y = np.array([by_judge[b][u] for u in both], dtype=float)
            k = 2 if mode == "grade" else 3
            res = agreement(_codes(x, mode, 0.5), _codes(y, mode, 0.5), x, y, k, samples, SEED)
            out.append({"judges": [a, b], **res})
    return out, apart


def _models(key: dict, marks: dict, evals: list, table: dict, judge_dir: str) -> list[dict]:
    """Per evaluation: answers judged, the people's mean score (grade) or wins/ties/losses
    (pairwise), and its own VQA accuracy on the same questions."""
    out = []
    for e, rel in enumerate(key["evals"]):
        people, acc, wins = [], [], {"wins": 0, "ties": 0, "losses": 0}
        for q in key["questions"]:
            for s in q["slots"]:
                if e not in s["evals"]:
                    continue
                for (judge, qid, slot), label in marks.items():
                    if qid != q["id"] or (key["mode"] == "grade" and slot != s["slot"]):
                        continue
                    acc.append(table[(e, qid)].get("vqa_accuracy", np.nan))
                    if key["mode"] == "grade":
                        people.append(GRADES[label])
                    else:
                        wins["ties" if label == "tie" else "wins" if label == s["slot"] else "losses"] += 1
        known = [a for a in acc if not np.isnan(a)]
        row = {
            "eval": shown_path(judge_dir, rel),
            "judged": len(acc),
            "vqa_accuracy": float(np.mean(known)) if known else None,
        }
        row.update({"people": float(np.mean(people)) if people else None} if key["mode"] == "grade" else wins)
        out.append(row)
    return out


def measure_agreement(
    paths: list[str],
    judge_dir: str,
    *,
    thresholds: dict[str, float] | None = None,
    user: list[str] | None = None,
    samples: int = BOOTSTRAP_SAMPLES,
) -> dict:
    """The agreement report as one dict (``format_agreement``: as text); UserError on bad input."""
    thresholds = thresholds or {}
    key = load_key(judge_dir)
    marks, notes = read_judgments(paths, key, judge_dir)
    evals = _load_evals(key, judge_dir)
    table, names, missing = _scores(key, evals, list(user or []))
    unknown = sorted(set(thresholds) - set(names))
    if unknown:
        raise UserError(f"--threshold for {', '.join(unknown)}: not a metric here; choose from {', '.join(names)}")
    rows = _rows(key, marks, table, evals)
    units = sum(len(q["slots"]) for q in key["questions"]) if key["mode"] == "grade" else len(key["questions"])
    judged = len({(r["question"], r["slot"]) for r in rows})
    cuts = {m: threshold(m, thresholds) for m in names}
    per_type = {}
    for t in sorted({r["type"] for r in rows}):
        sub = [r for r in rows if r["type"] == t]
        per_type[t] = {
            "n": len(sub),
            "people": float(np.mean([r["human"] for r in sub])),
            **{m: _measure(sub, m, key["mode"], cuts[m], 0) for m in names},
        }
    ceiling, apart = _judges(rows, key["mode"], samples)
    return {
        "page": key["page"],
        "mode": key["mode"],
        "files": list(paths),
        "judges": sorted({r["judge"] for r in rows}),
        "judgments": len(rows),
        "units": units,
        "judged_units": judged,
        "notes": notes + [f"{m}: left out: {why}" for m, why in sorted(missing.items()) if m not in names] + apart,
        "thresholds": cuts,
        "metrics": {m: _measure(rows, m, key["mode"], cuts[m], samples) for m in names},
        "per_question_type": per_type,
        "models": _models(key, marks, evals, table, judge_dir),
        "judges_agreement": ceiling,
        "bootstrap": {"samples": samples, "seed": SEED, "unit": "judgment (judge, answer)"},
    }


def _cell(m: dict, name: str, pct: bool = False) -> str:
    v, ci = m[name]["value"], m[name]["ci95"]
    scale = 100 if pct else 1
    fmt = ".1f" if pct else ".3f"
    if v is None:
        return "-"
    return f"{scale * v:{fmt}}" + (f" [{scale * ci[0]:{fmt}}, {scale * ci[1]:{fmt}}]" if ci else "")


def format_agreement(result: dict) -> str:
    """The report as plain text: what was judged, one row per metric, the judges' ceiling, the
    per-model and per-question-type tables."""
    grade = result["mode"] == "grade"
    what = "answers" if grade else "pairs"
    lines = [
        f"page {result['page']} ({result['mode']}): {result['judgments']} judgments by {len(result['judges'])} "
        f"judge(s) ({', '.join(result['judges'])}); {result['judged_units']} of {result['units']} {what} judged",
        *result["notes"],
        (
            "people: right 1, partly 0.5, wrong 0; right/wrong: score >= 0.5 (partly counts as right), "
            "a metric's score >= its threshold"
            if grade
            else "people and metrics: A, B or tie (a metric: the higher score; equal scores tie); rho: "
            "people's +1/0/-1 against the metric's A - B"
        ),
        f"95% intervals: bootstrap over judgments, {result['bootstrap']['samples']} resamples, "
        f"seed {result['bootstrap']['seed']}",
    ]
    mw = max([12, *(len(m) for m in result["metrics"])])
    head = f"{'metric':<{mw}} {'threshold':>9} {'n':>5}  {'accuracy %':<22} {'kappa':<24} {'spearman':<24}"
    lines += [head, "-" * len(head)]
    for m, r in result["metrics"].items():
        cut = f"{result['thresholds'][m]:.2f}" if grade else "-"
        lines.append(
            f"{m:<{mw}} {cut:>9} {r['n']:>5}  {_cell(r, 'accuracy', True):<22} "
            f"{_cell(r, 'kappa'):<24} {_cell(r, 'spearman'):<24}"
        )
    for j in result["judges_agreement"]:
        a, b = j["judges"]
        lines.append(
            f"{'judges':<{mw}} {'':>9} {j['n']:>5}  {_cell(j, 'accuracy', True):<22} {_cell(j, 'kappa'):<24} "
            f"{_cell(j, 'spearman'):<24}  ({a} vs {b}: the ceiling)"
        )
    lines.append("")
    if grade:
        lines.append(f"{'model':<30} {'judged':>7} {'people':>8} {'vqa_accuracy':>13}")
        for m in result["models"]:
            people, acc = m["people"], m["vqa_accuracy"]
            lines.append(
                f"{m['eval']:<30} {m['judged']:>7} {'-' if people is None else f'{people:.3f}':>8} "
                f"{'-' if acc is None else f'{acc:.3f}':>13}"
            )
    else:
        lines.append(f"{'model':<30} {'judged':>7} {'wins':>5} {'ties':>5} {'losses':>6}")
        for m in result["models"]:
            lines.append(f"{m['eval']:<30} {m['judged']:>7} {m['wins']:>5} {m['ties']:>5} {m['losses']:>6}")
    shown = [m for m in ("vqa_accuracy", "composite") if m in result["metrics"]]
    lines += ["", f"per question type: n, people's mean score, then accuracy % / kappa of {', '.join(shown)}"]
    for t, r in result["per_question_type"].items():
        cells = "  ".join(f"{m} {_cell(r[m], 'accuracy', True)} / {_cell(r[m], 'kappa')}" for m in shown if r[m]["n"])
        lines.append(f"{t or '(none)':<24} {r['n']:>5} {r['people']:>6.3f}  {cells}")
    return "\n".join(lines)
