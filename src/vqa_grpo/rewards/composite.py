"""The seed's composite reward (section 3.3, eq. 5-10), exactly.

    R(a, a*) = w1 BLEU-1 + w2 ExactMatch + w3 SubstringMatch + w4 Jaccard + w5 Extractable

Both texts are first normalised by ``normalize.answer_tokens`` (lowercase, split on whitespace,
punctuation stripped from token edges). With A the answer's tokens and R the reference's, and
``a = " ".join(A)``, ``r = " ".join(R)``:

* bleu1: clipped unigram precision, sum over distinct w in A of min(count_A(w), count_R(w)),
  divided by len(A); no brevity penalty.
* exact_match: 1 if a == r.
* substring: 1 if r occurs in a as a substring ("red" in "reddish" counts).
* jaccard: |set(A) & set(R)| / |set(A) | set(R)|.
* extractable: 1 if r occurs in a as whole tokens, i.e.
  ``re.search(r"(?<!\\S)" + re.escape(r) + r"(?!\\S)", a)`` ("red" from "it is red." but not from
  "reddish"); computed as ``f" {r} " in f" {a} "``, which is the same test, faster.

Every component is 0 when A or R is empty (nothing to match).

Several references (VQA v2 has 10): each is scored on its own and the result is the one with the
highest total (the first such in order on a tie), so every reported part comes from one actual
comparison and ``total`` is the weighted sum of the parts shown. With one reference this is the
plain definition above. A reference that only a minority of annotators gave counts fully; use
``vqa_accuracy`` for a consensus-weighted score.

The guard (``guard=True``; ``reward.composite_guard``, on by default for training): the seed's
partial credit can be farmed. Against "no", "no no no no" keeps substring, Jaccard and extractable
(0.55 of the reward) and "yes no" scores 0.55 whichever is right, more than a guess that is right
half the time. With the guard, an answer of more tokens than the reference has every part scaled
by ``len(R) / len(A)``: "yes no" gets 0.275, "no no no no" 0.1375, a bare right answer still 1 and
a bare wrong one 0. With the guard off the reward is the seed's exactly; evaluation's
``composite`` metric is always the seed's.
"""

from __future__ import annotations

import math
from collections import Counter
from functools import lru_cache
from typing import Any, Mapping, Sequence

import numpy as np

from vqa_grpo.rewards.inputs import as_references, as_text, warn_bad
from vqa_grpo.rewards.normalize import answer_tokens

COMPONENTS = ("bleu1", "exact_match", "substring", "jaccard", "extractable")
SEED_REPORT_WEIGHTS = {"bleu1": 0.2, "exact_match": 0.3, "substring": 0.2, "jaccard": 0.1, "extractable": 0.2}
_ZERO = (0.0, 0.0, 0.0, 0.0, 0.0)


def check_weights(weights: Mapping[str, float] | None) -> tuple[float, ...]:
    """The five weights in ``COMPONENTS`` order; None gives ``SEED_REPORT_WEIGHTS``.

    Raises ValueError unless the keys are exactly the five component names and the values are
    finite, >= 0 and sum to 1 within 1e-6.
    """
    if weights is None:
        return _SEED_REPORT_TUPLE
    if not isinstance(weights, Mapping):
        raise ValueError(f"composite weights must be a dict over {', '.join(COMPONENTS)}, got {type(weights).__name__}")
    try:
        return _check_items(tuple(weights.items()))  # memoised: the reward is called per pair
    except TypeError:  # an unhashable value: not a number anyway
        return _check_items.__wrapped__(tuple(weights.items()))


@lru_cache(maxsize=64)
def _check_items(items: tuple[tuple[str, Any], ...]) -> tuple[float, ...]:
    weights = dict(items)
    if set(weights) != set(COMPONENTS):
        raise ValueError(f"composite weights need exactly the keys {', '.join(COMPONENTS)}; got {sorted(weights)}")
    w = tuple(weights[k] for k in COMPONENTS)
    if not all(isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) and x >= 0 for x in w):
        raise ValueError(f"composite weights must be finite numbers >= 0, got {weights}")
    if abs(sum(w) - 1.0) > 1e-6:
        raise ValueError(f"composite weights must sum to 1 (within 1e-6), got sum {sum(w):.6g}")
    return tuple(float(x) for x in w)


_SEED_REPORT_TUPLE = _check_items(tuple(SEED_REPORT_WEIGHTS.items()))


def pair_parts(answer: tuple[str, ...], reference: tuple[str, ...], guard: bool = False) -> tuple[float, ...]:
    """(bleu1, exact_match, substring, jaccard, extractable) of two token tuples; with ``guard``,
    each scaled by len(reference) / len(answer) when the answer is the longer."""
    if not answer or not reference:
        return _ZERO
    if guard and len(answer) > len(reference):
        scale = len(reference) / len(answer)
        return tuple(scale * p for p in pair_parts(answer, reference))
    a, r = " ".join(answer), " ".join(reference)
    a_set, r_set = set(answer), set(reference)
    inter = len(a_set & r_set)
    if len(a_set) == len(answer):  # no repeated answer token: each clips to 1 if in R, so sum = inter
        clipped = inter
    else:
        r_count = Counter(reference)
        clipped = sum(min(n, r_count[w]) for w, n in Counter(answer).items())
    return (
        clipped / len(answer),
        1.0 if a == r else 0.0,
        1.0 if r in a else 0.0,
        inter / (len(a_set) + len(r_set) - inter),
        1.0 if f" {r} " in f" {a} " else 0.0,
    )


def best_parts(
    answer: tuple[str, ...], references: Sequence[tuple[str, ...]], w: Sequence[float], guard: bool = False
) -> tuple[float, ...]:
    """The parts of the reference with the highest weighted total (first on a tie); zeros if none."""
    best, best_total = _ZERO, -1.0
    for ref in dict.fromkeys(references):  # unique, in order: VQA's 10 answers repeat a lot
        parts = pair_parts(answer, ref, guard)
        total = w[0] * parts[0] + w[1] * parts[1] + w[2] * parts[2] + w[3] * parts[3] + w[4] * parts[4]
        if total > best_total:
            best, best_total = parts, total
    return best


def composite_reward(
    prediction: Any, reference: Any, weights: Mapping[str, float] | None = None, guard: bool = False
) -> dict[str, float]:
    """The seed's composite reward of one prediction against a reference or list of references.

    Returns ``{"total", "bleu1", "exact_match", "substring", "jaccard", "extractable"}``, each in
    [0, 1], with ``total`` the weighted sum of the five parts (``weights`` default to the seed's
    0.2, 0.3, 0.2, 0.1, 0.2). Rules, how several references combine, and ``guard``, are in the
    module docstring.
    Bad input never raises (see ``inputs``).
    """
    w = check_weights(weights)
    bad: Counter = Counter()
    pred = answer_tokens(as_text(prediction, "prediction", bad))
    refs = [answer_tokens(r) for r in as_references(reference, bad)]
    if bad:
        warn_bad("composite_reward", bad)
    parts = best_parts(pred, refs, w, guard)
    return {"total": sum(wi * p for wi, p in zip(w, parts)), **dict(zip(COMPONENTS, parts))}


def composite_batch(
    predictions: Sequence[str],
    answers: Sequence[Sequence[str]],
    weights: Mapping[str, float] | None = None,
    guard: bool = False,
) -> dict[str, np.ndarray]:
    """``composite_reward`` over a batch: ``{"total": [N], "bleu1": [N], ...}``, float64 arrays.

    Inputs must already be strings (``registry`` coerces and counts bad input once per batch).
    """
    w = check_weights(weights)
    parts = np.array(
        [
            best_parts(answer_tokens(p), [answer_tokens(r) for r in refs], w, guard)
            for p, refs in zip(predictions, answers)
        ],
        dtype=np.float64,
    ).reshape(len(predictions), len(COMPONENTS))
    return {
        "total": parts @ np.asarray(w, dtype=np.float64),
        **{c: parts[:, i].copy() for i, c in enumerate(COMPONENTS)},
    }
