"""DAPO's dynamic sampling (Yu et al., 2025, "DAPO", section 3.2): keep only the groups that carry
an advantage, and pack the kept ones into the step's micro-batches.

A group is kept when its G rewards are not all equal (std > 0) and its mean reward, scaled by the
reward's range to (mean - least) / (greatest - least) (rewards/registry.py ``reward_range``, the
same scale as prioritised sampling's difficulty), lies in [filter_low, filter_high]. With the
bounds at 0 and 1 only the equal-rewards rule acts: no group with a spread is dropped. The filter
and the packing are pure; ``take_groups`` builds one micro-batch's rollout from groups of several
sampled rollouts, encoding their prompts again (the family's adapter owns the prompt tensors'
layout), with the advantages recomputed on the packed batch as a plain rollout of those questions
computes them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Callable

import torch

from vqa_grpo.grpo.math import group_advantages
from vqa_grpo.grpo.rollout import Rollout

if TYPE_CHECKING:
    from vqa_grpo.config import GRPOConfig
    from vqa_grpo.distributed import Dist


def equal_rewards(rewards: torch.Tensor, group_size: int) -> torch.Tensor:
    """[B] bool: the groups of ``rewards`` [B*G] whose G rewards are all equal (std 0, no advantage),
    as max == min, which leaves no rounding residue. The one test of a "zero-std group": the filter,
    frac_reward_zero_std and the packing all use it."""
    r = rewards.view(-1, group_size)  # [B, G]
    return r.max(dim=1).values == r.min(dim=1).values


def keep_groups(
    rewards: torch.Tensor, group_size: int, low: float, high: float, bounds: tuple[float, float] = (0.0, 1.0)
) -> list[bool]:
    """Per group of ``rewards`` [B*G]: std > 0 and low <= (mean - least) / (greatest - least) <=
    high, ``bounds`` being (least, greatest) total reward; (low, high) = (0, 1) checks no mean."""
    spread = ~equal_rewards(rewards, group_size)
    if (low, high) == (0.0, 1.0):
        return spread.tolist()
    r = rewards.double().view(-1, group_size)  # [B, G]
    least, greatest = bounds
    mean = (r.mean(dim=1) - least) / (greatest - least) if greatest > least else torch.full_like(r[:, 0], 0.5)
    return (spread & (mean >= low) & (mean <= high)).tolist()


@dataclass
class Packing:
    """Where a step's kept groups go: ``micro`` lists, per micro-batch, its (rollout, group) picks;
    ``weights`` each micro-batch's loss factor (None: 1 / len(micro) each, a full step);
    ``surplus`` kept groups left out because the step was full."""

    micro: list[list[tuple[int, int]]]
    weights: list[float] | None
    surplus: int


def pack(
    kept: list[tuple[int, int]],
    dropped: list[tuple[int, int]],
    per_micro: int,
    micro_batches: int,
    kept_all: int,
    world: int = 1,
) -> Packing:
    """Pack ``kept`` (in sampling order; the first per_micro x micro_batches) into micro-batches of
    ``per_micro`` groups. A full step on every process (``kept_all``, the kept groups over all
    processes, is world x per_micro x micro_batches) keeps today's 1 / micro_batches per
    micro-batch. A short step weighs micro-batch i by world x n_i / kept_all, so that the
    gradient, averaged over processes, is that of one batch of every kept group; the micro-batches
    it lacks are filled with one dropped group each at weight 0 (zero gradient), so that every
    process runs ``micro_batches`` backward passes, as the accumulation and the collectives need."""
    need = per_micro * micro_batches
    mine, surplus = kept[:need], max(0, len(kept) - need)
    micro = [mine[i : i + per_micro] for i in range(0, len(mine), per_micro)]
    if kept_all == world * need:
        return Packing(micro, None, surplus)
    weights = [world * len(m) / kept_all for m in micro]
    fill = micro_batches - len(micro)
    micro += [[dropped[i]] for i in range(fill)]
    return Packing(micro, weights + [0.0] * fill, surplus)


def take_groups(
    rollouts: list[Rollout], picks: list[tuple[int, int]], adapter, processor, texts, scale: str
) -> Rollout:
    """One rollout of the groups ``picks`` ((rollout, group) pairs): prompts encoded again from
    the rollouts' visuals (each question's images and video) and ``texts`` (the user texts of a
    list of examples), completions padded to the longest, advantages recomputed with ``scale``
    (grpo.scale_rewards)."""
    first = rollouts[picks[0][0]]
    G, device = first.group_size, first.completion_ids.device
    examples = [rollouts[i].examples[b] for i, b in picks]
    visuals = [rollouts[i].visuals[b] for i, b in picks]
    prompts = adapter.encode_prompts(processor, visuals, texts(examples)).to(device)
    C = max(rollouts[i].completion_ids.shape[1] for i, _ in picks)

    def rows(t: torch.Tensor, i: int, b: int) -> torch.Tensor:
        return t[b * G : (b + 1) * G]

    def padded(name: str) -> torch.Tensor:
        parts = [rows(getattr(rollouts[i], name), i, b) for i, b in picks]
        return torch.cat([torch.nn.functional.pad(p, (0, C - p.shape[1])) for p in parts])

    def stacked(get) -> torch.Tensor:
        return torch.cat([rows(get(rollouts[i]), i, b) for i, b in picks])

    def listed(name: str) -> list:
        return [x for i, b in picks for x in getattr(rollouts[i], name)[b * G : (b + 1) * G]]

    rewards = stacked(lambda r: r.rewards)
    bad_rows = listed("bad_input_rows")
    seconds: dict[str, float] = {}
    for i in dict.fromkeys(i for i, _ in picks):  # each sampled rollout's reward time once
        for name, t in rollouts[i].reward_seconds.items():
            seconds[name] = seconds.get(name, 0.0) + t
    return replace(
        first,
        examples=examples,
        prompts=prompts,
        completion_ids=padded("completion_ids"),
        completion_mask=padded("completion_mask"),
        sampling_logprobs=padded("sampling_logprobs"),
        truncated=stacked(lambda r: r.truncated),
        temperatures=stacked(lambda r: r.temperatures),
        answers=listed("answers"),
        completions=listed("completions"),
        rewards=rewards,
        reward_parts={k: stacked(lambda r, k=k: r.reward_parts[k]) for k in first.reward_parts},
        advantages=group_advantages(rewards, G, scale=scale).to(device),
        bad_reward_inputs=sum(bad_rows),
        bad_input_rows=bad_rows,
        augmented=listed("augmented"),
        reward_seconds=seconds,
        old_logprobs=None,
        ref_logprobs=None,
        is_weights=None,
        visuals=visuals,
    )


@dataclass
class Filled:
    """A step's micro-batch rollouts after filtering, their loss factors (Packing.weights), and
    what the filter did: its resampling rounds and micro-batches drawn (this process), and the
    groups sampled, kept and left over (all processes)."""

    rollouts: list[Rollout]
    weights: list[float] | None
    rounds: int
    micro_batches_drawn: int
    groups_sampled: int
    groups_kept: int
    groups_surplus: int
    short: bool  # fewer groups kept than a full step holds

    def stats(self, num_generations: int) -> dict[str, float]:
        """metrics.jsonl's ``dynamic/*``; counts as floats, as the mean over processes makes them."""
        return {
            "dynamic/rounds": float(self.rounds),
            "dynamic/micro_batches_drawn": float(self.micro_batches_drawn),
            "dynamic/groups_sampled": float(self.groups_sampled),
            "dynamic/groups_kept": float(self.groups_kept),
            "dynamic/groups_surplus": float(self.groups_surplus),
            "dynamic/completions_per_kept_group": num_generations * self.groups_sampled / max(self.groups_kept, 1),
            "dynamic/short": float(self.short),
        }


def fill_step(
    draw: Callable[[], Rollout],
    finish: Callable[[Rollout], Rollout],
    repack: Callable[[list[Rollout], list[tuple[int, int]]], Rollout],
    *,
    grpo: GRPOConfig,
    bounds: tuple[float, float],
    per_micro: int,
    micro_batches: int,
    dist: Dist,
) -> Filled:
    """Sample ``micro_batches`` draws (``draw()``: the next questions' rollout, one micro-batch of
    per_micro questions), drop the groups ``keep_groups`` refuses (``bounds``: the reward's range),
    then resample in rounds while any process is still short of per_micro x micro_batches kept
    groups, at most grpo.max_resample_rounds rounds. A round draws ceil(missing / per_micro)
    micro-batches, the most any process lacks (``dist.max``), on every process, since sampling may
    be a collective and every rank must run as many passes; so a round refills the whole step,
    whatever the accumulation. Kept groups beyond the need (from the last round) are dropped and
    counted as surplus. ``repack(rollouts, picks)`` builds a micro-batch (``take_groups``);
    ``finish`` adds the old and reference log-probs to each packed rollout."""
    need = per_micro * micro_batches
    sampled: list[Rollout] = []
    kept: list[tuple[int, int]] = []
    dropped: list[tuple[int, int]] = []

    def sample() -> None:
        ro = draw()
        i = len(sampled)
        sampled.append(ro)
        for b, ok in enumerate(keep_groups(ro.rewards, ro.group_size, grpo.filter_low, grpo.filter_high, bounds)):
            (kept if ok else dropped).append((i, b))

    for _ in range(micro_batches):
        sample()
    rounds = 0
    while rounds < grpo.max_resample_rounds:
        lacking = round(dist.max(math.ceil(max(0, need - len(kept)) / per_micro)))
        if lacking == 0:
            break
        for _ in range(lacking):
            sample()
        rounds += 1
    kept_all = round(dist.sum(min(len(kept), need)))
    packing = pack(kept, dropped, per_micro, micro_batches, kept_all, dist.world)
    rollouts = []
    for picks in packing.micro:
        i = picks[0][0]
        whole = picks == [(i, b) for b in range(len(sampled[i].examples))]
        rollouts.append(finish(sampled[i] if whole else repack(sampled, picks)))
    return Filled(
        rollouts,
        packing.weights,
        rounds=rounds,
        micro_batches_drawn=len(sampled),
        groups_sampled=sum(len(ro.examples) for ro in sampled) * dist.world,  # every process draws as often
        groups_kept=kept_all,
        groups_surplus=round(dist.sum(packing.surplus)),
        short=kept_all < dist.world * need,
    )
