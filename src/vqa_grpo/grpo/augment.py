"""Augmented rollouts (NoisyRollout; Liu et al., 2025, "NoisyRollout: Reinforcing Visual Reasoning
with Data Augmentation"): part of each group is sampled on a perturbed copy of its visuals.

Each group (question) draws one (name, severity) of grpo.augment; the last k of its G completions
are sampled on its visuals so perturbed (data/perturb.py), the first G - k on the clean ones, and
the rewards and advantages are taken over all G together, so the distorted views widen the
group's exploration. Every image of a question and every frame of its video is perturbed as a
lone image is, with the question's one seed (``perturb_visuals``): a crop's place, a rotation's
direction, a noise pattern are the same across the frames of a clip (and the images of a list,
for images of one size). As in NoisyRollout, the loss conditions every completion on the clean
visuals: the rollout's prompts are the clean ones, and the policy gradient, the old policy's and
the reference's log-probs all read them. (``Rollout.sampling_logprobs`` of the k rows are those of
the sampler that drew them, on the perturbed visuals; only vLLM's importance weights read them,
and vLLM is refused with augment.)

k = floor(augment_share * G * f + 1/2), f = 1 (``constant``) or 1 - step / train.max_steps
(``linear_decay``, NoisyRollout's annealing applied to the share, as severities are steps of
1-5); k = 0 samples as without augment. The draw and the perturbation's seed are hashes of
(train.seed, step, example id): no RNG state of their own, so a resumed run perturbs exactly as
the uninterrupted one, and every process agrees on k.

On the shared prefix the clean and perturbed prompts cannot share one KV cache: each is run once
and decoded as its own sub-group (G - k, then k rows per question), two generate calls in all;
the fused prefill is off with augment (grpo/plan.py), as its pass is the clean prompts' alone.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch

from vqa_grpo.config import GRPOConfig
from vqa_grpo.data.perturb import label, parse_perturbations, perturb, perturb_seed
from vqa_grpo.data.types import Video
from vqa_grpo.models.generation import Completions, sample_groups


@dataclass(frozen=True)
class Augmented:
    """The perturbed visuals of one rollout's questions, and how many rows of each group see them."""

    visuals: list  # [B] each question's visuals (or its one image), perturbed
    labels: list[str]  # [B] its perturbation, NAME:SEVERITY
    count: int  # k: the last k of each group's G completions are sampled on ``visuals``


def augmented_count(grpo: GRPOConfig, step: int, max_steps: int) -> int:
    """k at optimiser step ``step`` (0-based): see the module docstring."""
    if not grpo.augment:
        return 0
    f = 1.0 if grpo.augment_schedule == "constant" else max(0.0, 1.0 - step / max_steps)
    return math.floor(grpo.augment_share * grpo.num_generations * f + 0.5)


def augment_batch(grpo: GRPOConfig, seed: int, step: int, max_steps: int, examples, visuals) -> Augmented | None:
    """The perturbed visuals of each question at ``step`` (``visuals[b]``: its images and video, or
    its one image); None when k = 0: sample as without augment."""
    count = augmented_count(grpo, step, max_steps)
    if count == 0:
        return None
    choices = parse_perturbations(grpo.augment)
    picked = [choices[perturb_seed(f"{e.id}\0{step}", "augment", 0, seed) % len(choices)] for e in examples]
    out = [
        perturb_visuals(shown, name, severity, perturb_seed(f"{e.id}\0{step}", name, severity, seed))
        for e, shown, (name, severity) in zip(examples, visuals, picked)
    ]
    return Augmented(out, [label(*p) for p in picked], count)


def perturb_visuals(visuals, name: str, severity: int, seed: int):
    """``visuals`` perturbed (data/perturb.py), each image and each video frame as a lone image,
    all with ``seed``: an image gives an image, a Video a Video at the same rate and times, a list a list."""
    if isinstance(visuals, list):
        return [perturb_visuals(v, name, severity, seed) for v in visuals]
    if isinstance(visuals, Video):
        return replace(visuals, frames=[perturb(f, name, severity, seed) for f in visuals.frames])
    return perturb(visuals, name, severity, seed)


def augmented_rows(augmented: Augmented | None, B: int, G: int) -> list[str | None]:
    """[B * G] each row's perturbation (None: sampled on the clean image), group after group."""
    k = 0 if augmented is None else augmented.count
    labels = augmented.labels if augmented is not None else [None] * B
    return [labels[b] if j >= G - k else None for b in range(B) for j in range(G)]


def sample_augmented(
    model, adapter, processor, prompts, augmented: Augmented, asked: list[str], grpo, temps, top_ps, device, plan
) -> tuple[Completions, torch.Tensor]:
    """G completions per question, the first G - k on ``prompts`` (clean), the last k on the same
    questions with ``augmented.visuals`` (their perturbed visuals); rows group after group as one
    sampling call lays them out. Returns the completions [R, C] and their sampler log-probs [R, C]."""
    G, k = grpo.num_generations, augmented.count
    B = len(asked)
    temps, top_ps = temps.view(B, G), top_ps.view(B, G)
    parts = []
    for batch, cols in ((prompts, slice(0, G - k)), (None, slice(G - k, G))):
        n = cols.stop - cols.start
        if n == 0:
            continue
        if batch is None:
            batch = adapter.encode_prompts(processor, augmented.visuals, asked).to(device)
        temps_n, top_ps_n = temps[:, cols].reshape(-1), top_ps[:, cols].reshape(-1)  # [B * n]
        comp, logps = sample_groups(
            model, adapter, processor, batch, plan, temps_n, top_ps_n,
            group_size=n, max_new_tokens=grpo.max_completion_length,
        )  # fmt: skip
        parts.append((comp, logps, n))
    pad_id = processor.tokenizer.pad_token_id
    return _interleave(parts, B, 0 if pad_id is None else pad_id)


def _interleave(parts, B: int, pad_id: int) -> tuple[Completions, torch.Tensor]:
    """Sub-groups [B * n_i, C_i] -> [B * G, max C], each question's rows together in part order."""
    C = max(comp.ids.shape[1] for comp, _, _ in parts)

    def padded(x: torch.Tensor, n: int, value) -> torch.Tensor:  # [B * n, C_i] -> [B, n, C]
        x = torch.nn.functional.pad(x, (0, C - x.shape[1]), value=value)
        return x.view(B, n, C)

    ids = torch.cat([padded(c.ids, n, pad_id) for c, _, n in parts], dim=1).view(-1, C)
    mask = torch.cat([padded(c.mask, n, 0) for c, _, n in parts], dim=1).view(-1, C)
    logp = torch.cat([padded(lp, n, 0.0) for _, lp, n in parts], dim=1).view(-1, C)
    truncated = torch.cat([c.truncated.view(B, n) for c, _, n in parts], dim=1).view(-1)
    return Completions(ids, mask, truncated), logp
