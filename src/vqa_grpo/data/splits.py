"""Seeded train/eval splits and subsets, stratified by answer type.

Every selection works the same way: the n examples to take are shared among the answer types in
proportion to their counts (largest-remainder rounding, ties to the type listed first in
ANSWER_TYPES), each type's share is drawn uniformly at random with a ``random.Random`` seeded by a
string (stable across runs and Python versions), and the chosen examples keep their file order.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from typing import TypeVar

from vqa_grpo.data.table import answer_types, pick
from vqa_grpo.data.types import ANSWER_TYPES, VQAExample

E = TypeVar("E", bound=VQAExample)


def stratified_pick(examples: Sequence[E], n: int, rng: random.Random) -> tuple[Sequence[E], Sequence[E]]:
    """``(chosen, rest)``: n examples stratified by answer type, both in the original order (lists,
    or views of an ExampleTable: its answer-type column is read, no example is made)."""
    n = max(0, min(n, len(examples)))
    groups: dict[str, list[int]] = {}
    for i, answer_type in enumerate(answer_types(examples)):
        groups.setdefault(answer_type, []).append(i)
    order = [t for t in ANSWER_TYPES if t in groups] + sorted(t for t in groups if t not in ANSWER_TYPES)
    exact = {t: n * len(groups[t]) / len(examples) for t in order} if examples else {}
    quota = {t: math.floor(exact[t]) for t in order}
    by_remainder = sorted(order, key=lambda t: -(exact[t] - quota[t]))  # stable: ties keep `order`
    for t in by_remainder[: n - sum(quota.values())]:
        quota[t] += 1
    chosen = set()
    for t in order:
        chosen.update(rng.sample(groups[t], quota[t]))
    picked = pick(examples, [i for i in range(len(examples)) if i in chosen])
    rest = pick(examples, [i for i in range(len(examples)) if i not in chosen])
    return picked, rest


def split_train_eval(examples: Sequence[E], eval_fraction: float, seed: int) -> tuple[Sequence[E], Sequence[E]]:
    """``(train, eval)`` with round(eval_fraction * N) eval examples (at least 1 when 0 < fraction and N >= 2)."""
    n = len(examples)
    n_eval = math.floor(eval_fraction * n + 0.5)
    if eval_fraction > 0 and n >= 2:
        n_eval = min(max(n_eval, 1), n - 1)
    eval_set, train = stratified_pick(examples, n_eval, random.Random(f"split-{seed}"))
    return train, eval_set


def limit(examples: Sequence[E], max_samples: int | None, seed: int, name: str) -> Sequence[E]:
    """At most ``max_samples`` examples, stratified; ``name`` keeps the train and eval draws independent."""
    if max_samples is None or len(examples) <= max_samples:
        return examples
    return stratified_pick(examples, max_samples, random.Random(f"{name}-{seed}"))[0]
