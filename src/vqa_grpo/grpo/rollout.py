"""A GRPO rollout: sample G completions per question in one batched decode, score them, and
compute group-relative advantages.

With ``grpo.shared_prefix`` (auto: wherever the family supports it) each question's prompt and
image run once and the G completions are decoded from its expanded KV cache (models/prefix.py);
the rollout remembers the path so that the loss's forward pass takes the same one.

Shapes: B questions, G completions each, R = B*G rows (group after group), P prompt tokens,
C completion tokens.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
from transformers import LogitsProcessorList

from vqa_grpo.config import GRPOConfig, RewardConfig
from vqa_grpo.data.types import VQAExample
from vqa_grpo.grpo.math import group_advantages
from vqa_grpo.grpo.sampling import RowwiseTemperatureTopP, row_sampling_params, sampling_logprobs
from vqa_grpo.models.adapters import FamilyAdapter, PromptBatch
from vqa_grpo.models import prefix as shared
from vqa_grpo.models.generation import Completions, decode, generate
from vqa_grpo.rewards import clean_answer, compute_rewards


@dataclass
class Rollout:
    """Everything the loss needs from one rollout, and what the logs show of it."""

    examples: list[VQAExample]  # [B]
    prompts: PromptBatch  # [B, P], each prompt once; the adapter repeats it G times
    group_size: int  # G
    completion_ids: torch.Tensor  # [R, C]
    completion_mask: torch.Tensor  # [R, C] 1 up to and including the stop token (0 for truncated rows when masked)
    truncated: torch.Tensor  # [R] bool, no stop token within max_completion_length
    temperatures: torch.Tensor  # [R] the temperature each row was sampled at
    sampling_logprobs: torch.Tensor  # [R, C] log-prob of each token under the (tempered, top-p) sampler
    answers: list[str]  # [R] decoded and cleaned completions
    rewards: torch.Tensor  # [R] weighted total reward
    reward_parts: dict[str, torch.Tensor]  # name -> [R]
    advantages: torch.Tensor  # [R]
    old_logprobs: torch.Tensor | None = None  # [R, C] rollout policy, when num_iterations > 1
    ref_logprobs: torch.Tensor | None = None  # [R, C] reference policy, when beta > 0
    bad_reward_inputs: int = 0  # completions the rewards scored as bad input (empty ones)
    shared_prefix: bool = False  # each prompt runs once per group, here and in the loss (models/prefix.py)
    is_weights: torch.Tensor | None = None  # [R, C] truncated importance weights when vLLM sampled (grpo/vllm_backend.py)

    def repeated_prompts(self, adapter: FamilyAdapter) -> PromptBatch:
        return adapter.repeat(self.prompts, self.group_size)


@torch.no_grad()
def make_rollout(
    model,
    adapter: FamilyAdapter,
    processor,
    examples: list[VQAExample],
    images: list,
    grpo: GRPOConfig,
    reward: RewardConfig,
    device: torch.device,
    vllm_sampler=None,
) -> Rollout:
    """Sample G completions for each question (one batched decode, or ``vllm_sampler``'s engine), score, and centre."""
    G = grpo.num_generations
    use_shared = shared.resolve(model, grpo.shared_prefix)
    prompts = adapter.encode_prompts(processor, images, [e.question for e in examples]).to(device)
    temps, top_ps = row_sampling_params(len(examples), G, grpo.temperatures, grpo.top_ps)
    temps, top_ps = temps.to(device), top_ps.to(device)
    if vllm_sampler is not None:  # vLLM draws the samples; pi_old comes from the trainer (grpo/vllm_backend.py)
        comp, samp_logp = _sample_with_vllm(vllm_sampler, model, adapter, processor, examples, images, grpo, temps, top_ps, device)
    else:
        sampler = RowwiseTemperatureTopP(temps, top_ps)
        comp = generate(
            model,
            adapter,
            processor,
            prompts,
            max_new_tokens=grpo.max_completion_length,
            do_sample=True,
            logits_processor=LogitsProcessorList([sampler]),
            keep_scores=True,
            group_size=G,
            shared_prefix=use_shared,
        )
        samp_logp = sampling_logprobs(comp.scores, comp.ids) * comp.mask
    texts = decode(processor, comp)
    rep_examples = [e for e in examples for _ in range(G)]
    # The rewards clean the raw completions themselves (the format reward needs them raw). An
    # empty completion is a normal policy output here, so the rewards' bad-input warning is kept
    # out of the progress bar and its count logged instead (Rollout.bad_reward_inputs).
    rewards_log = logging.getLogger("vqa_grpo.rewards")
    level = rewards_log.level
    rewards_log.setLevel(logging.ERROR)
    try:
        scored = compute_rewards(texts, [e.answers for e in rep_examples], [e.answer_type for e in rep_examples], reward)
    finally:
        rewards_log.setLevel(level)
    answers = [clean_answer(t, reasoning=reward.reasoning) for t in texts]
    rewards = torch.as_tensor(scored.total, dtype=torch.float32)
    advantages = group_advantages(rewards, G, scale=grpo.scale_rewards)
    mask = comp.mask
    if grpo.mask_truncated_completions:
        mask = mask * (~comp.truncated).long()[:, None]
    return Rollout(
        examples=examples,
        prompts=prompts,
        group_size=G,
        completion_ids=comp.ids,
        completion_mask=mask,
        truncated=comp.truncated,
        temperatures=temps,
        sampling_logprobs=samp_logp,
        answers=answers,
        rewards=rewards,
        reward_parts={k: torch.as_tensor(v, dtype=torch.float32) for k, v in scored.parts.items()},
        advantages=advantages.to(device),
        bad_reward_inputs=scored.bad_inputs,
        shared_prefix=use_shared,
    )


def _sample_with_vllm(vllm_sampler, model, adapter, processor, examples, images, grpo: GRPOConfig,
                      temps: torch.Tensor, top_ps: torch.Tensor, device) -> tuple[Completions, torch.Tensor]:
    """G completions of each question from the colocated vLLM engine, and its per-token log-probs."""
    texts = [adapter.prompt_text(processor, e.question) for e in examples]
    samples = vllm_sampler.sample(
        texts, images, grpo.num_generations, temps, top_ps, grpo.max_completion_length,
        adapter.stop_token_ids(processor, model), adapter.suppressed_token_ids(processor),
    )
    comp = Completions(samples.ids.to(device), samples.mask.to(device), samples.truncated.to(device))
    return comp, samples.logprobs.to(device) * comp.mask
