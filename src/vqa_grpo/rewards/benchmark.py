"""The benchmarks' own metrics by name, batched, and whether a data set fits one.

Each is a reward component (``reward.components=[anls]``) and, named in ``eval.metrics`` or as
``train.eval_metric``, a metric of ``evaluate``, ``score`` and ``compare``:

anls              DocVQA, InfographicVQA (anls.py)
relaxed_accuracy  ChartQA (relaxed.py)
exact_match       GQA (exact.py)
multiple_choice   A-OKVQA's multiple-choice task (choice.py); answers are [letter, text, ...]
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

from vqa_grpo.errors import UserError
from vqa_grpo.rewards.anls import anls_batch
from vqa_grpo.rewards.choice import choice_batch, fits_choices
from vqa_grpo.rewards.exact import exact_batch
from vqa_grpo.rewards.relaxed import relaxed_batch

BENCHMARK_METRICS: dict[str, Callable[[Sequence[str], Sequence[Sequence[str]]], np.ndarray]] = {
    "anls": anls_batch,
    "relaxed_accuracy": relaxed_batch,
    "exact_match": exact_batch,
    "multiple_choice": choice_batch,
}
"""Name -> batched function (cleaned predictions [N], answer lists [N]) -> float64 [N] in [0, 1]."""


def check_metrics_fit(metrics: Sequence[str], answers: Sequence[Sequence[str]], where: str) -> None:
    """Raise UserError (one line) when a benchmark metric named in ``metrics`` cannot score the
    data: no example has an answer, or, for multiple_choice, an example's answers are not
    [choice letter, choice text, ...]. ``where`` names the data in the message."""
    wanted = [m for m in metrics if m in BENCHMARK_METRICS]
    if not wanted:
        return
    if not any(len(a) for a in answers):
        raise UserError(
            f"{wanted[0]} needs reference answers, and no example of {where} has one; "
            "evaluate on a split with answers, or drop the metric"
        )
    if "multiple_choice" in wanted:
        bad = next((i for i, a in enumerate(answers) if not fits_choices(a)), None)
        if bad is not None:
            raise UserError(
                f"multiple_choice needs each example's answers as [choice letter, choice text], but example "
                f"{bad} of {where} has {list(answers[bad])[:3]!r}; use the multiple-choice form of the data "
                "(e.g. data.benchmark=aokvqa_mc), or another metric"
            )


def requested_metrics(eval_metrics: Sequence[str], eval_metric: str | None) -> list[str]:
    """The benchmark metrics an evaluation computes: those named in ``eval.metrics`` and
    ``train.eval_metric`` (which a benchmark sets to its own when unset), in that order."""
    named = [*eval_metrics, *([eval_metric] if eval_metric else [])]
    return [m for m in dict.fromkeys(named) if m in BENCHMARK_METRICS]
