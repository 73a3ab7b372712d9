"""``vqa-grpo score PREDICTIONS.jsonl``: the metric table of a predictions file, overall and per answer type.

Each line is a JSON object with a prediction (``prediction_field``, a string) and its answers
(``answers_field``: a list of strings, a list of {"answer": ...} records as in VQA v2, or one
string; when the field is "answers" and absent, an "answer" string is used). The answer type is
the row's "answer_type" when it is a non-empty string, else inferred from the answers
(``vqa_grpo.data.qtypes.answer_type_of``). Lines that are blank are ignored; lines that are not a
JSON object or lack a usable prediction or answers are skipped, counted, and reported.
Metrics are those of ``score_predictions``, as means: fractions in [0, 1] with ``--json``,
percentages in the table, with VQA accuracy in the chosen convention (``--vqa-convention``;
unset: lmms_eval with ``--benchmark``, as evaluate on a benchmark, else official) and the
benchmark metrics asked for (``--metric anls``); VQA accuracy and each benchmark metric carry a
95% bootstrap interval per group (``ci95``, as metrics.json). A metric the rows cannot take
(multiple choice on answers that are not [letter, text]) is a one-line error.
"""

from __future__ import annotations

import json
from typing import Any

from vqa_grpo.data.benchmarks import BENCHMARKS, find_benchmark
from vqa_grpo.data.qtypes import answer_type_of
from vqa_grpo.errors import UserError
from vqa_grpo.evaluation.evaluate import by_group
from vqa_grpo.rewards.benchmark import check_metrics_fit
from vqa_grpo.rewards.registry import score_predictions


def _answers(row: dict, field: str) -> list[str] | None:
    value = row.get(field)
    if value is None and field == "answers" and isinstance(row.get("answer"), str):
        value = row["answer"]
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and value:
        out = [v.get("answer") if isinstance(v, dict) else v for v in value]
        return out if all(isinstance(v, str) for v in out) else None
    return None


Row = tuple[str, list[str], str]  # prediction, answers, answer type


def read_predictions(path: str, prediction_field: str, answers_field: str) -> tuple[list[Row], list[int]]:
    """(prediction, answers, answer_type) per usable row, and the line numbers of skipped rows."""
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except FileNotFoundError:
        raise UserError(f"predictions file not found: {path}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"cannot read predictions file {path}: {type(e).__name__}: {e}".splitlines()[0]) from None
    rows, skipped = [], []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row: Any = json.loads(line)
        except json.JSONDecodeError:
            row = None
        pred = row.get(prediction_field) if isinstance(row, dict) else None
        answers = _answers(row, answers_field) if isinstance(row, dict) else None
        if not isinstance(pred, str) or answers is None:
            skipped.append(number)
            continue
        kind = row.get("answer_type")
        rows.append((pred, answers, kind if isinstance(kind, str) and kind else answer_type_of(answers)))
    return rows, skipped


def score_file(
    path: str,
    prediction_field: str = "prediction",
    answers_field: str = "answers",
    *,
    metrics: tuple[str, ...] | list[str] = (),
    vqa_convention: str | None = None,
    benchmark: str | None = None,
) -> dict:
    """Score a predictions JSONL file: {"path", "rows", "skipped", "skipped_lines" (the first 20),
    "vqa_convention", "benchmark", "metrics"}, what ``--json`` prints; "metrics" is evaluate's
    ``by_group`` over all rows ("overall"), then per answer type.

    ``metrics``: benchmark metrics to add (rewards/benchmark.py); ``vqa_convention``: official or
    lmms_eval (None: lmms_eval with a benchmark, else official); ``benchmark``: a name of
    data/benchmarks.py, whose metric is added and whose lmms-eval task the lmms_eval convention
    follows. Raises UserError (one line) when the file is missing or unreadable, has no usable
    row, or does not fit a metric asked for, or for an unknown benchmark.
    """
    if benchmark is not None and benchmark.strip().lower() not in BENCHMARKS:
        raise UserError(f"--benchmark {benchmark!r} is not a known benchmark; choose one of {', '.join(BENCHMARKS)}")
    bench = find_benchmark(benchmark)
    if vqa_convention is None:  # as evaluate resolves it (data/benchmarks.py)
        vqa_convention = "lmms_eval" if bench else "official"
    metrics = [*metrics, *([bench.metric] if bench else [])]
    rows, skipped = read_predictions(path, prediction_field, answers_field)
    if not rows:
        raise UserError(
            f"no scorable rows in {path} ({len(skipped)} skipped): each line needs a string "
            f"{prediction_field!r} and {answers_field!r} (a list of strings); see --prediction-field/--answers-field"
        )
    check_metrics_fit(metrics, [r[1] for r in rows], path)
    name = bench.name if bench else None
    preds, answers, types = ([r[i] for r in rows] for i in range(3))
    scores = score_predictions(preds, answers, types, metrics=metrics, vqa_convention=vqa_convention, benchmark=name)
    return {
        "path": path,
        "rows": len(rows),
        "skipped": len(skipped),
        "skipped_lines": skipped[:20],
        "vqa_convention": vqa_convention,
        "benchmark": name,
        "metrics": {**by_group(scores, ["overall"] * len(rows)), **by_group(scores, types)},  # types sorted
    }


def format_score(result: dict) -> str:
    """``score_file``'s result as plain text: the rows scored and skipped, then one row per group
    with the metric means in percent, then the overall 95% intervals."""
    table, skipped = result["metrics"], result["skipped"]
    where = ", ".join(map(str, result["skipped_lines"][:10])) + (", ..." if skipped > 10 else "")
    lines = [
        f"{result['path']}: {result['rows']} rows scored, {skipped} skipped" + (f" (lines {where})" if skipped else ""),
        f"metric means in percent; vqa_accuracy as {result['vqa_convention']} computes it",
    ]
    metrics = [k for k in table["overall"] if k not in ("n", "ci95")]
    widths = [max(12, len(k)) for k in metrics]
    head = f"{'answer type':<12} {'n':>7} " + " ".join(f"{k:>{w}}" for k, w in zip(metrics, widths))
    lines += [head, "-" * len(head)]
    for name, m in table.items():
        lines.append(f"{name:<12} {m['n']:>7} " + " ".join(f"{100 * m[k]:>{w}.2f}" for k, w in zip(metrics, widths)))
    cis = ", ".join(f"{k} [{100 * lo:.2f}, {100 * hi:.2f}]" for k, (lo, hi) in table["overall"]["ci95"].items())
    lines.append(f"95% CI overall (bootstrap over rows): {cis}")
    return "\n".join(lines)
