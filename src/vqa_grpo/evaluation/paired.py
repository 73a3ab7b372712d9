"""The questions asked again (reworded: rephrase_check.py; on perturbed images: robustness.py)
against their first answers, and two runs' answers to the same questions (``vqa-grpo compare``):
their means and paired differences.

A pass is a list of ``(i, k)`` pairs: row ``i`` of the first answers, row ``k`` of the pass. The
difference ``pass - first`` (or ``run - first run``) is tested with the paired bootstrap below on
the rows both scored: a user metric's None, NaN here, leaves that row out of that metric's
figures (``paired_tests``, the one rule for the passes and ``compare``).

The paired bootstrap (``paired_bootstrap``, shared with ``vqa-grpo compare``):

* d_i = score_run(i) - score_first(i) for each shared question i and each metric;
* the difference is mean(d); B resamples (default 10,000) draw the shared questions with
  replacement (numpy ``default_rng(seed)``, default seed 0) and give the resampled means d*_b;
* the 95% CI is the 2.5th and 97.5th percentiles of d*_b (percentile interval);
* the two-sided p-value tests "no difference" on the null-centred bootstrap distribution
  (Efron & Tibshirani 1993, sec. 16.4; Berg-Kirkpatrick et al. 2012):
  p = (1 + #{b : |d*_b - mean(d)| >= |mean(d)|}) / (B + 1). Identical runs give p = 1.

Each subset (overall, each answer type, each question type of the first run's predictions) is
resampled on its own, with the same seed; within a subset the metrics scored on the same rows
(all but a user metric that returned None) share the resampled questions. Question types appear
in the JSON output only (VQA v2 has 65 of them).
"""

from __future__ import annotations

import numpy as np

BOOTSTRAP_SAMPLES = 10_000
SEED = 0
_CHUNK_ELEMENTS = 2_000_000  # resamples are drawn in chunks of [b, N] indices, b * N at most this


def paired_bootstrap(diffs: np.ndarray, samples: int = BOOTSTRAP_SAMPLES, seed: int = SEED) -> dict[str, np.ndarray]:
    """Mean, 95% percentile CI and two-sided p-value of paired differences ``diffs`` [N, M].

    Returns {"mean": [M], "ci95": [M, 2], "p_value": [M]}; see the module docstring for the test.
    """
    n, m = diffs.shape
    mean = diffs.mean(axis=0)  # [M]
    rng = np.random.default_rng(seed)
    boot = np.empty((samples, m))  # [B, M] resampled means
    chunk = max(1, _CHUNK_ELEMENTS // n)
    for start in range(0, samples, chunk):
        b = min(chunk, samples - start)
        idx = rng.integers(0, n, size=(b, n))  # [b, N] questions drawn with replacement
        counts = np.bincount((idx + n * np.arange(b)[:, None]).ravel(), minlength=b * n).reshape(b, n)
        boot[start : start + b] = counts @ diffs / n
    ci = np.percentile(boot, [2.5, 97.5], axis=0).T  # [M, 2]
    # Null-centred: how often a resample lands at least as far from mean(d) as mean(d) is from 0.
    # The 1e-12 keeps exact ties (identical runs: every d*_b = mean(d) = 0) counted despite rounding.
    extreme = (np.abs(boot - mean) >= np.abs(mean) - 1e-12).sum(axis=0)
    return {"mean": mean, "ci95": ci, "p_value": (1 + extreme) / (samples + 1)}


def by_type(rows: list[dict], field: str) -> dict[str, list[int]]:
    out: dict[str, list[int]] = {}
    for i, r in enumerate(rows):
        value = r.get(field)
        if isinstance(value, str):
            out.setdefault(value, []).append(i)
    return dict(sorted(out.items()))


def as_scores(values: list) -> np.ndarray:
    """Scores as floats, a user metric's None (an answer it did not score) as NaN."""
    return np.array([np.nan if v is None else float(v) for v in values], dtype=float)


def paired_tests(first: np.ndarray, again: np.ndarray, samples: int, seed: int = SEED) -> list[dict | None]:
    """For each column of the [N, M] scores: {"mean", "ci95", "p_value"} of ``again - first`` over
    the rows both scored (NaN, a user metric's None, leaves the row out of that column), with "n"
    when fewer than N were; None for a column with no such row. Columns scored on the same rows
    share one bootstrap (the same resampled questions)."""
    diffs = again - first
    scored = ~np.isnan(diffs)
    out: list[dict | None] = [None] * diffs.shape[1]
    groups: dict[bytes, list[int]] = {}
    for j in range(diffs.shape[1]):
        groups.setdefault(scored[:, j].tobytes(), []).append(j)
    for cols in groups.values():
        rows = scored[:, cols[0]]
        if not rows.any():
            continue
        res = paired_bootstrap(diffs[rows][:, cols], samples, seed)
        for c, j in enumerate(cols):
            lo, hi = (float(x) for x in res["ci95"][c])
            out[j] = {"mean": float(res["mean"][c]), "ci95": [lo, hi], "p_value": float(res["p_value"][c])}
            if rows.sum() < len(rows):
                out[j]["n"] = int(rows.sum())
    return out


def paired_difference(base: list[dict], other: list[dict], metrics: list[str], samples: int, seed: int) -> dict:
    """Paired differences ``other - base`` over the shared ids, overall and per type; a metric a
    row did not score (None) leaves that row out of the metric's figures (``paired_tests``)."""
    by_id = {}
    for r in other:
        by_id.setdefault(str(r["id"]), r)
    seen: set[str] = set()
    pairs = []
    for r in base:
        key = str(r["id"])
        if key in by_id and key not in seen:
            seen.add(key)
            pairs.append((r, by_id[key]))
    shared = [m for m in metrics if all(m in a and m in b for a, b in pairs)]
    if not pairs:
        return {"n_shared": 0, "metrics": shared, "overall": {}, "per_answer_type": {}, "per_question_type": {}}
    first = np.stack([as_scores([a[m] for a, _ in pairs]) for m in shared], axis=1).reshape(len(pairs), len(shared))
    again = np.stack([as_scores([b[m] for _, b in pairs]) for m in shared], axis=1).reshape(len(pairs), len(shared))

    def test(index: list[int]) -> dict:
        tests = paired_tests(first[index], again[index], samples, seed)
        return {"n": len(index), **{m: t for m, t in zip(shared, tests) if t is not None}}

    firsts = [a for a, _ in pairs]
    return {
        "n_shared": len(pairs),
        "metrics": shared,
        "overall": test(list(range(len(pairs)))),
        "per_answer_type": {t: test(i) for t, i in by_type(firsts, "answer_type").items()},
        "per_question_type": {t: test(i) for t, i in by_type(firsts, "question_type").items()},
    }


def nan_mean(values: np.ndarray) -> float:
    """The mean of the scored values (NaN left out); 0.0 when none was scored."""
    scored = ~np.isnan(values)
    return float(values[scored].mean()) if scored.any() else 0.0


def paired_pass(
    pairs: list[tuple[int, int]], first: dict, again: dict, shown: list[str], samples: int
) -> tuple[dict[str, float], dict[str, dict]]:
    """``(means, difference)``: the mean over the pass's rows of every metric in ``again``, and for
    the ``shown`` metrics that both score ``{"mean", "ci95", "p_value"}`` of ``again - first``
    (metric -> [N] score arrays; ``paired_tests``)."""
    means = {m: nan_mean(np.array([v[k] for _, k in pairs], dtype=float)) for m, v in again.items()}
    both = [m for m in shown if m in again and m in first]
    a = np.array([[first[m][i] for m in both] for i, _ in pairs], dtype=float).reshape(len(pairs), len(both))
    b = np.array([[again[m][k] for m in both] for _, k in pairs], dtype=float).reshape(len(pairs), len(both))
    tests = paired_tests(a, b, samples)
    return means, {m: t for m, t in zip(both, tests) if t is not None}
