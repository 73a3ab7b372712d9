"""Prioritised sampling of the training questions (``grpo.prioritized_sampling``; docs/sampling.md).

The seed report's section 5.3 ("selective sampling") proposes spending the compute on the examples
that still teach something. A GRPO group teaches nothing when its G rewards are equal, which is
what a question the policy always solves (or never solves) gives; one it solves about half the
time gives the largest spread of rewards. So each question keeps an exponential moving average of
its groups' mean reward, scaled to p in [0, 1] by the reward's range, and weighs

    w = floor + (1 - floor) * 4 p (1 - p)

(4 p (1 - p) is the Bernoulli variance p (1 - p) normalised to a peak of 1 at p = 1/2). A question
not seen yet counts as p = 1/2, the largest weight, so every question is visited early. The
sampling probability is w / sum(w) over the questions whose image decodes; as floor <= w <= 1,
none falls below floor / N.
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import torch

from vqa_grpo.rewards import registry


def difficulty(mean_reward: torch.Tensor, low: float, high: float) -> torch.Tensor:
    """[N] mean rewards -> p in [0, 1] (0: the least reward, 1: the greatest); NaN (not seen) -> 1/2."""
    if high <= low:  # every reward equal: nothing to tell the questions apart
        return torch.full_like(mean_reward, 0.5)
    p = ((mean_reward - low) / (high - low)).clamp(0.0, 1.0)
    return torch.nan_to_num(p, nan=0.5)


def priority_weights(p: torch.Tensor, floor: float) -> torch.Tensor:
    """[N] weights floor + (1 - floor) * 4 p (1 - p) of difficulties p in [0, 1]: 1 at p = 1/2, floor at 0 and 1."""
    return floor + (1.0 - floor) * 4.0 * p * (1.0 - p)


def ema(old: float | None, new: float, decay: float) -> float:
    """decay x old + (1 - decay) x new; the first observation (old None) is taken as it is."""
    return new if old is None else decay * old + (1.0 - decay) * new


class Priorities:
    """Each question's EMA of mean reward and how often it was observed, and the seeded draws.

    The state is the same on every process: each observation is gathered over the ranks
    (``gather``: Dist.gather_lists) and applied in rank order, and the draws of global batch k use
    a generator seeded by (seed, k), so a resume restores them from ``draws`` alone.
    """

    def __init__(
        self,
        ids: Sequence[str],
        floor: float,
        decay: float,
        reward_low: float,
        reward_high: float,
        seed: int,
        gather: Callable[[list], list] | None = None,
    ):
        self.ids, self.floor, self.decay, self.seed = list(ids), floor, decay, seed
        self.low, self.high = reward_low, reward_high
        self.index: dict[str, int] = {}
        for i, q in enumerate(self.ids):
            self.index.setdefault(q, i)
        self.mean_reward = torch.full((len(self.ids),), math.nan, dtype=torch.float64)  # NaN: not seen
        self.count = torch.zeros(len(self.ids), dtype=torch.int64)
        self.draws = 0  # global batches drawn so far
        self._gather = gather or (lambda items: items)
        self._weights: torch.Tensor | None = None  # cached until the next observation

    @classmethod
    def for_run(cls, cfg, ids: Sequence[str], gather: Callable[[list], list] | None = None) -> "Priorities":
        """The run's settings: grpo.priority_floor and priority_decay, the reward's range from
        reward.components and reward.weights, train.seed."""
        low, high = registry.reward_range(cfg.reward)
        g = cfg.grpo
        return cls(ids, g.priority_floor, g.priority_decay, low, high, cfg.train.seed, gather)

    def observe(self, ids: Sequence[str], mean_rewards: Sequence[float]) -> None:
        """Take in this process's groups (question id, mean reward of its G completions); a
        collective under several processes: every process calls it after each of its rollouts."""
        for q, r in self._gather([(q, float(r)) for q, r in zip(ids, mean_rewards)]):
            i = self.index[q]
            old = None if self.count[i] == 0 else float(self.mean_reward[i])
            self.mean_reward[i] = ema(old, r, self.decay)
            self.count[i] += 1
        self._weights = None

    def weights(self) -> torch.Tensor:
        """[N] float64 weights of every question (those that fail to decode included)."""
        if self._weights is None:
            self._weights = priority_weights(difficulty(self.mean_reward, self.low, self.high), self.floor)
        return self._weights

    def probabilities(self, excluded: torch.Tensor) -> torch.Tensor:
        """[N] the sampling distribution over the questions not ``excluded`` ([N] bool); all zero
        when every question is excluded."""
        w = self.weights().masked_fill(excluded, 0.0)
        total = w.sum()
        return w / total if total > 0 else w

    def generator(self) -> torch.Generator:
        """The generator of the next global batch's draws."""
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.draws + 1)
        self.draws += 1
        return g

    def pick(self, g: torch.Generator, excluded: torch.Tensor) -> int | None:
        """One question index drawn from the distribution over those not ``excluded``; None if none is left."""
        w = self.weights().masked_fill(excluded, 0.0)
        if not bool((w > 0).any()):
            return None
        return int(torch.multinomial(w, 1, generator=g))

    def stats(self, excluded: torch.Tensor) -> dict[str, float]:
        """metrics.jsonl's ``priority/*`` over the questions not ``excluded``: the largest weight over
        the smallest, the sampling distribution's entropy over log N (1: uniform), and the share
        observed at least once."""
        keep = ~excluded
        n = int(keep.sum())
        if n == 0:
            return {}
        w, p = self.weights()[keep], self.probabilities(excluded)[keep]
        entropy = float(-(p * p.log()).sum())
        return {
            "priority/weight_max_over_min": float(w.max() / w.min()),
            "priority/entropy": entropy / math.log(n) if n > 1 else 1.0,
            "priority/seen_fraction": float((self.count[keep] > 0).double().mean()),
        }

    def state(self) -> dict:
        """For the checkpoint (JSON): the draws so far and, per question observed, [mean reward, count]."""
        seen = torch.nonzero(self.count).flatten().tolist()
        return {
            "draws": self.draws,
            "seen": {self.ids[i]: [float(self.mean_reward[i]), int(self.count[i])] for i in seen},
        }

    def restore(self, state: dict) -> None:
        self.draws = int(state["draws"])
        self.mean_reward.fill_(math.nan)
        self.count.zero_()
        for q, (r, n) in state["seen"].items():
            if q in self.index:  # (a question no longer in the data set is dropped)
                self.mean_reward[self.index[q]], self.count[self.index[q]] = r, n
        self._weights = None
