"""Throughput of the composite reward on one CPU core (the target: >= 50,000 pairs per second).

    python benchmarks/rewards_throughput.py [--pairs 200000] [--check]

The process is pinned to one core. Pairs are VQA-like: predictions of 1-6 words drawn from a
vocabulary with punctuation, each made unique (so the token cache never hits on a prediction, the
worst case), references short answers from a pool of 500. Three measurements:
``composite_reward`` called once per pair (the public single-pair function), ``composite_batch``
(what ``compute_rewards`` runs), and ``composite_batch`` with 10 references per pair (VQA v2).
``--check`` exits 1 when the single-pair figure is under 50,000 pairs/s.
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import time

from vqa_grpo.rewards.composite import composite_batch, composite_reward
from vqa_grpo.rewards.normalize import _tokenize_cached

TARGET = 50_000
VOCAB = ["red", "blue", "white", "two", "3", "yes", "no", "a", "the", "dog", "cat", "car", "man", "table", "it",
         "is", "on", "of", "frisbee", "tennis", "pizza", "kitchen", "left", "1,000", "don't", "t-shirt"]  # fmt: skip


def make_pairs(n: int, refs_per_pair: int, seed: int = 0) -> tuple[list[str], list[list[str]]]:
    rng = random.Random(seed)

    def phrase(k: int) -> str:
        return " ".join(rng.choice(VOCAB) for _ in range(rng.randint(1, k))) + rng.choice(["", "", ".", "!"])

    pool = [phrase(3) for _ in range(500)]
    preds = [f"{phrase(5)} {i}" if i % 2 else f"{i} {phrase(5)}" for i in range(n)]
    answers = [[rng.choice(pool) for _ in range(refs_per_pair)] for _ in range(n)]
    return preds, answers


def rate(fn, n: int) -> float:
    _tokenize_cached.cache_clear()
    start = time.perf_counter()
    fn()
    return n / (time.perf_counter() - start)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=200_000)
    parser.add_argument("--check", action="store_true", help=f"exit 1 below {TARGET:,} pairs/s")
    args = parser.parse_args()
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})
    n = args.pairs
    preds, answers = make_pairs(n, 1)
    refs = [a[0] for a in answers]
    single = rate(lambda: [composite_reward(p, r) for p, r in zip(preds, refs)], n)
    batch = rate(lambda: composite_batch(preds, answers), n)
    preds10, answers10 = make_pairs(n // 4, 10)
    batch10 = rate(lambda: composite_batch(preds10, answers10), n // 4)
    print(f"python {sys.version.split()[0]}, one core, {n:,} pairs")
    print(f"composite_reward, 1 reference:   {single:>10,.0f} pairs/s")
    print(f"composite_batch, 1 reference:    {batch:>10,.0f} pairs/s")
    print(f"composite_batch, 10 references:  {batch10:>10,.0f} predictions/s")
    print(f"target {TARGET:,} pairs/s: {'met' if single >= TARGET else 'NOT met'}")
    return 1 if args.check and single < TARGET else 0


if __name__ == "__main__":
    raise SystemExit(main())
