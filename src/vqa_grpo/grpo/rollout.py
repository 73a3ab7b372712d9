"""A GRPO rollout: sample G completions per question in one batched decode, score them, and
compute group-relative advantages.

The run's forward plan (models/plan.py, chosen by grpo/plan.py) says how: on the shared prefix
each question's prompt and image run once and the G completions are decoded from its expanded KV
cache (models/prefix.py); the rollout keeps the plan so that the loss's passes take its path.
With the fused prefill that one pass of the prompts is also the loss's: it runs with gradient
before sampling, the sampler decodes from a detached copy of its cache, and the loss extends the
original, so a step runs each prompt once in all.

Shapes: B questions, G completions each, R = B*G rows (group after group), P prompt tokens,
C completion tokens.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from vqa_grpo.config import GRPOConfig, RewardConfig
from vqa_grpo.data.prompts import prompt_template, user_texts
from vqa_grpo.data.types import VQAExample
from vqa_grpo.grpo.augment import Augmented, augmented_rows, sample_augmented
from vqa_grpo.grpo.math import group_advantages
from vqa_grpo.models.adapters import FamilyAdapter, PromptBatch
from vqa_grpo.models.generation import Completions, decode, sample_groups
from vqa_grpo.models.plan import PLAIN, ForwardPlan
from vqa_grpo.models.prefix import Prefix, copyable_cache, encode_prefix, log_once, sampling_copy
from vqa_grpo.models.processors import row_sampling_params
from vqa_grpo.rewards import clean_answer, compute_rewards
from vqa_grpo.rewards.inputs import bad_input_counts


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
    bad_reward_inputs: int = 0  # bad inputs the rewards counted (rewards/inputs.py: empty, None, over-long)
    plan: ForwardPlan = PLAIN  # the paths of its sampling and of the passes after it (models/plan.py)
    # [R, C] truncated importance weights when vLLM sampled (grpo/vllm_backend.py)
    is_weights: torch.Tensor | None = None
    reward_seconds: dict[str, float] = field(default_factory=dict)  # each user reward function's wall time
    completions: list[str] = field(default_factory=list)  # [R] decoded completions, as the model wrote them
    images: list = field(default_factory=list)  # [B] the images its prompts encode (dynamic sampling re-packs them)
    bad_input_rows: list[int] = field(default_factory=list)  # [R] bad inputs per row (sum: bad_reward_inputs)
    augmented: list[str | None] = field(default_factory=list)  # [R] NAME:SEVERITY a row was sampled on, or None

    @property
    def sampled_on_prefix(self) -> bool:
        """Sampled from a shared prefix (each prompt run once per group). Whether the log-prob passes
        share it is the plan's ``score_shared`` (logged as ``shared_prefix``)."""
        return self.plan.sample_shared

    def repeated_prompts(self, adapter: FamilyAdapter) -> PromptBatch:
        return adapter.repeat(self.prompts, self.group_size)


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
    plan: ForwardPlan,
    *,
    vllm_sampler=None,
    reward_funcs: dict | None = None,
    template: str | None = None,
    augmented: Augmented | None = None,
    vqa_convention: str = "official",
    benchmark: str | None = None,
) -> tuple[Rollout, Prefix | None]:
    """Sample G completions for each question on the run's ``plan`` (one batched decode, or
    ``vllm_sampler``'s engine), score, and centre. When ``plan`` fuses the prefill, also return the
    prompts' pass with gradient that sampling decoded from: hand it to the loss once
    (``grpo_objective(..., prefix=...)``); its graph goes with that backward pass (None when the
    plan has no fused prefill). ``template``: the prompt template (data/prompts.py; default: the
    one for ``reward.reasoning`` without a data config). ``augmented``: the last k completions of
    each group sampled on perturbed images (grpo/augment.py). ``vqa_convention``, ``benchmark``:
    the vqa_accuracy reward's form (``compute_rewards``; a run passes eval's and data's)."""
    G = grpo.num_generations
    asked = user_texts(examples, template or prompt_template(None, reward.reasoning))
    prompts = adapter.encode_prompts(processor, images, asked).to(device)
    prefix, keep_prefill = None, plan.fused and vllm_sampler is None
    if keep_prefill:
        with torch.enable_grad():
            prefix = encode_prefix(model, prompts, G, plan.position_rule)
        if not copyable_cache(prefix.cache):  # run it again for sampling; keep it for the loss
            log_once(
                f"GRPO prefill: a {type(prefix.cache).__name__} cannot be copied for sampling; sampling runs the "
                "prompts again"
            )
            keep_prefill = False
    temps, top_ps = row_sampling_params(len(examples), G, grpo.temperatures, grpo.top_ps)
    temps, top_ps = temps.to(device), top_ps.to(device)
    if vllm_sampler is not None:  # vLLM draws the samples; pi_old comes from the trainer (grpo/vllm_backend.py)
        comp, samp_logp = _sample_with_vllm(
            vllm_sampler, model, adapter, processor, asked, images, grpo, temps, top_ps, device
        )
    elif augmented is not None:  # NoisyRollout: k rows of each group on perturbed images, the loss on clean ones
        comp, samp_logp = sample_augmented(
            model, adapter, processor, prompts, augmented, asked, grpo, temps, top_ps, device, plan
        )
    else:
        for_sampling = sampling_copy(prefix) if keep_prefill else None
        comp, samp_logp = sample_groups(
            model, adapter, processor, prompts, plan, temps, top_ps,
            group_size=G, max_new_tokens=grpo.max_completion_length, prefix=for_sampling,
        )  # fmt: skip
    texts = decode(processor, comp)  # the raw completions
    rep_examples = [e for e in examples for _ in range(G)]
    # The rewards clean the raw completions themselves (the format reward needs them raw). An
    # empty completion is a normal policy output here, so the rewards' bad-input warning is kept
    # out of the progress bar and its count logged instead (Rollout.bad_reward_inputs).
    scored = compute_rewards(
        texts,
        [e.answers for e in rep_examples],
        [e.answer_type for e in rep_examples],
        reward,
        vqa_convention=vqa_convention,
        benchmark=benchmark,
        functions=reward_funcs,
        examples=rep_examples,
        warn_bad_inputs=False,
    )
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
        plan=plan,
        reward_seconds=scored.seconds,
        completions=texts,
        images=list(images),
        bad_input_rows=bad_input_counts(texts, [e.answers for e in rep_examples]),
        augmented=augmented_rows(augmented, len(examples), G),
    )
    return rollout, prefix


def _sample_with_vllm(
    vllm_sampler,
    model,
    adapter,
    processor,
    user_texts: list[str],
    images,
    grpo: GRPOConfig,
    temps: torch.Tensor,
    top_ps: torch.Tensor,
    device,
) -> tuple[Completions, torch.Tensor]:
    """G completions of each question from the colocated vLLM engine, and its per-token log-probs."""
    texts = [adapter.prompt_text(processor, t) for t in user_texts]
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
