"""What a run tells its user besides its files: its last evaluation under the names ``evaluate()``
uses, and a warning when GRPO has nothing to learn from (every group's rewards equal)."""

from __future__ import annotations

import sys

from tqdm.auto import tqdm


class EvalMetrics(dict):
    """An evaluation's means under the names ``evaluate()`` gives them (``vqa_accuracy``, ...),
    and its ``step``; the names of metrics.jsonl (``eval/vqa_accuracy``) still read the same values."""

    def __missing__(self, key):
        if isinstance(key, str) and key.startswith("eval/") and dict.__contains__(self, key[5:]):
            return self[key[5:]]
        raise KeyError(key)

    def __contains__(self, key) -> bool:
        alias = isinstance(key, str) and key.startswith("eval/") and dict.__contains__(self, key[5:])
        return dict.__contains__(self, key) or alias

    def get(self, key, default=None):
        return self[key] if key in self else default


EQUAL_REWARDS_WARN_STEPS = 3
"""GRPO steps in a row with every group's rewards equal before the one warning."""


def watch_equal_rewards(stats: dict, equal: dict, is_main: bool) -> None:
    """Count the steps whose every group got G equal rewards (no advantage, so no gradient), as
    ``equal_reward_steps`` in the logged stats; warn once, on stderr, after
    EQUAL_REWARDS_WARN_STEPS of them in a row. Training goes on."""
    all_equal = stats.get("frac_reward_zero_std") == 1.0
    equal["in_a_row"] = equal["in_a_row"] + 1 if all_equal else 0
    equal["steps"] += all_equal
    stats["equal_reward_steps"] = equal["steps"]
    if equal["in_a_row"] == EQUAL_REWARDS_WARN_STEPS and not equal.get("warned"):
        equal["warned"] = True
        if is_main:
            tqdm.write(
                f"warning: every group's G rewards were equal for {EQUAL_REWARDS_WARN_STEPS} steps: no advantage, "
                "no gradient; raise grpo.temperatures or grpo.num_generations, or check the rewards",
                file=sys.stderr,
            )
