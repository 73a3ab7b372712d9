"""Agreement statistics of paired labels, and their bootstrap intervals (agreement.py uses them).

* accuracy: the share of items on which the two raters give the same category;
* Cohen's kappa (Cohen, 1960): (p_o - p_e) / (1 - p_e), p_o that accuracy, p_e = sum_k p_a(k) p_b(k)
  from each rater's own category shares; undefined (None) when p_e = 1 (both always say the same
  one category);
* Spearman's rho: Pearson's correlation of the average ranks (tied values share the mean of their
  ranks, as scipy.stats.spearmanr); undefined when either side is constant.

Bootstrap: ``samples`` resamples of the items with replacement (numpy ``default_rng(seed)``); the
95% interval is the 2.5th and 97.5th percentiles of the resampled statistics, leaving out the
resamples where it is undefined (None when all are).
"""

from __future__ import annotations

import numpy as np

BOOTSTRAP_SAMPLES = 1000
SEED = 0


def average_ranks(values: np.ndarray) -> np.ndarray:
    """Ranks 1..n of each row of ``values`` [B, n], ties given the mean of their ranks."""
    values = np.atleast_2d(values)
    b, n = values.shape
    order = np.argsort(values, axis=1, kind="mergesort")
    s = np.take_along_axis(values, order, axis=1)
    pos = np.broadcast_to(np.arange(n), (b, n))
    starts = np.ones((b, n), dtype=bool)
    starts[:, 1:] = s[:, 1:] != s[:, :-1]  # a run of equal values begins here
    ends = np.ones((b, n), dtype=bool)
    ends[:, :-1] = starts[:, 1:]
    first = np.maximum.accumulate(np.where(starts, pos, 0), axis=1)  # where each one's run begins
    last = np.minimum.accumulate(np.where(ends, pos, n - 1)[:, ::-1], axis=1)[:, ::-1]  # and ends
    ranks = np.empty((b, n))
    np.put_along_axis(ranks, order, (first + last) / 2 + 1, axis=1)
    return ranks


def spearman_rows(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Spearman's rho of each row pair of ``x``, ``y`` [B, n]: [B], NaN where a row is constant."""
    rx, ry = average_ranks(x), average_ranks(y)
    rx = rx - rx.mean(axis=1, keepdims=True)
    ry = ry - ry.mean(axis=1, keepdims=True)
    den = np.sqrt((rx * rx).sum(axis=1) * (ry * ry).sum(axis=1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, (rx * ry).sum(axis=1) / np.where(den > 0, den, 1), np.nan)


def kappa_rows(a: np.ndarray, b: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(accuracy [B], Cohen's kappa [B]) of category codes 0..k-1 in each row of ``a``, ``b`` [B, n]."""
    a, b = np.atleast_2d(a), np.atleast_2d(b)
    po = (a == b).mean(axis=1)
    pa = np.stack([(a == c).mean(axis=1) for c in range(k)], axis=1)  # [B, k]
    pb = np.stack([(b == c).mean(axis=1) for c in range(k)], axis=1)
    pe = (pa * pb).sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        kappa = np.where(pe < 1 - 1e-12, (po - pe) / np.where(pe < 1 - 1e-12, 1 - pe, 1), np.nan)
    return po, kappa


def _num(v: float) -> float | None:
    return None if np.isnan(v) else float(v)


def _interval(boot: np.ndarray) -> list[float] | None:
    kept = boot[~np.isnan(boot)]
    return None if not len(kept) else [float(np.percentile(kept, 2.5)), float(np.percentile(kept, 97.5))]


def agreement(
    a: np.ndarray,
    b: np.ndarray,
    x: np.ndarray,
    y: np.ndarray,
    k: int,
    samples: int = BOOTSTRAP_SAMPLES,
    seed: int = SEED,
) -> dict:
    """Accuracy and kappa of the category codes ``a``, ``b`` [n] (0..k-1), Spearman's rho of the
    scores ``x``, ``y`` [n], each {"value", "ci95"} (``samples`` = 0: no interval)."""
    a, b, x, y = (np.asarray(v) for v in (a, b, x, y))
    acc, kappa = kappa_rows(a, b, k)
    rho = spearman_rows(x.astype(float), y.astype(float))
    out = {"n": int(len(a))}
    point = {"accuracy": acc[0], "kappa": kappa[0], "spearman": rho[0]}
    if samples and len(a):
        idx = np.random.default_rng(seed).integers(0, len(a), size=(samples, len(a)))  # [B, n]
        boot_acc, boot_kappa = kappa_rows(a[idx], b[idx], k)
        boot = {"accuracy": boot_acc, "kappa": boot_kappa, "spearman": spearman_rows(x[idx], y[idx])}
    else:
        boot = {}
    for name, value in point.items():
        out[name] = {"value": _num(value), "ci95": _interval(boot[name]) if name in boot else None}
    return out
