"""The backward passes of one optimiser step: SFT's, and GRPO's (rollouts, then the objective).

``lm`` is the model used for the losses' forward passes: under several processes, the
DDP/FSDP/DeepSpeed wrapper (so that its backward averages the gradients over ranks); ``policy``
is the module itself, used to sample and for the no-gradient passes. With one process both are
the same model. Every step backward-passes its micro-batches (accumulation) and returns the mean
stats of this process.
"""

from __future__ import annotations

import contextlib
import json
import time
from dataclasses import dataclass, field, replace

import torch

from vqa_grpo.config import Config
from vqa_grpo.data.prompts import DEFAULT_TEMPLATE, prompt_template, user_texts
from vqa_grpo.distributed import DDP, Dist
from vqa_grpo.errors import UserError
from vqa_grpo.grpo import dynamic
from vqa_grpo.grpo.augment import augment_batch
from vqa_grpo.grpo.logprobs import Reference, add_old_and_reference
from vqa_grpo.grpo.rollout import Rollout, grpo_objective, make_rollout_and_prefill, seed_report_objective
from vqa_grpo.models.loading import LoadedModel
from vqa_grpo.models.plan import PLAIN, ForwardPlan
from vqa_grpo.models.prefix import Prefix
from vqa_grpo.models.scoring import answer_ids, completion_logprobs
from vqa_grpo.rewards.registry import reward_range
from vqa_grpo.training.batches import Batches
from vqa_grpo.training.tally import Tally

ONE_PROCESS = DDP()


def autocast(cfg: Config, device: torch.device):
    """bf16 autocast when train.mixed_precision asks for it (a no-op context otherwise)."""
    if cfg.train.mixed_precision == "no":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


def offload(cfg: Config):
    """torch's save_on_cpu when train.offload_activations asks for it (CUDA only, checked before the
    run starts): the tensors the forward pass saves for backward, the checkpointed activations under
    model.gradient_checkpointing, wait in pinned host memory and come back for the backward pass."""
    if not cfg.train.offload_activations:
        return contextlib.nullcontext()
    return torch.autograd.graph.save_on_cpu(pin_memory=True)


def accumulate(parts: list[dict], into: dict) -> dict:
    for part in parts:
        for k, v in part.items():
            into[k] = into.get(k, 0.0) + float(v)
    return into


# ---- SFT ---------------------------------------------------------------------------------------


def sft_micro_loss(
    lm: LoadedModel,
    examples,
    visuals,
    device,
    total_tokens: float,
    template: str = DEFAULT_TEMPLATE,
    plan: ForwardPlan = PLAIN,
) -> tuple[torch.Tensor, dict]:
    """Summed NLL of the ground-truth answers (and the stop token) divided by ``total_tokens``;
    the prompts put each question in ``template`` (data/prompts.py) with its ``visuals`` (the
    example's images and video, Batches.next); ``plan``: the plain path with the run's
    grpo.logprob_chunk_size."""
    stop = lm.adapter.stop_token_ids(lm.processor, lm.model)[0]
    prompts = lm.adapter.encode_prompts(lm.processor, visuals, user_texts(examples, template)).to(device)
    ids, mask = answer_ids(lm.processor.tokenizer, [e.answer for e in examples], stop)
    ids, mask = ids.to(device), mask.to(device)
    logp, _ = completion_logprobs(lm.model, lm.adapter, prompts, ids, mask, plan, with_entropy=False)
    nll_sum = -(logp * mask).sum()
    return nll_sum / total_tokens, {"nll": float(nll_sum.detach()) / max(1, int(mask.sum()))}


def check_sft_targets(cfg: Config, mode: str) -> None:
    """Refuse supervised targets under reasoning mode: SFT (and GRPO's sft_coef term) trains on the
    bare answers, while reward.reasoning asks for <think>/<answer> tags and scores only what the
    answer tags hold, so the model would learn to leave out what every evaluation scores."""
    what = "sft" if mode == "sft" else f"grpo.sft_coef={cfg.grpo.sft_coef}" if cfg.grpo.sft_coef > 0 else None
    if cfg.reward.reasoning and what:
        fix = "set reward.reasoning=false for sft" if mode == "sft" else "set grpo.sft_coef=0"
        raise UserError(
            f"{what} trains on the bare answers, but reward.reasoning=true asks for <think>...</think>"
            f"<answer>...</answer> and scores only the answer tags' content; {fix}"
        )


def answer_token_count(lm: LoadedModel, examples) -> int:
    tok = lm.processor.tokenizer
    return sum(len(tok(e.answer, add_special_tokens=False)["input_ids"]) + 1 for e in examples)


def sft_step(cfg: Config, lm: LoadedModel, batches: Batches, device, dist: Dist = ONE_PROCESS) -> dict:
    """Backward through the step's micro-batches, the NLL normalised by the answer tokens of the
    whole step on every process (times the world size, as the wrapper averages the gradients)."""
    micro = [batches.next() for _ in range(cfg.train.gradient_accumulation_steps)]
    total = dist.sum(sum(answer_token_count(lm, ex) for ex, _ in micro)) / dist.world
    template = prompt_template(cfg.data, cfg.reward.reasoning)
    plan = replace(PLAIN, logprob_chunk_size=cfg.grpo.logprob_chunk_size)
    stats: dict = {}
    for i, (ex, vis) in enumerate(micro):
        with dist.no_sync(lm.model, sync=i == len(micro) - 1), autocast(cfg, device), offload(cfg):
            loss, micro_stats = sft_micro_loss(lm, ex, vis, device, total, template, plan)
            dist.backward(loss)
        stats = accumulate([micro_stats, {"loss": float(loss.detach())}], stats)
    stats["nll"] = stats["loss"]  # the step's token-mean NLL, whatever the micro-batch layout
    return stats


# ---- GRPO --------------------------------------------------------------------------------------


@dataclass
class Pending:
    """The rollouts of one optimiser step, reused for grpo.num_iterations steps."""

    rollouts: list[Rollout]
    prefills: list[Prefix | None] = field(default_factory=list)  # each rollout's fused prefill, for its first loss
    iteration: int = 0  # optimiser steps taken on them so far
    weights: list[float] | None = None  # each rollout's loss factor (None: 1 / len(rollouts) each)
    stats: dict = field(default_factory=dict)  # what the sampling logs (training/tally.py, dynamic/...)

    def trained(self) -> list[Rollout]:
        """The rollouts the loss trains on (not a short step's zero-weight fillers)."""
        return [ro for i, ro in enumerate(self.rollouts) if self.weights is None or self.weights[i] != 0]

    def take_prefills(self) -> list[Prefix | None]:
        """The prefills, for this step's losses alone: later iterations run the prompts again."""
        prefills = self.prefills or [None] * len(self.rollouts)
        self.prefills = [None] * len(self.rollouts)
        return prefills


@dataclass
class GRPOSteps:
    """What GRPO carries from step to step: the reference, the sample log, the pending rollouts."""

    ref: Reference | None
    samples_log: object
    policy: LoadedModel
    plan: ForwardPlan  # the run's forward plan (models/plan.py), chosen once by the loop
    dist: Dist = ONE_PROCESS
    vllm: object = None  # grpo/vllm_backend.VLLMSampler when grpo.generation_backend=vllm
    pending: Pending | None = None
    rollout_seconds: float = 0.0
    pushed_at: int | None = None  # the step whose weights vLLM holds
    reward_funcs: dict | None = None  # the user's reward functions (rewards/user.UserReward by component)

    def step(self, cfg: Config, lm: LoadedModel, batches: Batches, device, step: int) -> dict:
        """Sample new rollouts when the last ones are used up, then backward through them. A step
        that reuses rollouts (grpo.num_iterations > 1) sampled nothing: it logs no rollout_seconds
        and no completion tokens (so no completion_tokens_per_second)."""
        sampled = self.pending is None
        if sampled:
            t0 = time.time()
            if self.vllm is not None and (self.pushed_at is None or step - self.pushed_at >= cfg.grpo.vllm_sync_steps):
                self.vllm.push_weights(self.policy.model)
                self.pushed_at = step
            with autocast(cfg, device), offload(cfg):
                self.pending = make_rollouts(
                    cfg,
                    self.policy,
                    self.ref,
                    batches,
                    device,
                    self.plan,
                    self.vllm,
                    reward_funcs=self.reward_funcs,
                    dist=self.dist,
                    step=step,
                )
            self.rollout_seconds = time.time() - t0
            groups = cfg.train.log_completion_groups
            if (step + 1) % cfg.train.logging_steps == 0 and groups != 0:  # the step its metrics log as
                # every process's groups (a collective: all call it), rank 0's first; rank 0 writes
                records = self.dist.gather_lists(completion_records(step + 1, self.pending.trained(), groups))
                if self.samples_log:
                    for record in records[:groups]:
                        self.samples_log.write(json.dumps(record) + "\n")
                    self.samples_log.flush()
        with autocast(cfg, device), offload(cfg):
            stats = grpo_backward(cfg, lm, self.pending, self.dist)
        if sampled:
            stats["rollout_seconds"] = self.rollout_seconds
            stats.update(self.pending.stats)
        else:
            stats.pop("completion_tokens", None)
        if self.pending.iteration == cfg.grpo.num_iterations:
            self.pending = None
        return stats


def make_rollouts(
    cfg: Config,
    lm: LoadedModel,
    ref: Reference | None,
    batches: Batches,
    device,
    plan: ForwardPlan,
    vllm=None,
    reward_funcs: dict | None = None,
    dist: Dist = ONE_PROCESS,
    step: int = 0,
) -> Pending:
    """One rollout per micro-batch, each with the rollout policy's and the reference's log-probs
    where the objective needs them (grpo/logprobs.py), on the run's ``plan``. With
    grpo.dynamic_sampling the groups without an advantage are dropped and more questions drawn
    (grpo/dynamic.py); ``dist`` lets the processes agree on the extra draws. ``step`` (0-based)
    seeds and schedules grpo.augment's perturbed visuals (grpo/augment.py). The step's sampling
    statistics count every micro-batch drawn (training/tally.py)."""
    accumulation = cfg.train.gradient_accumulation_steps
    template = prompt_template(cfg.data, cfg.reward.reasoning)
    tally = Tally()

    def draw() -> tuple[Rollout, Prefix | None]:
        examples, visuals = batches.next(same_step=tally.rows > 0)  # prioritised: no question twice a step
        ro, prefill = make_rollout_and_prefill(
            lm.model,
            lm.adapter,
            lm.processor,
            examples,
            visuals,
            cfg.grpo,
            cfg.reward,
            device,
            plan,
            vllm_sampler=vllm,
            reward_funcs=reward_funcs,
            template=template,
            augmented=augment_batch(cfg.grpo, cfg.train.seed, step, cfg.train.max_steps, examples, visuals),
            vqa_convention=cfg.eval.vqa_convention or "official",  # the reward follows the metric (None: unresolved)
            benchmark=cfg.data.benchmark,  # lmms-eval's TextVQA, OK-VQA, VizWiz: their own form
        )
        batches.observe([e.id for e in ro.examples], ro.rewards.view(-1, ro.group_size).mean(1).tolist())
        tally.add(ro)
        return ro, prefill

    def finish(ro: Rollout) -> Rollout:
        return add_old_and_reference(ro, lm.model, lm.adapter, ref, cfg.grpo, vllm_sampled=vllm is not None)

    def repack(rollouts: list[Rollout], picks: list[tuple[int, int]]) -> Rollout:
        texts = lambda examples: user_texts(examples, template)  # noqa: E731 (the prompts, encoded again)
        return dynamic.take_groups(rollouts, picks, lm.adapter, lm.processor, texts, cfg.grpo.scale_rewards)

    if cfg.grpo.dynamic_sampling:  # no fused prefill (grpo/plan.py): the loss runs the packed prompts again
        filled = dynamic.fill_step(
            lambda: draw()[0],
            finish,
            repack,
            grpo=cfg.grpo,
            bounds=reward_range(cfg.reward),
            per_micro=cfg.train.per_device_batch_size,
            micro_batches=accumulation,
            dist=dist,
        )
        rollouts, prefills, weights = filled.rollouts, [], filled.weights
        filter_stats = filled.stats(cfg.grpo.num_generations)
    else:
        rollouts, prefills, weights, filter_stats = [], [], None, {}
        for _ in range(accumulation):
            ro, prefill = draw()
            rollouts.append(finish(ro))
            prefills.append(prefill)
    stats = {**tally.stats(accumulation, augment=bool(cfg.grpo.augment)), **filter_stats}
    return Pending(rollouts, prefills, weights=weights, stats=stats)


def grpo_backward(cfg: Config, lm: LoadedModel, pending: Pending, dist: Dist = ONE_PROCESS) -> dict:
    """Backward through every rollout of the step, each loss times its factor (1/len of them, or
    ``pending.weights``); return the mean stats of the rollouts with a non-zero factor."""
    pending.iteration += 1
    rollouts, prefills = pending.rollouts, pending.take_prefills()
    weights = pending.weights or [None] * len(rollouts)
    # A short step's fillers (factor 0, grpo/dynamic.py) train and log nothing, unless this process
    # kept no group: then it logs them, with a loss of 0, so that every process has the same keys.
    logged = [w != 0 for w in weights] if any(w != 0 for w in weights) else [True] * len(rollouts)
    stats: dict = {}
    losses: list[float] = []
    for i, ro in enumerate(rollouts):
        with dist.no_sync(lm.model, sync=i == len(rollouts) - 1):
            if cfg.grpo.loss_type == "seed_report":
                loss, ro_stats = seed_report_objective(lm.model, lm.adapter, lm.processor, ro)
            else:
                loss, ro_stats = grpo_objective(lm.model, lm.adapter, lm.processor, ro, cfg.grpo, prefix=prefills[i])
                prefills[i] = None  # its graph goes with this backward pass
            dist.backward(loss / len(rollouts) if weights[i] is None else loss * weights[i])
        losses.append(float(loss.detach()))
        if logged[i]:
            ro_stats["loss"] = float(loss.detach()) if weights[i] != 0 else 0.0
            stats = accumulate([ro_stats, rollout_stats(ro)], stats)
    out = {k: v if k == "completion_tokens" else v / sum(logged) for k, v in stats.items()}
    if pending.weights is not None:  # a short step: the objective it back-propagates, sum of factor x loss
        out["loss"] = sum(w * x for w, x in zip(pending.weights, losses) if w)
    if "frac_reward_zero_std" in pending.stats:  # every step, those reusing the rollouts too (outcomes.py
        out["frac_reward_zero_std"] = pending.stats["frac_reward_zero_std"]  # reads it); before any filtering
    return out


def rollout_stats(ro) -> dict:
    G = ro.group_size
    r = ro.rewards.view(-1, G)  # rewards are computed on the host
    # One device-to-host copy for the per-row numbers, not one synchronisation per statistic.
    lengths, adv, truncated = torch.stack(
        [ro.completion_mask.sum(1).float(), ro.advantages.float(), ro.truncated.float()]
    ).cpu()  # each [R]
    out = {
        "reward": float(ro.rewards.mean()),
        "reward_std": float(r.std(dim=1).mean()),
        "advantage_abs_mean": float(adv.abs().mean()),
        "advantage_std": float(adv.std()) if adv.numel() > 1 else 0.0,
        "advantage_min": float(adv.min()),
        "advantage_max": float(adv.max()),
        "completion_length": float(lengths.mean()),
        "completion_tokens": float(lengths.sum()),
        "truncated_fraction": float(truncated.mean()),
        "empty_completion_fraction": ro.bad_reward_inputs / max(1, len(ro.answers)),
    }
    if ro.is_weights is not None:  # vLLM sampled: the mean truncated importance weight of its tokens
        m = ro.completion_mask.bool()
        out["is_weight_mean"] = float(ro.is_weights[m].mean()) if m.any() else 1.0
    for name, v in ro.reward_parts.items():  # nan*: a user function's None leaves a completion out
        scored = ~v.isnan()
        out[f"reward/{name}"] = float(v[scored].mean()) if scored.any() else 0.0
        out[f"reward_std/{name}"] = float(torch.nan_to_num(v.view(-1, G).std(dim=1)).mean())
    for name, seconds in ro.reward_seconds.items():
        out[f"reward_seconds/{name}"] = seconds
    return out


def completion_records(step: int, rollouts: list, groups: int | None = None) -> list[dict]:
    """completions.jsonl's records of this process's rollouts, one per question group (the first
    ``groups`` of them; None: all): its question and references, its G completions as the model
    wrote them (``raw``) and as the rewards scored them (``completions``, cleaned), their rewards,
    reward parts and advantages."""
    out: list[dict] = []
    for ro in rollouts:
        G = ro.group_size
        for b, ex in enumerate(ro.examples):
            if groups is not None and len(out) >= groups:
                return out
            rows = slice(b * G, (b + 1) * G)
            out.append(
                {
                    "step": step,
                    "id": ex.id,
                    "question": ex.question,
                    "answers": ex.answers,
                    "raw": ro.completions[rows],
                    "completions": ro.answers[rows],
                    "rewards": [round(float(x), 4) for x in ro.rewards[rows]],
                    "reward_parts": {
                        k: [None if v != v else round(float(v), 4) for v in part[rows].tolist()]
                        for k, part in ro.reward_parts.items()
                        if "/" not in k
                    },
                    "advantages": [round(float(x), 4) for x in ro.advantages[rows]],
                }
            )
            if any(a is not None for a in ro.augmented):  # grpo.augment: each row's perturbation (None: clean)
                out[-1]["augmented"] = ro.augmented[rows]
    return out
