"""``vqa-grpo compare RUN_A RUN_B [...]``: evaluation runs side by side, and whether each differs
from the first beyond chance.

Each RUN is an output directory of ``vqa-grpo evaluate --out`` (``metrics.json`` and
``predictions.jsonl``). The side-by-side values are those of each run's ``metrics.json``, overall
and per answer type. For every run after the first, the difference to the first is measured on
the questions both runs answered (matched by ``id``) with a paired bootstrap:

The test is evaluation/paired.py's (``paired_bootstrap``).
"""

from __future__ import annotations

import json
from pathlib import Path

from vqa_grpo.errors import UserError
from vqa_grpo.evaluation.paired import BOOTSTRAP_SAMPLES, SEED, paired_difference
from vqa_grpo.evaluation.robustness_view import format_side_by_side, side_by_side

_NOT_METRICS = ("n", "skipped")


def load_eval_dir(path: str | Path) -> tuple[dict, list[dict]]:
    """``(metrics.json, predictions.jsonl rows)`` of an evaluate output directory.

    Raises UserError (one line) when the directory or either file is missing or unreadable.
    """
    d = Path(path)
    if not d.is_dir():
        raise UserError(
            f"evaluation directory not found: {path} (give an output directory of `vqa-grpo evaluate --out`)"
        )
    metrics_path, preds_path = d / "metrics.json", d / "predictions.jsonl"
    for p in (metrics_path, preds_path):
        if not p.is_file():
            raise UserError(f"{path} has no {p.name}: give an output directory of `vqa-grpo evaluate --out`")
    try:
        metrics = json.loads(metrics_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UserError(f"cannot read {metrics_path}: {type(e).__name__}: {e}".splitlines()[0]) from None
    if not isinstance(metrics, dict):
        raise UserError(f"{metrics_path} is not a JSON object")
    rows = []
    try:
        with preds_path.open(encoding="utf-8") as f:
            for number, line in enumerate(f, 1):
                if not line.strip():
                    continue
                row = json.loads(line)
                if not isinstance(row, dict) or "id" not in row:
                    raise UserError(f"{preds_path} line {number}: expected a JSON object with an 'id'")
                rows.append(row)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UserError(f"cannot read {preds_path}: {type(e).__name__}: {e}".splitlines()[0]) from None
    return metrics, rows


def metric_names(metrics: dict) -> list[str]:
    """The per-question metrics of a metrics.json (its top-level numbers other than n and skipped)."""

    def is_number(v) -> bool:
        return isinstance(v, (int, float)) and not isinstance(v, bool)

    return [k for k, v in metrics.items() if k not in _NOT_METRICS and is_number(v)]


def _names(paths: list[str]) -> list[str]:
    short = [Path(p).name or str(p) for p in paths]
    return short if len(set(short)) == len(short) else [str(p) for p in paths]


def compare_runs(paths: list[str], *, samples: int = BOOTSTRAP_SAMPLES, seed: int = SEED) -> dict:
    """Side-by-side metrics of evaluate output dirs, and paired bootstrap tests against the first.

    Returns {"runs": [{"path", "name", "n", "vqa_convention"}], "metrics": [names], "overall": {metric: [value per
    run]}, "per_answer_type": {type: {"n": [per run], metric: [per run]}}, "differences": [one per
    run after the first: {"run", "baseline", "n_shared", "overall": {"n", metric: {"mean", "ci95",
    "p_value"}}, "per_answer_type": {...}, "per_question_type": {...}}], "bootstrap": {...}}, and
    "robustness" when every run has one (``evaluate --perturb``; robustness_view.side_by_side).
    A value a run lacks is None; vqa_accuracy is left out when the runs computed it by different
    conventions (eval.vqa_convention; a metrics.json without one is official). Raises UserError
    for fewer than two runs or a missing directory/file.
    """
    if len(paths) < 2:
        raise UserError(f"compare needs at least two evaluation directories, got {len(paths)}")
    loaded = [load_eval_dir(p) for p in paths]
    names = _names([str(p) for p in paths])
    metrics = [m for m in metric_names(loaded[0][0]) if all(m in x[0] for x in loaded[1:])]
    conventions = [met.get("vqa_convention", "official") for met, _ in loaded]  # runs before it: official
    if len(set(conventions)) > 1:  # the same name, two different numbers: not compared
        metrics = [m for m in metrics if m != "vqa_accuracy"]
    types = sorted({t for met, _ in loaded for t in met.get("per_answer_type", {})})

    def value(d: dict | None, key: str):
        return d.get(key) if isinstance(d, dict) else None

    per_type = {}
    for t in types:
        subs = [met.get("per_answer_type", {}).get(t) for met, _ in loaded]
        per_type[t] = {"n": [value(s, "n") for s in subs], **{m: [value(s, m) for s in subs] for m in metrics}}
    differences = []
    for name, (_, rows) in zip(names[1:], loaded[1:]):
        diff = paired_difference(loaded[0][1], rows, metrics, samples, seed)
        if diff["n_shared"] == 0:
            raise UserError(f"{name} and {names[0]} share no question ids: were they evaluated on the same data?")
        differences.append({"run": name, "baseline": names[0], **diff})

    shown = [m for m in dict.fromkeys(["vqa_accuracy", loaded[0][0].get("primary_metric")]) if m in metrics]
    robustness = side_by_side(paths, [met for met, _ in loaded], names, shown, samples, seed)
    return {
        "runs": [
            {"path": str(p), "name": n, "n": met.get("n"), "vqa_convention": c}
            for p, n, (met, _), c in zip(paths, names, loaded, conventions)
        ],
        "metrics": metrics,
        "overall": {m: [met[m] for met, _ in loaded] for m in metrics},
        "per_answer_type": per_type,
        "differences": differences,
        "bootstrap": {
            "samples": samples,
            "seed": seed,
            "ci": "percentile 2.5-97.5 of the resampled mean differences",
            "p_value": "two-sided, null-centred: (1 + #{|d* - d| >= |d|}) / (B + 1)",
        },
        **({"robustness": robustness} if robustness else {}),
    }


def format_comparison(result: dict) -> str:
    """The comparison as a plain-text table: one row per subset and metric; runs are lettered A, B, ..."""
    letters = [chr(ord("A") + i) if i < 26 else f"R{i + 1}" for i in range(len(result["runs"]))]
    w = 8
    b = result["bootstrap"]
    mw = max([13, *(len(m) for m in result["metrics"])])
    head = f"{'subset':<14} {'metric':<{mw}} {'n':>6} " + " ".join(f"{x:>{w}}" for x in letters)
    for x in letters[1:]:
        head += f"  {x + ' - ' + letters[0]:>8} {'95% CI':>19} {'p':>7}"
    lines = [
        f"{x} = {r['path']} (n={r['n']}, vqa_accuracy as {r.get('vqa_convention', 'official')})"
        for x, r in zip(letters, result["runs"])
    ]
    if len({r.get("vqa_convention", "official") for r in result["runs"]}) > 1:
        lines.append("vqa_accuracy not compared: the runs computed it by different conventions (eval.vqa_convention)")
    lines += [
        f"differences to A: paired bootstrap over the question ids both runs hold, {b['samples']} resamples, "
        f"seed {b['seed']}; 95% percentile CI; two-sided p",
        head,
        "-" * len(head),
    ]
    subsets = [("overall", result["overall"], lambda d: d["overall"])]
    for t, values in result["per_answer_type"].items():
        subsets.append((t, values, lambda d, t=t: d["per_answer_type"].get(t, {})))
    for subset, values, pick in subsets:
        n = pick(result["differences"][0]).get("n", "-")
        for m in result["metrics"]:
            row = f"{subset:<14} {m:<{mw}} {n:>6} "
            row += " ".join(f"{v:>{w}.4f}" if isinstance(v, (int, float)) else f"{'-':>{w}}" for v in values[m])
            for d in result["differences"]:
                t = pick(d).get(m)
                if t is None:
                    row += f"  {'-':>8} {'-':>19} {'-':>7}"
                else:
                    lo, hi = t["ci95"]
                    row += f"  {t['mean']:>+8.4f} {f'[{lo:+.4f}, {hi:+.4f}]':>19} {t['p_value']:>7.4f}"
            lines.append(row)
    lines.append("n: questions B shares with A (the differences are over these); A, B, ...: each run's metrics.json")
    if "robustness" in result:
        lines += ["", format_side_by_side(result["robustness"], letters)]
    return "\n".join(lines)
