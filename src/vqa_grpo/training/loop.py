"""The loop shared by ``vqa-grpo sft`` and ``vqa-grpo train``.

One optimiser step = ``gradient_accumulation_steps`` micro-batches of ``per_device_batch_size``
questions. SFT minimises the token-mean NLL of the ground-truth answer (the seed's eq. 1),
normalised by the answer tokens of the whole step so that accumulation equals a larger batch.
GRPO samples a rollout per micro-batch and minimises the objective of grpo/objective.py; with
``grpo.num_iterations`` mu > 1 the step's rollouts are reused for mu optimiser steps.
"""

from __future__ import annotations

import json
import math
import random
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from tqdm.auto import tqdm

from vqa_grpo.config import Config, save_config
from vqa_grpo.data.loader import load_vqa
from vqa_grpo.data.types import BadExample, VQAExample
from vqa_grpo.models.generation import predict_answers
from vqa_grpo.models.loading import LoadedModel, load_model, resolve_device
from vqa_grpo.models.scoring import answer_tokens, completion_logprobs
from vqa_grpo.rewards import clean_answer, score_predictions
from vqa_grpo.training.checkpoint import list_checkpoints, load_checkpoint, save_checkpoint, save_model
from vqa_grpo.training.export import merge_adapter, write_model_card
from vqa_grpo.training.faults import OOM_ADVICE, StopSignals, TrainingStopped, free_device_memory, is_oom
from vqa_grpo.training.optim import make_optimizer, make_scheduler
from vqa_grpo.training.reporting import Reporter, truncate_log


def set_threads(n: int) -> None:
    """Small models spend their time in per-op overhead, which extra OpenMP threads multiply."""
    if n > 0:
        torch.set_num_threads(n)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


class Batches:
    """Seeded data order over epochs; skips examples whose image fails to decode, and counts them."""

    def __init__(self, examples: list[VQAExample], batch_size: int, seed: int):
        self.examples, self.batch_size, self.seed = examples, batch_size, seed
        self.epoch, self.pos, self.skipped = 0, 0, 0
        self._order = self._permutation()

    def _permutation(self) -> list[int]:
        g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        return torch.randperm(len(self.examples), generator=g).tolist()

    def next(self) -> tuple[list[VQAExample], list]:
        chunk, images = [], []
        while len(chunk) < self.batch_size:
            if self.pos >= len(self._order):
                self.epoch, self.pos = self.epoch + 1, 0
                self._order = self._permutation()
            ex = self.examples[self._order[self.pos]]
            self.pos += 1
            try:
                images.append(ex.load_image())
            except BadExample:
                self.skipped += 1
                if self.skipped > 10 * len(self.examples):
                    raise RuntimeError("no training image can be decoded") from None
                continue
            chunk.append(ex)
        return chunk, images

    def state(self) -> dict:
        return {"epoch": self.epoch, "pos": self.pos, "skipped": self.skipped}

    def restore(self, state: dict) -> None:
        self.epoch, self.pos, self.skipped = state["epoch"], state["pos"], state["skipped"]
        self._order = self._permutation()


@dataclass
class Pending:
    """The rollouts of one optimiser step, reused for grpo.num_iterations steps."""

    rollouts: list
    iteration: int = 0  # optimiser steps taken on them so far


@dataclass
class RunResult:
    run_dir: Path
    final_dir: Path
    steps: int
    eval_history: list[dict] = field(default_factory=list)
    wall_seconds: float = 0.0


def evaluate_model(lm: LoadedModel, examples: list[VQAExample], cfg: Config, device) -> dict[str, float]:
    """Mean metrics on ``examples`` (greedy unless eval.do_sample): used for periodic evaluation."""
    texts = predict_answers(
        lm.model, lm.adapter, lm.processor, examples,
        batch_size=cfg.eval.batch_size, max_new_tokens=cfg.eval.max_new_tokens, device=device,
        do_sample=cfg.eval.do_sample, temperature=cfg.eval.temperature, top_p=cfg.eval.top_p,
    )
    kept = [(e, t) for e, t in zip(examples, texts) if t is not None]
    preds = [clean_answer(t, reasoning=cfg.reward.reasoning) for _, t in kept]
    scores = score_predictions(preds, [e.answers for e, _ in kept], [e.answer_type for e, _ in kept])
    return {k: float(np.mean(v)) if len(v) else 0.0 for k, v in scores.items()}


def sft_micro_loss(lm: LoadedModel, examples, images, device, total_tokens: int) -> tuple[torch.Tensor, dict]:
    stop = lm.adapter.stop_token_ids(lm.processor, lm.model)[0]
    prompts = lm.adapter.encode_prompts(lm.processor, images, [e.question for e in examples]).to(device)
    ids, mask = answer_tokens(lm.processor.tokenizer, [e.answer for e in examples], stop)
    ids, mask = ids.to(device), mask.to(device)
    logp, _ = completion_logprobs(lm.model, lm.adapter, prompts, ids, mask, with_entropy=False)
    nll_sum = -(logp * mask).sum()
    return nll_sum / total_tokens, {"nll": float(nll_sum.detach()) / max(1, int(mask.sum()))}


def answer_token_count(lm: LoadedModel, examples) -> int:
    tok = lm.processor.tokenizer
    return sum(len(tok(e.answer, add_special_tokens=False)["input_ids"]) + 1 for e in examples)


@dataclass
class Session:
    """What one run carries from step to step, and how it saves itself."""

    cfg: Config
    lm: LoadedModel
    device: torch.device
    run_dir: Path
    optimizer: torch.optim.Optimizer
    scheduler: object
    batches: Batches
    state: dict
    reporter: Reporter
    step: int = 0
    saved_step: int = -1

    def save(self) -> Path:
        self.state["data"] = self.batches.state()
        path = save_checkpoint(self.run_dir, self.step, self.lm.model, self.lm.processor, self.optimizer,
                               self.scheduler, self.state, self.cfg.train.save_total_limit, config=self.cfg)
        self.saved_step = self.step
        return path


def run(cfg: Config, mode: Literal["sft", "grpo"], *, desc: str | None = None) -> RunResult:
    """Train with ``mode`` as configured; write the run directory; return where the model is.

    Raises :class:`TrainingStopped` (after saving a checkpoint) on SIGINT/SIGTERM and after more
    than ``train.max_bad_steps`` non-finite or out-of-memory steps in a row.
    """
    t0 = time.time()
    device = resolve_device(cfg.train.device)
    set_threads(cfg.train.cpu_threads)
    data = load_vqa(cfg.data, seed=cfg.train.seed)  # before the model: bad data fails fast
    seed_everything(cfg.train.seed)
    run_dir = Path(cfg.train.output_dir)
    resume = _resume_path(cfg, run_dir)  # a bad resume path fails before anything is written
    lm = load_model(cfg.model, device)
    run_dir.mkdir(parents=True, exist_ok=True)
    save_config(cfg, run_dir / "config.yaml")
    lm.model.train()
    optimizer = make_optimizer(lm.model.parameters(), cfg.train)
    scheduler = make_scheduler(optimizer, cfg.train)
    batches = Batches(data.train, cfg.train.per_device_batch_size, cfg.train.seed)
    ref = _reference_model(cfg, lm) if mode == "grpo" else None  # the starting policy, before any resume
    state = {"best_metric": None, "bad_steps": 0, "eval_history": []}
    start = 0
    if resume is not None:
        state = load_checkpoint(resume, lm.model, optimizer, scheduler)
        batches.restore(state["data"])
        start = state["step"]
        truncate_log(run_dir / "completions.jsonl", start)
    s = Session(cfg, lm, device, run_dir, optimizer, scheduler, batches, state, Reporter(run_dir, cfg, start), start)
    samples_log = (run_dir / "completions.jsonl").open("a") if mode == "grpo" else None
    grpo = GRPOSteps(ref, samples_log) if mode == "grpo" else None
    bar = tqdm(total=cfg.train.max_steps, initial=start, desc=desc or mode, disable=not cfg.train.progress)
    try:
        with StopSignals() as signals:
            while s.step < cfg.train.max_steps:
                stats = _train_step(s, grpo)
                if stats is not None:
                    bar.update(1)
                    bar.set_postfix({k: round(v, 3) for k, v in stats.items() if k in ("loss", "reward", "nll") and v is not None})
                _after_step(s, stats, data.eval)
                if signals.received:
                    _stop_on_signal(s, signals)
        if data.eval:
            _eval_and_keep_best(s, data.eval)
    finally:
        bar.close()
        s.reporter.close()
        if samples_log:
            samples_log.close()
    final = _write_final(s, mode, data)
    return RunResult(run_dir, final, s.step, state["eval_history"], time.time() - t0)


def _train_step(s: Session, grpo: "GRPOSteps | None") -> dict | None:
    """One optimiser step; None when the device ran out of memory and the batch was skipped."""
    t_step = time.time()
    try:
        stats = _sft_step(s.cfg, s.lm, s.batches, s.device) if grpo is None else grpo.step(s.cfg, s.lm, s.batches, s.device, s.step)
        lr = s.scheduler.get_last_lr()[0]  # the rate this step uses
        grad_norm = _optimizer_step(s.cfg, s.lm.model, s.optimizer, s.state, stats)
    except RuntimeError as e:  # torch.OutOfMemoryError is one
        if not is_oom(e):
            raise
        _skip_oom_batch(s, grpo)
        return None
    s.scheduler.step()
    s.step += 1
    seconds = time.time() - t_step
    stats.update(step=s.step, lr=lr, grad_norm=grad_norm, skipped_images=s.batches.skipped)
    stats["step_seconds"] = seconds
    if "completion_tokens" in stats:
        stats["completion_tokens_per_second"] = stats.pop("completion_tokens") / max(seconds, 1e-9)
    return stats


def _skip_oom_batch(s: Session, grpo: "GRPOSteps | None") -> None:
    """Drop the batch that ran out of memory (and its partial gradients); count it as a bad step."""
    s.optimizer.zero_grad(set_to_none=True)
    if grpo is not None:
        grpo.pending = None
    free_device_memory(s.device)
    s.state["bad_steps"] += 1
    s.state["last_bad"] = "out-of-memory"
    s.reporter.log({"step": s.step, "skipped_oom": 1})
    tqdm.write(f"warning: out of memory at step {s.step + 1}; batch skipped. To avoid it: {OOM_ADVICE}", file=sys.stderr)


def _after_step(s: Session, stats: dict | None, eval_examples: list[VQAExample]) -> None:
    """Log, stop on too many bad steps in a row, evaluate and save, each when it is due."""
    t = s.cfg.train
    too_many_bad = s.state["bad_steps"] > t.max_bad_steps
    if stats is not None and (s.step % t.logging_steps == 0 or s.step == t.max_steps or too_many_bad):
        s.reporter.log(stats)
    if too_many_bad:
        s.save()
        kind = s.state.get("last_bad", "non-finite")
        advice = OOM_ADVICE if kind == "out-of-memory" else "lower train.learning_rate or train.max_grad_norm"
        raise TrainingStopped(
            f"{s.state['bad_steps']} {kind} steps in a row (train.max_bad_steps={t.max_bad_steps}); "
            f"checkpoint-{s.step} saved; {advice}", exit_code=1)
    if stats is None:
        return
    if t.empty_cuda_cache:
        free_device_memory(s.device)
    if t.eval_steps and s.step % t.eval_steps == 0 and s.step < t.max_steps:
        _eval_and_keep_best(s, eval_examples)
    if t.save_steps and s.step % t.save_steps == 0:
        s.save()


def _stop_on_signal(s: Session, signals: StopSignals) -> None:
    if s.saved_step != s.step:
        s.save()
    raise TrainingStopped(
        f"stopped by {signals.name} after step {s.step}; checkpoint-{s.step} saved in {s.run_dir}; "
        "continue with train.resume=auto", exit_code=128 + signals.received)


def _write_final(s: Session, mode: str, data) -> Path:
    """``final/`` (model or adapter, processor, model card) and, if asked, ``merged/``."""
    final = s.run_dir / "final"
    save_model(s.lm.model, s.lm.processor, final)
    last = s.state["eval_history"][-1] if s.state["eval_history"] else None
    metrics = {k.removeprefix("eval/"): v for k, v in last.items() if k != "step"} if last else None
    write_model_card(final, s.cfg, mode, steps=s.step, n_train=len(data.train), n_eval=len(data.eval), metrics=metrics)
    if s.cfg.train.merge_lora:
        merge_adapter(final, s.run_dir / "merged")
    return final


def _sft_step(cfg: Config, lm: LoadedModel, batches: Batches, device) -> dict:
    """Backward through the step's micro-batches, the NLL normalised by all their answer tokens."""
    micro = [batches.next() for _ in range(cfg.train.gradient_accumulation_steps)]
    total = sum(answer_token_count(lm, ex) for ex, _ in micro)
    stats: dict = {}
    for ex, im in micro:
        with _autocast(cfg, device):
            loss, s = sft_micro_loss(lm, ex, im, device, total)
        loss.backward()
        stats = _accumulate([s, {"loss": float(loss.detach())}], stats)
    stats["nll"] = stats["loss"]  # the step's token-mean NLL, whatever the micro-batch layout
    return stats


@dataclass
class GRPOSteps:
    """What GRPO carries from step to step: the reference, the sample log, the pending rollouts."""

    ref: object
    samples_log: object
    pending: Pending | None = None
    rollout_seconds: float = 0.0

    def step(self, cfg: Config, lm: LoadedModel, batches: Batches, device, step: int) -> dict:
        """Sample new rollouts when the last ones are used up, then backward through them."""
        if self.pending is None:
            t0 = time.time()
            with _autocast(cfg, device):
                self.pending = _make_rollouts(cfg, lm, self.ref, batches, device)
            self.rollout_seconds = time.time() - t0
            if (step + 1) % cfg.train.logging_steps == 0:  # the step this rollout's metrics log as
                _log_completions(self.samples_log, step + 1, self.pending.rollouts[0])
        with _autocast(cfg, device):
            stats = _grpo_backward(cfg, lm, self.pending)
        stats["rollout_seconds"] = self.rollout_seconds
        if self.pending.iteration == cfg.grpo.num_iterations:
            self.pending = None
        return stats


def _optimizer_step(cfg: Config, model, optimizer, state: dict, stats: dict) -> float | None:
    """Clip and step; a non-finite gradient skips the step (and is counted). Returns the norm."""
    grad_norm = _clip(model, cfg.train.max_grad_norm)
    finite = math.isfinite(grad_norm)
    if finite:
        state["bad_steps"] = 0
        optimizer.step()
    else:
        state["bad_steps"] += 1
        stats["skipped_nonfinite"] = 1
    optimizer.zero_grad(set_to_none=True)
    return grad_norm if finite else None


def _resume_path(cfg: Config, run_dir: Path) -> Path | None:
    from vqa_grpo.errors import UserError

    if cfg.train.resume is None:
        return None
    if cfg.train.resume == "auto":
        found = list_checkpoints(run_dir)
        return found[-1] if found else None
    p = Path(cfg.train.resume)
    if not (p / "trainer_state.json").is_file():
        raise UserError(f"train.resume={p} is not a checkpoint directory (it has no trainer_state.json)")
    return p


def _reference_model(cfg: Config, lm: LoadedModel):
    """The frozen reference for the KL term; None when beta = 0 (no reference pass at all)."""
    if cfg.grpo.beta == 0 or cfg.grpo.loss_type == "seed":
        return None
    if cfg.model.lora:
        return "disable_adapter"  # the base model: LoRA adapters switched off, no second copy
    import copy

    ref = copy.deepcopy(lm.model).eval()
    for p in ref.parameters():
        p.requires_grad_(False)
    return ref


def _make_rollouts(cfg: Config, lm: LoadedModel, ref, batches: Batches, device) -> Pending:
    from vqa_grpo.grpo.objective import rollout_logprobs
    from vqa_grpo.grpo.rollout import make_rollout

    rollouts = []
    for _ in range(cfg.train.gradient_accumulation_steps):
        examples, images = batches.next()
        ro = make_rollout(lm.model, lm.adapter, lm.processor, examples, images, cfg.grpo, cfg.reward, device)
        with torch.no_grad():
            if cfg.grpo.num_iterations > 1:
                ro.old_logprobs = rollout_logprobs(lm.model, lm.adapter, ro, with_entropy=False)[0]
            if ref == "disable_adapter":
                with lm.model.disable_adapter():
                    ro.ref_logprobs = rollout_logprobs(lm.model, lm.adapter, ro, with_entropy=False)[0]
            elif ref is not None:
                ro.ref_logprobs = rollout_logprobs(ref, lm.adapter, ro, with_entropy=False)[0]
        rollouts.append(ro)
    return Pending(rollouts)


def _grpo_backward(cfg: Config, lm: LoadedModel, pending: Pending) -> dict:
    """Backward through every rollout of the step (each 1/len of the loss); return the mean stats."""
    from vqa_grpo.grpo.objective import grpo_objective, seed_objective

    pending.iteration += 1
    rollouts = pending.rollouts
    stats: dict = {}
    for ro in rollouts:
        if cfg.grpo.loss_type == "seed":
            loss, s = seed_objective(lm.model, lm.adapter, lm.processor, ro)
        else:
            loss, s = grpo_objective(lm.model, lm.adapter, lm.processor, ro, cfg.grpo)
        (loss / len(rollouts)).backward()
        s["loss"] = float(loss.detach())
        stats = _accumulate([s, _rollout_stats(ro)], stats)
    return {k: v if k == "completion_tokens" else v / len(rollouts) for k, v in stats.items()}


def _rollout_stats(ro) -> dict:
    G = ro.group_size
    r = ro.rewards.view(-1, G)
    adv = ro.advantages.float()
    out = {
        "reward": float(ro.rewards.mean()),
        "reward_std": float(r.std(dim=1).mean()),
        "frac_zero_std_groups": float((r.std(dim=1) == 0).float().mean()),
        "advantage_abs_mean": float(adv.abs().mean()),
        "advantage_std": float(adv.std()) if adv.numel() > 1 else 0.0,
        "advantage_min": float(adv.min()),
        "advantage_max": float(adv.max()),
        "completion_length": float(ro.completion_mask.sum(1).float().mean()),
        "completion_tokens": float(ro.completion_mask.sum()),
        "truncated_fraction": float(ro.truncated.float().mean()),
        "empty_completion_fraction": ro.bad_reward_inputs / max(1, len(ro.answers)),
    }
    for name, v in ro.reward_parts.items():
        out[f"reward/{name}"] = float(v.mean())
        out[f"reward_std/{name}"] = float(v.view(-1, G).std(dim=1).mean())
    return out


def _autocast(cfg: Config, device: torch.device):
    """bf16 autocast when train.mixed_precision asks for it (a no-op context otherwise)."""
    import contextlib

    if cfg.train.mixed_precision == "no":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


def _log_completions(f, step: int, ro) -> None:
    """The first question of a rollout with its G answers and rewards, one JSON line."""
    ex, G = ro.examples[0], ro.group_size
    f.write(json.dumps({
        "step": step,
        "id": ex.id,
        "question": ex.question,
        "answers": ex.answers,
        "completions": ro.answers[:G],
        "rewards": [round(float(x), 4) for x in ro.rewards[:G]],
        "advantages": [round(float(x), 4) for x in ro.advantages[:G]],
    }) + "\n")
    f.flush()


def _accumulate(parts: list[dict], into: dict) -> dict:
    for s in parts:
        for k, v in s.items():
            into[k] = into.get(k, 0.0) + float(v)
    return into


def _clip(model, max_norm: float) -> float:
    params = [p for p in model.parameters() if p.grad is not None]
    if not params:
        return 0.0
    norm = torch.nn.utils.clip_grad_norm_(params, max_norm if max_norm > 0 else float("inf"))
    return float(norm)


def _eval_and_keep_best(s: Session, examples: list[VQAExample]) -> None:
    """Evaluate, log the means as ``eval/<metric>``, and save ``best/`` when train.eval_metric improved."""
    metrics = evaluate_model(s.lm, examples, s.cfg, s.device)
    record = {"step": s.step, **{f"eval/{k}": v for k, v in metrics.items()}}
    s.state["eval_history"].append(record)
    s.reporter.log(record)
    value = metrics.get(s.cfg.train.eval_metric)
    if value is not None and (s.state["best_metric"] is None or value > s.state["best_metric"]):
        s.state["best_metric"] = value
        save_model(s.lm.model, s.lm.processor, s.run_dir / "best")
