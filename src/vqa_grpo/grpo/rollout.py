"""A GRPO rollout: sample G completions per question in one batched decode, score them, and
compute group-relative advantages.

With ``grpo.shared_prefix`` (auto: wherever the family supports it) each question's prompt and
image run once and the G completions are decoded from its expanded KV cache (models/prefix.py);
the rollout remembers the path so that the loss's forward pass takes the same one.

With the fused prefill (``grpo.fuse_prefill``, see :func:`fused_prefill_reason`) that one pass of
the prompts is also the loss's: it runs with gradient before sampling, the sampler decodes from a
detached copy of its cache, and the loss extends the original, so a step runs each prompt once in
all. It needs the loss to see exactly the policy that sampled: one optimiser step per rollout,
no active dropout, the transformers sampler, one process and one micro-batch per step.

Shapes: B questions, G completions each, R = B*G rows (group after group), P prompt tokens,
C completion tokens.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import torch
from transformers import LogitsProcessorList

from vqa_grpo.config import GRPOConfig, RewardConfig
from vqa_grpo.data.types import VQAExample
from vqa_grpo.grpo.math import group_advantages
from vqa_grpo.grpo.sampling import RowwiseTemperatureTopP, row_sampling_params, sampling_logprobs
from vqa_grpo.models import prefix as shared
from vqa_grpo.models import prefix_sampling as sampling
from vqa_grpo.models.adapters import FamilyAdapter, PromptBatch
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
    reward_parts: dict[str, torch.Tensor]  # name -> [R] (NaN where a user function returned None)
    advantages: torch.Tensor  # [R]
    old_logprobs: torch.Tensor | None = None  # [R, C] rollout policy, when num_iterations > 1
    ref_logprobs: torch.Tensor | None = None  # [R, C] reference policy, when beta > 0
    bad_reward_inputs: int = 0  # completions the rewards scored as bad input (empty ones)
    shared_prefix: bool = False  # each prompt runs once per group, here and in the loss (models/prefix.py)
    # [R, C] truncated importance weights when vLLM sampled (grpo/vllm_backend.py)
    is_weights: torch.Tensor | None = None
    reward_seconds: dict[str, float] = field(default_factory=dict)  # each user reward function's wall time

    def repeated_prompts(self, adapter: FamilyAdapter) -> PromptBatch:
        return adapter.repeat(self.prompts, self.group_size)


def has_active_dropout(model) -> bool:
    """True when a forward pass in training mode could drop anything: a dropout module with p > 0,
    or a module attribute naming a drop probability (``attention_dropout``, ``dropout``,
    ``attn_pdrop``, ``layerdrop``, ``drop_prob``, ...) that is a positive float. It may refuse for a
    tower that never runs (e.g. an audio encoder's dropout); it does not miss these forms."""
    for m in model.modules():
        if isinstance(m, torch.nn.modules.dropout._DropoutNd) and m.p > 0:
            return True
        for name, value in vars(m).items():
            if "drop" in name and isinstance(value, float) and not isinstance(value, bool) and value > 0:
                return True
    return False


def fused_prefill_reason(model, grpo: GRPOConfig, *, processes: int = 1, accumulation: int = 1) -> str | None:
    """Why the prompts' pass cannot be shared by sampling and the loss (None: it can).

    Sharing it is exact only when the loss's policy is the sampling one in the same mode: pi_old =
    pi_theta (``num_iterations`` = 1), no dropout, and the transformers sampler. It holds the
    prompts' activations during sampling, so it is kept to one micro-batch per step, and to one
    process (DDP's hooks need every pass inside its wrapper).
    """
    checks = [
        (grpo.fuse_prefill == "off", "grpo.fuse_prefill=off"),
        (not shared.resolve(model, grpo.shared_prefix), "no shared prefix"),
        (shared.checkpointing_on(model), "gradient checkpointing drops the KV cache"),
        (
            bool(sampling.plain_only_settings(model.generation_config, True)),
            "the generation config needs transformers' generate",
        ),
        (grpo.loss_type == "seed", "the seed's loss has no completion pass"),
        (grpo.num_iterations > 1, "grpo.num_iterations > 1"),
        (grpo.generation_backend != "transformers", "vLLM samples"),
        (processes > 1, "several processes"),
        (accumulation > 1, "gradient accumulation"),
        (has_active_dropout(model), "dropout is active"),
    ]
    return next((why for failed, why in checks if failed), None)


def fuse_prefill(model, grpo: GRPOConfig, *, processes: int = 1, accumulation: int = 1) -> bool:
    """Whether the rollout keeps its prompts' pass for the loss; the answer is logged once."""
    why = fused_prefill_reason(model, grpo, processes=processes, accumulation=accumulation)
    shared._log_once(
        "GRPO prefill: shared by sampling and the loss"
        if why is None
        else f"GRPO prefill: run for sampling and again in the loss ({why})"
    )
    return why is None


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
    reward_funcs: dict | None = None,
) -> Rollout:
    """Sample G completions for each question (one batched decode, or ``vllm_sampler``'s engine), score, and centre."""
    return make_rollout_and_prefill(
        model, adapter, processor, examples, images, grpo, reward, device, vllm_sampler, False, reward_funcs
    )[0]


@torch.no_grad()
def make_rollout_and_prefill(
    model,
    adapter: FamilyAdapter,
    processor,
    examples: list[VQAExample],
    images: list,
    grpo: GRPOConfig,
    reward: RewardConfig,
    device: torch.device,
    vllm_sampler=None,
    keep_prefill: bool = False,
    reward_funcs: dict | None = None,
) -> tuple[Rollout, shared.Prefix | None]:
    """:func:`make_rollout`, and with ``keep_prefill`` (when :func:`fuse_prefill` allows it) the
    prompts' pass with gradient that sampling decoded from: hand it to the loss once
    (``grpo_objective(..., prefix=...)``); its graph goes with that backward pass. None when the
    pass could not be kept."""
    G = grpo.num_generations
    use_shared = shared.resolve(model, grpo.shared_prefix)
    prompts = adapter.encode_prompts(processor, images, [e.question for e in examples]).to(device)
    prefix = None
    if keep_prefill and use_shared and vllm_sampler is None:
        with torch.enable_grad():
            prefix = shared.encode_prefix(model, prompts, G)
        if not shared.copyable_cache(prefix.cache):  # run it again for sampling; keep it for the loss
            shared._log_once(
                f"GRPO prefill: a {type(prefix.cache).__name__} cannot be copied for sampling; sampling runs the "
                "prompts again"
            )
            keep_prefill = False
    temps, top_ps = row_sampling_params(len(examples), G, grpo.temperatures, grpo.top_ps)
    temps, top_ps = temps.to(device), top_ps.to(device)
    if vllm_sampler is not None:  # vLLM draws the samples; pi_old comes from the trainer (grpo/vllm_backend.py)
        comp, samp_logp = _sample_with_vllm(
            vllm_sampler, model, adapter, processor, examples, images, grpo, temps, top_ps, device
        )
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
            prefix=shared.detached(prefix) if keep_prefill and prefix is not None else None,
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
        scored = compute_rewards(
            texts,
            [e.answers for e in rep_examples],
            [e.answer_type for e in rep_examples],
            reward,
            functions=reward_funcs,
            examples=rep_examples,
        )
    finally:
        rewards_log.setLevel(level)
    answers = [clean_answer(t, reasoning=reward.reasoning) for t in texts]
    rewards = torch.as_tensor(scored.total, dtype=torch.float32)
    advantages = group_advantages(rewards, G, scale=grpo.scale_rewards)
    mask = comp.mask
    if grpo.mask_truncated_completions:
        mask = mask * (~comp.truncated).long()[:, None]
    rollout = Rollout(
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
        reward_seconds=scored.seconds,
    )
    return rollout, prefix


def _sample_with_vllm(
    vllm_sampler,
    model,
    adapter,
    processor,
    examples,
    images,
    grpo: GRPOConfig,
    temps: torch.Tensor,
    top_ps: torch.Tensor,
    device,
) -> tuple[Completions, torch.Tensor]:
    """G completions of each question from the colocated vLLM engine, and its per-token log-probs."""
    texts = [adapter.prompt_text(processor, e.question) for e in examples]
    samples = vllm_sampler.sample(
        texts,
        images,
        grpo.num_generations,
        temps,
        top_ps,
        grpo.max_completion_length,
        adapter.stop_token_ids(processor, model),
        adapter.suppressed_token_ids(processor),
    )
    comp = Completions(samples.ids.to(device), samples.mask.to(device), samples.truncated.to(device))
    return comp, samples.logprobs.to(device) * comp.mask
