"""A GRPO rollout and its loss: sample G completions per question in one batched decode, score
them and compute group-relative advantages (``make_rollout_and_prefill``); then the loss of one
optimisation step on it, the model's forward pass plus the pure math (``grpo_objective``).

The run's forward plan (models/plan.py, chosen by grpo/plan.py) says how: on the shared prefix
each question's prompt and visuals run once and the G completions are decoded from its expanded KV
cache (models/prefix.py); the rollout keeps the plan so that the loss's passes take its path.
With the fused prefill that one pass of the prompts is also the loss's: it runs with gradient
before sampling, the sampler decodes from a detached copy of its cache, and the loss extends the
original, so a step runs each prompt once in all.

``grpo_objective`` is DeepSeekMath's clipped GRPO objective (grpo/math.py ``policy_loss``) or
one of its variants (GSPO, CISPO, SAPO, top-entropy tokens), with the optional MLE term of the
seed's hybrid objective (``grpo.sft_coef``). ``seed_report_objective``
is the seed's Algorithm 1, kept as a reproduction mode (``grpo.loss_type=seed_report``): its factor
-mean(normalised rewards) is zero by construction, so it trains nothing.

Shapes: B questions, G completions each, R = B*G rows (group after group), P prompt tokens,
C completion tokens.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import torch

from vqa_grpo.config import GRPOConfig, RewardConfig
from vqa_grpo.data.prompts import prompt_template, user_texts
from vqa_grpo.data.types import VQAExample
from vqa_grpo.grpo.augment import Augmented, augmented_rows, sample_augmented
from vqa_grpo.grpo.math import group_advantages, high_entropy_mask, policy_loss, seed_report_loss
from vqa_grpo.models.adapters import FamilyAdapter, PromptBatch
from vqa_grpo.models.generation import Completions, decode, sample_groups
from vqa_grpo.models.plan import PLAIN, ForwardPlan
from vqa_grpo.models.prefix import Prefix, copyable_cache, encode_prefix, log_once, sampling_copy
from vqa_grpo.models.processors import row_sampling_params
from vqa_grpo.models.scoring import answer_ids, completion_logprobs
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
    # [B] each prompt's visuals, as encoded (dynamic sampling re-packs them)
    visuals: list = field(default_factory=list)
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
    visuals: list,
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
    ``vllm_sampler``'s engine), score, and centre. ``visuals[b]``: question b's images and video
    (``VQAExample.load_visuals``), or its one image. When ``plan`` fuses the prefill, also return the
    prompts' pass with gradient that sampling decoded from: hand it to the loss once
    (``grpo_objective(..., prefix=...)``); its graph goes with that backward pass (None when the
    plan has no fused prefill). ``template``: the prompt template (data/prompts.py; default: the
    one for ``reward.reasoning`` without a data config). ``augmented``: the last k completions of
    each group sampled on perturbed visuals (grpo/augment.py). ``vqa_convention``, ``benchmark``:
    the vqa_accuracy reward's form (``compute_rewards``; a run passes eval's and data's)."""
    G = grpo.num_generations
    asked = user_texts(examples, template or prompt_template(None, reward.reasoning))
    prompts = adapter.encode_prompts(processor, visuals, asked).to(device)
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
            vllm_sampler, model, adapter, processor, asked, visuals, grpo, temps, top_ps, device
        )
    elif augmented is not None:  # NoisyRollout: k rows of each group on perturbed visuals, the loss on clean ones
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
        visuals=list(visuals),
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
    visuals,
    grpo: GRPOConfig,
    temps: torch.Tensor,
    top_ps: torch.Tensor,
    device,
) -> tuple[Completions, torch.Tensor]:
    """G completions of each question from the colocated vLLM engine, and its per-token log-probs;
    each prompt's text places its visuals as the adapter's encoding does."""
    texts = [adapter.prompt_text(processor, t, v) for t, v in zip(user_texts, visuals, strict=True)]
    samples = vllm_sampler.sample(
        texts,
        visuals,
        grpo.num_generations,
        temps,
        top_ps,
        grpo.max_completion_length,
        adapter.stop_token_ids(processor, model),
        adapter.suppressed_token_ids(processor),
    )
    comp = Completions(samples.ids.to(device), samples.mask.to(device), samples.truncated.to(device))
    return comp, samples.logprobs.to(device) * comp.mask


def rollout_logprobs(
    model, adapter: FamilyAdapter, rollout: Rollout, *, with_entropy: bool = True, prefix: Prefix | None = None
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Per-token log-probs [R, C] (at each row's sampling temperature) and entropies [R, C].

    On the rollout's plan: each prompt runs once per group where it shares the prefix for this
    pass, else G times (the same numbers up to float rounding; models/scoring.py). ``prefix``: the
    rollout's own pass of the prompts, kept with gradient (the fused prefill), extended here.
    """
    return completion_logprobs(
        model,
        adapter,
        rollout.prompts,
        rollout.completion_ids,
        rollout.completion_mask,
        rollout.plan,
        rollout.temperatures,
        with_entropy=with_entropy,
        group_size=rollout.group_size,
        prefix=prefix,
    )


def answer_nll(model, adapter: FamilyAdapter, processor, rollout: Rollout) -> torch.Tensor:
    """Token-mean negative log-likelihood of the ground-truth answers (the seed's eq. 1), one row per
    question on the plain path."""
    stop = adapter.stop_token_ids(processor, model)[0]
    ids, mask = answer_ids(processor.tokenizer, [e.answer for e in rollout.examples], stop)
    ids, mask = ids.to(rollout.completion_ids.device), mask.to(rollout.completion_ids.device)
    plain = replace(PLAIN, logprob_chunk_size=rollout.plan.logprob_chunk_size)
    logp, _ = completion_logprobs(model, adapter, rollout.prompts, ids, mask, plain, with_entropy=False)
    return -(logp * mask).sum() / mask.sum()


def grpo_objective(
    model, adapter: FamilyAdapter, processor, rollout: Rollout, cfg: GRPOConfig, *, prefix: Prefix | None = None
) -> tuple[torch.Tensor, dict]:
    """GRPO loss on one rollout, and detached statistics for the logs. ``prefix``: the fused prefill
    that ``make_rollout_and_prefill`` kept for this rollout, used once (its graph is freed by this
    loss's backward pass)."""
    logp, entropy = rollout_logprobs(model, adapter, rollout, prefix=prefix)
    mask = rollout.completion_mask
    old = rollout.old_logprobs if rollout.old_logprobs is not None else logp.detach()
    q = cfg.top_entropy_quantile
    entropy_mask = high_entropy_mask(entropy, mask, q) if q < 1 else None  # [R, C]
    loss, stats = policy_loss(
        logp,
        old,
        rollout.advantages,
        mask,
        ref_logprobs=rollout.ref_logprobs,
        beta=cfg.beta,
        epsilon=cfg.epsilon,
        epsilon_high=cfg.epsilon_high,
        loss_type=cfg.loss_type,
        max_completion_length=cfg.max_completion_length,
        token_weights=rollout.is_weights,
        importance_sampling_level=cfg.importance_sampling_level,
        sapo_temperature_pos=cfg.sapo_temperature_pos,
        sapo_temperature_neg=cfg.sapo_temperature_neg,
        entropy_mask=entropy_mask,
    )
    m = mask.float()
    stats["entropy"] = (entropy * m).sum() / m.sum().clamp(min=1)
    if cfg.sft_coef > 0:
        nll = answer_nll(model, adapter, processor, rollout)
        stats["sft_nll"] = nll.detach()
        loss = loss + cfg.sft_coef * nll
    # One device-to-host copy for all the statistics, not one synchronisation each.
    values = torch.stack([v.detach().float().reshape(()) for v in stats.values()]).tolist()
    stats = dict(zip(stats, values))
    stats["shared_prefix"] = float(rollout.plan.score_shared)  # 1: each prompt encoded once per group
    return loss, stats


def seed_report_objective(model, adapter: FamilyAdapter, processor, rollout: Rollout) -> tuple[torch.Tensor, dict]:
    """The seed's Algorithm 1: -mean(group-normalised rewards) x LM loss of the prompt.

    L_base is the language-model loss of the prompt tokens (labels = input_ids, with padding and
    image tokens ignored, as they can never be labels). The group mean of normalised rewards is 0
    up to rounding, so the gradient vanishes; a test shows it.
    """
    prompts = rollout.prompts
    labels = adapter.prompt_labels(processor, prompts)  # padding and image-layout tokens -> -100
    lm_loss = model(**prompts.model_inputs(), labels=labels, use_cache=False).loss
    G = rollout.group_size
    losses = [seed_report_loss(r, lm_loss) for r in rollout.rewards.to(lm_loss.device).view(-1, G)]
    loss = torch.stack(losses).mean()
    return loss, {"lm_loss": float(lm_loss.detach())}
