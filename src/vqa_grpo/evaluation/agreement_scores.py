"""Every automated score of the judged answers, for ``vqa-grpo agreement`` to set against the people.

Per answer: the metrics its evaluation's predictions.jsonl carries (those its metrics.json
reports: VQA accuracy, the composite and its parts, semantic, the benchmark metrics and user
metrics evaluate computed), then the rest that can be computed from the rows: the rewards
answer_type, format (of the raw completion) and abstention, with RewardConfig's defaults; each
benchmark metric the answers fit (rewards/benchmark.py); semantic similarity when its optional
extra is installed (a note otherwise); and the user's functions given by import path
(``module:function``, rewards/user.py).

THRESHOLDS: where a score counts as "right" (score >= threshold). 0.5 for every score in [0, 1]:
VQA accuracy >= 0.5 (at least two of the annotators gave it, in the official convention), the
composite and its parts, ANLS (already 0 below its 0.5 similarity), the 0/1 metrics (exact match,
relaxed accuracy, multiple choice, substring, extractable, format), answer_type, abstention (whose
wrong answers score -1), and the user's functions. Semantic similarity: 0.8, a cosine between two
short answers that mean the same (a choice, not a calibrated value). ``--threshold NAME=VALUE``
changes any of them.
"""

from __future__ import annotations

import numpy as np

from vqa_grpo.config import RewardConfig
from vqa_grpo.data.types import VQAExample
from vqa_grpo.errors import UserError
from vqa_grpo.evaluation.compare import metric_names
from vqa_grpo.rewards.benchmark import BENCHMARK_METRICS, check_metrics_fit
from vqa_grpo.rewards.registry import compute_rewards
from vqa_grpo.rewards.semantic import semantic_available, semantic_batch
from vqa_grpo.rewards.user import user_metrics

DEFAULT_THRESHOLD = 0.5
THRESHOLDS = {"semantic": 0.8}
_REWARDS = ("answer_type", "format", "abstention")


def parse_thresholds(items: list[str]) -> dict[str, float]:
    """``NAME=VALUE`` pairs (``--threshold``) as a dict; UserError for anything else."""
    out = {}
    for item in items:
        name, sep, value = item.partition("=")
        try:
            out[name.strip()] = float(value)
        except ValueError:
            sep = ""
        if not sep or not name.strip():
            raise UserError(f"--threshold {item!r}: give NAME=VALUE, e.g. --threshold semantic=0.7")
    return out


def threshold(name: str, given: dict[str, float]) -> float:
    return given.get(name, THRESHOLDS.get(name, DEFAULT_THRESHOLD))


def _answers(row: dict) -> list[str]:
    value = row.get("answers")
    if isinstance(value, str):
        return [value]
    return [str(a.get("answer")) if isinstance(a, dict) else str(a) for a in value or []]


def _text(row: dict, key: str) -> str:
    value = row.get(key)
    return value if isinstance(value, str) else ""


def _carried(metrics_json: dict, rows: list[dict]) -> list[str]:
    """The per-answer metrics of metrics.json that every row holds (a number, or None: not scored)."""
    return [
        m
        for m in metric_names(metrics_json)
        if all(m in r and (r[m] is None or isinstance(r[m], (int, float))) for r in rows)
    ]


def score_rows(metrics_json: dict, rows: list[dict], user: list[str]) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """{metric: scores [N] (NaN: not scored)} of ``rows`` (one evaluation's judged answers), and
    {metric: why it is left out}."""

    def column(key: str) -> np.ndarray:
        return np.array([np.nan if r[key] is None else float(r[key]) for r in rows], dtype=float)

    scores = {m: column(m) for m in _carried(metrics_json, rows)}
    missing: dict[str, str] = {}
    preds = [_text(r, "prediction") for r in rows]
    raws = [_text(r, "raw") or _text(r, "prediction") for r in rows]
    refs = [_answers(r) for r in rows]
    types = [_text(r, "answer_type") for r in rows]
    wanted = [c for c in _REWARDS if c not in scores]
    if wanted:
        parts = compute_rewards(raws, refs, types, RewardConfig(components=wanted, weights=None)).parts
        scores.update({c: parts[c] for c in wanted})
    for name, fn in BENCHMARK_METRICS.items():
        if name in scores:
            continue
        try:
            check_metrics_fit([name], refs, "the judged answers")
        except UserError as e:
            missing[name] = str(e).split(";")[0]  # what does not fit; the fix is for evaluate
            continue
        scores[name] = fn(preds, refs)
    if "semantic" not in scores:
        if semantic_available():
            scores["semantic"] = semantic_batch(preds, refs)
        else:
            missing["semantic"] = "not installed (pip install vqa-grpo[semantic])"
    if user:
        examples = [
            VQAExample(
                str(r["id"]),
                _text(r, "question"),
                a,
                a[0] if a else "",
                _text(r, "answer_type") or "other",
                _text(r, "question_type") or "none of the above",
            )
            for r, a in zip(rows, refs)
        ]
        scores.update(user_metrics(user, raws, examples))
    return scores, missing
