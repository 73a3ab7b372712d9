"""What one run carries from step to step (:class:`Session`): the model, optimizer, schedule, data
order and sinks, restored from a checkpoint when the run resumes; and how it saves itself."""

from __future__ import annotations

import dataclasses
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from vqa_grpo.config import Config
from vqa_grpo.data.report import LoadReport
from vqa_grpo.data.types import VQAExample
from vqa_grpo.distributed import Dist
from vqa_grpo.errors import TrainingStopped
from vqa_grpo.grpo.vllm_backend import VLLMSampler, mm_limits
from vqa_grpo.models.fit import prompt_guard
from vqa_grpo.models.loading import LoadedModel, check_images
from vqa_grpo.training.batches import Batches
from vqa_grpo.training.checkpoint import load_checkpoint, no_space, save_checkpoint, save_model
from vqa_grpo.training.optim import make_optimizer, make_scheduler
from vqa_grpo.training.priority import Priorities
from vqa_grpo.training.reporting import NullReporter, Reporter, truncate_log
from vqa_grpo.training.resume_settings import apply_to_optimizer


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


def start_session(
    cfg: Config,
    mode: str,
    lm: LoadedModel,
    dist: Dist,
    device,
    train: list[VQAExample],
    resume: Path | None,
    changed: dict[str, list] | None = None,
    report: LoadReport | None = None,
) -> tuple[Session, Any]:
    """The optimizer, schedule, data order and sinks of the run, restored from ``resume``; and the
    vLLM sampler (grpo.generation_backend=vllm), made before the RNG states are restored (it reseeds them).
    ``changed``: the settings this resume changes (training/resume_settings.py), in force from now on
    and kept, with the step, in the trainer state's ``settings_changed``. ``report``: the data's
    load, whose most images per question vLLM reserves room for."""
    run_dir = Path(cfg.train.output_dir)
    optimizer = make_optimizer(lm.model.parameters(), cfg.train)  # over the shards under FSDP
    scheduler = make_scheduler(optimizer, cfg.train)
    train = check_images(train, lm)
    priorities = None
    if mode == "grpo" and cfg.grpo.prioritized_sampling:  # (SFT has no rewards to prioritise by)
        ids = train.column("id") if hasattr(train, "column") else [e.id for e in train]  # a table: no examples made
        priorities = Priorities.for_run(cfg, ids, dist.gather_lists)
    guard = prompt_guard(lm, cfg, mode, report)  # a question past the context is skipped (models/fit.py)
    batches = Batches(train, cfg.train.per_device_batch_size, cfg.train.seed, dist.rank, dist.world, priorities, guard)
    vllm = None
    if mode == "grpo" and cfg.grpo.generation_backend == "vllm":
        kwargs = lm.adapter.vllm_processor_kwargs(lm.processor, cfg.model)  # vLLM shows images as the trainer does
        vllm = VLLMSampler(cfg, dist.rank, dist.world, mm_limits(report.max_images if report else 1), kwargs)
    state = {"best_metric": None, "bad_steps": 0, "eval_history": [], "mode": mode}
    start = 0
    if resume is not None:
        state = load_checkpoint(resume, lm.model, optimizer, scheduler, dist.rank, dist=dist)
        apply_to_optimizer(optimizer, scheduler, cfg)  # the checkpoint's rate, decay and betas unless changed
        batches.restore(state["data"])
        start = state["step"]
        state["mode"] = mode
        if changed:
            state["settings_changed"] = [*state.get("settings_changed", []), {"step": start, "changed": changed}]
    if cfg.train.resume is not None and dist.is_main:  # (no checkpoint yet: start over from step 0)
        truncate_log(run_dir / "completions.jsonl", start)
    wrapped, optimizer = dist.prepare(lm.model, optimizer, cfg.train)  # DeepSpeed: its engine and ZeRO optimizer
    if dist.world > 1 and dist.is_main:
        tqdm.write(f"{mode}: {dist.describe(lm.model)}", file=sys.stderr)
    train_lm = dataclasses.replace(lm, model=wrapped)
    reporter = Reporter(run_dir, cfg, start, resumed=cfg.train.resume is not None) if dist.is_main else NullReporter()
    session = Session(cfg, lm, train_lm, dist, device, run_dir, optimizer, scheduler, batches, state, reporter, start)
    return session, vllm
