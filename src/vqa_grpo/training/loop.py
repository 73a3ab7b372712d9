"""The loop shared by ``vqa-grpo sft`` and ``vqa-grpo train``.

One optimiser step = ``gradient_accumulation_steps`` micro-batches of ``per_device_batch_size``
questions on each process. SFT minimises the token-mean NLL of the ground-truth answer (the
seed's eq. 1), normalised by the answer tokens of the whole step so that accumulation and extra
processes equal a larger batch. GRPO samples a rollout per micro-batch and minimises the objective
of grpo/rollout.py; with ``grpo.num_iterations`` mu > 1 the step's rollouts are reused for mu
optimiser steps. The step code is in training/steps.py and what a run carries (optimizer, data
order, sinks, saves) in training/session.py; this file runs the steps, logs, evaluates,
saves, and handles stops and faults. GRPO's forward plan (models/plan.py) is chosen here, once
per run (``_load_policy``), and handed whole to sampling and to the loss.

One GRPO step, from here to ``policy_loss``, in six files, one line per hop:

    training/loop.py      _train_step               the optimiser step around GRPOSteps.step
    training/steps.py     GRPOSteps.step            make_rollouts (sample), then grpo_backward (loss)
    grpo/rollout.py       make_rollout_and_prefill  sample_groups, rewards, group advantages
    models/generation.py  sample_groups, generate   one batched decode on the plan's sampling path
    grpo/rollout.py       grpo_objective            completion_logprobs, then policy_loss
    models/scoring.py     completion_logprobs       the forward pass on the plan's log-prob path,
                                                    the LM head a chunk of positions at a time
    grpo/math.py          policy_loss               the objective on tensors

On the shared prefix both passes run a models/prefix.py ``Prefix``; pi_old and the reference's
log-probs (grpo/logprobs.py) run only with ``grpo.num_iterations`` > 1, vLLM sampling or a
reference (``grpo.beta`` > 0).
"""

from __future__ import annotations

import math
import random
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Literal

import numpy as np
import torch
from tqdm.auto import tqdm

from vqa_grpo.config import Config, save_config
from vqa_grpo.config_keys import given_keys
from vqa_grpo.data.benchmarks import resolve as resolve_benchmark
from vqa_grpo.data.loader import LoadReport, cap_eval, load_vqa
from vqa_grpo.data.table import answer_lists
from vqa_grpo.data.types import VQAExample
from vqa_grpo.distributed import Dist, make_dist
from vqa_grpo.errors import TrainingStopped, UserError
from vqa_grpo.evaluation.answering import answer_and_score
from vqa_grpo.grpo.logprobs import Reference
from vqa_grpo.grpo.plan import choose_plan
from vqa_grpo.grpo.vllm_backend import check_run
from vqa_grpo.models.fit import check_run_fit
from vqa_grpo.models.loading import LoadedModel, check_visuals, family_adapter, load_model, resolve_device
from vqa_grpo.paths import absolute_inputs, check_folder
from vqa_grpo.rewards.benchmark import check_metrics_fit
from vqa_grpo.rewards.user import resolve as resolve_rewards
from vqa_grpo.training.checkpoint import no_space
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
from vqa_grpo.training.outcomes import EvalMetrics, watch_equal_rewards
from vqa_grpo.training.resume import check_fresh, start_point
from vqa_grpo.training.session import Session, start_session
from vqa_grpo.training.skips import SkipReport
from vqa_grpo.training.steps import GRPOSteps, check_sft_targets, sft_step


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
    def metrics(self) -> EvalMetrics:
        """The last evaluation's means, named as ``evaluate()`` names them, and its ``step`` (empty
        without an evaluation split)."""
        last = self.eval_history[-1] if self.eval_history else {}
        return EvalMetrics({k.removeprefix("eval/"): v for k, v in last.items()})


def run(
    cfg: Config,
    mode: Literal["sft", "grpo"],
    *,
    desc: str | None = None,
    data: Any = None,
    reward_funcs: dict | None = None,
    given: Iterable[str] | None = None,
) -> RunResult:
    """Train with ``mode`` as configured; write the run directory; return where the model is.

    ``data``: training rows in memory (a DataFrame, a datasets.Dataset or a list of dicts) in
    place of ``data.path``, mapped, checked and split as a file's rows are. ``reward_funcs``: the
    user's reward functions named in ``reward.components`` (name -> callable); import paths there
    are imported here, before anything is written. ``given``: the keys the user set (default:
    config_keys.given_keys); a resume takes the others from its checkpoint (training/resume_settings.py).

    Raises :class:`TrainingStopped` (after saving a checkpoint) on SIGINT/SIGTERM and after more
    than ``train.max_bad_steps`` non-finite or out-of-memory steps in a row.
    """
    t0 = time.time()
    given = given_keys(cfg) if given is None else given  # before the benchmark fills in the keys left unset
    cfg = resolve_benchmark(cfg)  # the settings left to data.benchmark (reward, best/'s metric, prompt, length)
    dist = make_dist(cfg.train.device, cfg.train.collective_timeout)
    cfg = absolute_inputs(cfg)  # config.yaml names the same files wherever a resume is launched
    cfg, resume, changed = start_point(cfg, mode, dist, given, reward_funcs)  # the checkpoint's settings
    check_sft_targets(cfg, mode)
    device = dist.device(resolve_device(cfg.train.device))
    set_threads(cfg.train.cpu_threads)
    _check_device(cfg, device)  # before the data: loading it writes its index beside it
    data = load_vqa(cfg.data, seed=cfg.train.seed, frame=data)  # before the model: bad data fails fast
    data, note = cap_eval(data, cfg.eval.max_examples, cfg.data, cfg.train.seed)  # eval.max_examples, said once
    if note and dist.is_main:
        tqdm.write(note, file=sys.stderr)
    fitted = answer_lists(data.train, data.eval)  # a multiple-choice metric on data without choices
    check_metrics_fit([*cfg.reward.components, cfg.train.eval_metric], fitted, f"data {cfg.data.path}")
    user_rewards = resolve_rewards(cfg.reward.components, reward_funcs) if mode == "grpo" else {}
    seed_everything(cfg.train.seed + dist.rank)  # each process samples its own completions
    _check_before_writing(cfg, mode, dist, device, data.report)
    lm, plan = _load_policy(cfg, mode, dist, device, data)
    ref = Reference.for_run(cfg, lm.model) if mode == "grpo" else None  # the starting policy, before any resume
    _shard(dist, lm, ref)
    session, vllm = start_session(cfg, mode, lm, dist, device, data.train, resume, changed, data.report)
    samples_log = (session.run_dir / "completions.jsonl").open("a") if mode == "grpo" and dist.is_main else None
    grpo = GRPOSteps(ref, samples_log, lm, plan, dist, vllm, reward_funcs=user_rewards) if mode == "grpo" else None
    skips = SkipReport(data.report, session.batches, session.run_dir, desc or mode, write=dist.is_main)
    skips.start()
    try:
        _train(session, grpo, data.eval, desc or mode, skips)
    finally:
        if samples_log:
            samples_log.close()
    skips.finish()
    final = _write_final(session, mode, data)
    return RunResult(session.run_dir, final, session.step, session.state["eval_history"], time.time() - t0)


def _check_before_writing(cfg: Config, mode: str, dist: Dist, device: torch.device, report: LoadReport) -> None:
    """What can be refused before anything is written (after the checkpoint to resume from, chosen
    first: start_point): a run directory that holds another run, vLLM, the settings the launch cannot
    take, data with more images per question (or a video) than the model's family takes."""
    run_dir = Path(cfg.train.output_dir)
    check_folder(run_dir, "train.output_dir")
    check_fresh(cfg, run_dir)
    if mode == "grpo" and cfg.grpo.generation_backend == "vllm":
        check_run(cfg, device, report.videos)
    dist.check_config(cfg)
    check_visuals(family_adapter(cfg.model), report.max_images, report.videos, f"data {cfg.data.path or '(in memory)'}")


def _check_device(cfg: Config, device: torch.device) -> None:
    """The settings the device cannot take, refused before the data's index is written beside it."""
    if cfg.train.offload_activations and device.type != "cuda":
        raise UserError(
            f"train.offload_activations=true moves activations from a GPU to host memory, and this run is on "
            f"{device.type}; set train.offload_activations=false (or run on a CUDA device)"
        )


def _load_policy(cfg: Config, mode: str, dist: Dist, device: torch.device, data):
    """The model to train, in training mode, and GRPO's forward plan (None for SFT); once the data's prompts
    are found to fit its context (models/fit.py), the run directory and its config.yaml."""
    lm, plan = load_model(cfg.model, device), None
    check_run_fit(lm, cfg, mode, data)  # a question with its visuals and completion past the context
    if mode == "grpo":  # grpo.shared_prefix=on or static_decode=on where they cannot run: one line, before writing
        accumulation = cfg.train.gradient_accumulation_steps
        plan = choose_plan(
            lm.model,
            lm.adapter,
            cfg.grpo,
            processes=dist.world,
            accumulation=accumulation,
            any_rank=dist.synced_decoding(),
        )
    if dist.is_main:
        Path(cfg.train.output_dir).mkdir(parents=True, exist_ok=True)
        save_config(cfg, Path(cfg.train.output_dir) / "config.yaml")
    lm.model.train()
    return lm, plan


def _train(
    session: Session, grpo: GRPOSteps | None, eval_examples: list[VQAExample], desc: str, skips: SkipReport
) -> None:
    """The steps up to train.max_steps, then the last evaluation; stops (a signal, a full disk, a
    failed collective) as one-line TrainingStopped errors. Skipped rows are counted on each step's line."""
    t, dist = session.cfg.train, session.dist
    mode = "sft" if grpo is None else "grpo"
    # GRPO steps whose every group had equal rewards: in the checkpoints, so that a resume logs as the run would
    equal = session.state.setdefault("equal_rewards", {"in_a_row": 0, "steps": 0})
    bar = tqdm(total=t.max_steps, initial=session.step, desc=desc, disable=not (t.progress and dist.is_main))
    try:
        with StopSignals(repeat_stops=dist.world == 1) as signals:
            while session.step < t.max_steps:
                stats = _train_step(session, grpo)
                if stats is not None and grpo is not None:
                    watch_equal_rewards(stats, equal, dist.is_main)
                if stats is not None:
                    stats["skipped_rows"] = skips.total
                    skips.update()
                    bar.update(1)
                    bar.set_postfix(
                        {k: round(v, 3) for k, v in stats.items() if k in ("loss", "reward", "nll") and v is not None}
                    )
                _after_step(session, stats, eval_examples, mode)
                # A stop waits for the end of a reuse of rollouts (grpo.num_iterations): a checkpoint
                # inside one could not resume exactly.
                if (grpo is None or grpo.pending is None) and dist.any(signals.received is not None):
                    _stop_on_signal(session, signals)
        if eval_examples:
            _eval_and_keep_best(session, eval_examples, mode)
    except RuntimeError as e:  # torch's; the package's own errors are not RuntimeErrors (errors.py)
        if dist.world > 1 and is_collective_failure(e):
            raise peer_lost(e, dist.rank, dist.world, session.run_dir) from e
        raise
    except OSError as e:  # a log line (metrics.jsonl, completions.jsonl) on a full disk
        if not is_no_space(e):
            raise
        raise no_space(Path(e.filename).name if e.filename else "the logs", session.run_dir) from e
    finally:
        bar.close()
        session.reporter.close()


def _shard(dist: Dist, lm: LoadedModel, ref: Reference | None) -> None:
    """Under FSDP, shard the policy and the KL reference's copy (when it has one) in place; under
    ZeRO-3 the reference copy is partitioned now, the policy by DeepSpeed.prepare."""
    dist.shard(lm.model)
    if ref is not None and ref.copy is not None:  # forward only: its root unit is freed after each pass too
        dist.shard(ref.copy, reshard_root=True, frozen=True)


def _train_step(session: Session, grpo: GRPOSteps | None) -> dict | None:
    """One optimiser step; None when the device ran out of memory and the batch was skipped."""
    t_step = time.time()
    try:
        if grpo is None:
            stats = sft_step(session.cfg, session.train_lm, session.batches, session.device, session.dist)
        else:
            # FSDP: the ranks sample in step, each decode step being a collective
            with session.dist.decoding(session.lm.model):
                stats = grpo.step(session.cfg, session.train_lm, session.batches, session.device, session.step)
    except RuntimeError as e:  # torch.OutOfMemoryError is one (and no error of the package's: errors.py)
        if not is_oom(e) or session.dist.world > 1:  # other processes would wait for this one's gradients
            raise
        _skip_oom_batch(session, grpo)
        return None
    lr = session.scheduler.get_last_lr()[0]  # the rate this step uses
    grad_norm = _optimizer_step(session, stats)  # an OOM here is not skipped: some weights may have moved
    session.scheduler.step()
    session.step += 1
    seconds = time.time() - t_step
    stats = session.dist.mean_stats(stats)
    stats.update(
        step=session.step,
        lr=lr,
        grad_norm=grad_norm,
        skipped_images=session.batches.skipped,
        **memory_stats(session.device),
    )
    stats.update(session.batches.priority_stats())  # grpo.prioritized_sampling: the same on every process
    stats["step_seconds"] = seconds
    if "completion_tokens" in stats:  # over all processes
        stats["completion_tokens_per_second"] = stats.pop("completion_tokens") * session.dist.world / max(seconds, 1e-9)
    return stats


def _optimizer_step(session: Session, stats: dict) -> float | None:
    """Clip and step (DeepSpeed: its engine does); a non-finite gradient skips the step (and is
    counted). Returns the norm."""
    grad_norm = session.dist.step(session.train_lm.model, session.optimizer, session.cfg.train.max_grad_norm)
    finite = math.isfinite(grad_norm)
    if finite:
        session.state["bad_steps"] = 0
    else:
        session.state["bad_steps"] += 1
        session.state["last_bad"] = "non-finite"
        stats["skipped_nonfinite"] = 1
    return grad_norm if finite else None


def _skip_oom_batch(session: Session, grpo: GRPOSteps | None) -> None:
    """Drop the batch that ran out of memory (and its partial gradients); count it as a bad step."""
    session.optimizer.zero_grad(set_to_none=True)
    if grpo is not None:
        grpo.pending = None
    free_device_memory(session.device)
    session.state["bad_steps"] += 1
    session.state["last_bad"] = "out-of-memory"
    session.reporter.log({"step": session.step + 1, "skipped_oom": 1})  # the step it was attempted as
    tqdm.write(
        f"warning: out of memory at step {session.step + 1}; batch skipped. To avoid it: {OOM_ADVICE}", file=sys.stderr
    )


def _after_step(session: Session, stats: dict | None, eval_examples: list[VQAExample], mode: str = "grpo") -> None:
    """Log, stop on too many bad steps in a row, evaluate and save, each when it is due."""
    t = session.cfg.train
    too_many_bad = session.state["bad_steps"] > t.max_bad_steps
    if stats is not None and (session.step % t.logging_steps == 0 or session.step == t.max_steps or too_many_bad):
        session.reporter.log(stats)
    if too_many_bad:
        session.save()
        kind = session.state.get("last_bad", "non-finite")
        advice = OOM_ADVICE if kind == "out-of-memory" else "lower train.learning_rate or train.max_grad_norm"
        raise TrainingStopped(
            f"{session.state['bad_steps']} {kind} steps in a row (train.max_bad_steps={t.max_bad_steps}); "
            f"checkpoint-{session.step} saved; {advice}",
            exit_code=1,
        )
    if stats is None:
        return
    if t.empty_cuda_cache:
        free_device_memory(session.device)
    if t.eval_steps and eval_examples and session.step % t.eval_steps == 0 and session.step < t.max_steps:
        _eval_and_keep_best(session, eval_examples, mode)
    if t.save_steps and session.step % t.save_steps == 0:
        session.save()


def _stop_on_signal(session: Session, signals: StopSignals) -> None:
    if session.saved_step != session.step:
        session.save()
    signum = signals.received or 15  # another process got it: stop as for SIGTERM
    name = signals.name or "SIGTERM"
    raise TrainingStopped(
        f"stopped by {name} after step {session.step}; checkpoint-{session.step} saved in {session.run_dir}; "
        "continue with train.resume=auto",
        exit_code=128 + signum,
    )


def _write_final(session: Session, mode: str, data) -> Path:
    """``final/`` (model or adapter, processor, model card) and, if asked, ``merged/``."""
    final = session.run_dir / "final"
    session.save_model(final)
    if session.dist.is_main:
        last = session.state["eval_history"][-1] if session.state["eval_history"] else None
        metrics = {k.removeprefix("eval/"): v for k, v in last.items() if k != "step"} if last else None
        write_model_card(
            final,
            session.cfg,
            mode,
            steps=session.step,
            n_train=len(data.train),
            n_eval=len(data.eval),
            metrics=metrics,
            auto_model=session.lm.adapter.auto_model,
            changes=session.state.get("settings_changed"),
        )
        if session.cfg.train.merge_lora:
            # a resumed end merges again
            merge_adapter(final, session.run_dir / "merged", session.cfg.model, overwrite=True)
    session.dist.barrier()
    return final


def _eval_and_keep_best(session: Session, examples: list[VQAExample], mode: str) -> None:
    """Evaluate, log the means as ``eval/<metric>``, and save ``best/`` (with its model card) when
    train.eval_metric improved."""
    metrics = answer_and_score(session.lm, examples, session.cfg, session.device, session.dist).means()
    record = {"step": session.step, **{f"eval/{k}": v for k, v in metrics.items()}}
    session.state["eval_history"].append(record)
    session.reporter.log(record)
    value = metrics.get(session.cfg.train.eval_metric)
    if value is not None and (session.state["best_metric"] is None or value > session.state["best_metric"]):
        session.state["best_metric"] = value
        session.save_model(session.run_dir / "best")
        if session.dist.is_main:
            n_train, auto_model = len(session.batches.examples), session.lm.adapter.auto_model
            write_model_card(
                session.run_dir / "best", session.cfg, mode, steps=session.step, n_train=n_train, n_eval=len(examples),
                metrics=metrics, auto_model=auto_model, best=True, changes=session.state.get("settings_changed"),
            )  # fmt: skip
