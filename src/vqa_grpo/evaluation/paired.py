"""The questions asked again (reworded: rephrase_check.py; on perturbed images: robustness.py)
against their first answers: one pass's means and its paired differences, and the pass's rows file.

A pass is a list of ``(i, k)`` pairs: row ``i`` of the first answers, row ``k`` of the pass. The
difference ``pass - first`` is tested with compare.py's paired bootstrap on the rows both scored
(a user metric's None, NaN here, leaves that row out of that metric's figures).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from vqa_grpo.evaluation.compare import paired_bootstrap


def nan_mean(values: np.ndarray) -> float:
    """The mean of the scored values (NaN left out); 0.0 when none was scored."""
    scored = ~np.isnan(values)
    return float(values[scored].mean()) if scored.any() else 0.0


def paired_pass(
    pairs: list[tuple[int, int]], first: dict, again: dict, shown: list[str], samples: int
) -> tuple[dict[str, float], dict[str, dict]]:
    """``(means, difference)``: the mean over the pass's rows of every metric in ``again``, and for
    the ``shown`` metrics that both score ``{"mean", "ci95", "p_value"}`` of ``again - first``
    (metric -> [N] score arrays)."""
    means = {m: nan_mean(np.array([v[k] for _, k in pairs], dtype=float)) for m, v in again.items()}
    difference = {}
    for m in shown:
        if m not in again or m not in first:
            continue
        a = np.array([first[m][i] for i, _ in pairs], dtype=float)
        b = np.array([again[m][k] for _, k in pairs], dtype=float)
        scored = ~(np.isnan(a) | np.isnan(b))
        if scored.any():
            test = paired_bootstrap((b - a)[scored][:, None], samples)
            difference[m] = {
                "mean": float(test["mean"][0]),
                "ci95": [float(x) for x in test["ci95"][0]],
                "p_value": float(test["p_value"][0]),
            }
    return means, difference


def write_rows(out: Path, name: str, rows: list[dict] | None) -> None:
    """``out/name`` as JSONL (written beside, then moved over an earlier one); None removes an
    earlier evaluation's, so that the folder holds one evaluation's files only."""
    path = out / name
    if rows is None:
        path.unlink(missing_ok=True)
        return
    out.mkdir(parents=True, exist_ok=True)
    with (out / f"{name}.tmp").open("w") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
    os.replace(out / f"{name}.tmp", path)
