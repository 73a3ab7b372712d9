"""What one GRPO optimiser step sampled on this process, over every micro-batch drawn (with
grpo.dynamic_sampling, the groups the filter dropped included): the source of the step's sampling
statistics, the same whether the filter is on or off (training/steps.py make_rollouts)."""

from __future__ import annotations

from dataclasses import dataclass, field

from vqa_grpo.grpo.dynamic import equal_rewards
from vqa_grpo.grpo.rollout import Rollout


@dataclass
class Tally:
    """Counts over the step's sampled rollouts; ``add`` each as it is drawn."""

    groups: int = 0  # question groups sampled
    equal_groups: int = 0  # of them, those whose G rewards are all equal (no advantage)
    rows: int = 0  # completions sampled
    augmented: int = 0  # of them, those on a perturbed image (grpo.augment)
    completion_tokens: float = 0.0
    reward_seconds: dict[str, float] = field(default_factory=dict)  # each reward's time, summed

    def add(self, ro: Rollout) -> None:
        self.groups += len(ro.examples)
        self.equal_groups += int(equal_rewards(ro.rewards, ro.group_size).sum())
        self.rows += len(ro.answers)
        self.augmented += sum(a is not None for a in ro.augmented)
        self.completion_tokens += float(ro.completion_mask.sum())
        for name, t in ro.reward_seconds.items():
            self.reward_seconds[name] = self.reward_seconds.get(name, 0.0) + t

    def stats(self, micro_batches: int, augment: bool) -> dict[str, float]:
        """The step's sampling statistics: ``frac_reward_zero_std`` (TRL's name: the share of
        groups with equal rewards, before any filtering), ``completion_tokens`` (every completion
        sampled, for completion_tokens_per_second), ``reward_seconds/<name>`` (each reward's time
        over the step's ``micro_batches``, a plain step's mean per micro-batch) and, with
        grpo.augment (``augment``), ``augment/share`` (the completions on perturbed images)."""
        out = {"frac_reward_zero_std": self.equal_groups / self.groups, "completion_tokens": self.completion_tokens}
        out.update({f"reward_seconds/{k}": v / micro_batches for k, v in self.reward_seconds.items()})
        if augment:
            out["augment/share"] = self.augmented / max(1, self.rows)
        return out
