"""The processes of a run, through accelerate, and FSDP2 sharding of the model.

launch.py reads the launch environment, sharding.py holds the back-ends' helpers, and
evaluation/sharded.py the evaluation that each process runs on its share.

One process (plain ``vqa-grpo train``): :class:`Dist` is a no-op with rank 0 of 1. Several
(``accelerate launch -m vqa_grpo.cli train ...``): accelerate sets up the process group (NCCL on
GPUs, gloo on the CPU); this class asks it for rank, world size, reductions and gathers.

Two ways to hold the model. DDP (configs/accelerate/ddp.yaml): every rank holds all of it and
accelerate wraps it for DDP. FSDP (configs/accelerate/fsdp.yaml): :meth:`Dist.shard` applies
PyTorch's FSDP2 (``torch.distributed.fsdp.fully_shard``) itself, one unit per decoder/vision layer
and one for the rest, so each rank keeps 1/world of every weight, gradient and AdamW moment; the
settings are read from the ``FSDP_*`` variables accelerate's launcher exports, and accelerate is
told not to wrap (its own FSDP is not used: on a CPU it never turns on, and this way the CPU test
runs the GPU code path). Under FSDP every forward pass is a collective, so sampling and
evaluation decode in step on every rank (:meth:`Dist.decoding`, :meth:`Dist.map_sharded`), and
checkpoints gather full state dicts (:meth:`Dist.model_state`). DeepSpeed (configs/accelerate/
deepspeed_zero2.yaml, deepspeed_zero3.yaml): the same way, :meth:`Dist.prepare` calls
``deepspeed.initialize`` itself with the run's torch AdamW and a config built from the run's train.*
settings and the launch's ``ACCELERATE_DEEPSPEED_*`` variables (accelerate never turns DeepSpeed on
for a CPU); its engine runs backward, marks the accumulation boundary, clips and steps; ZeRO-3
partitions every weight, so it samples and evaluates in step as FSDP does, and checkpoints gather the
weights and AdamW's moments into the files of a 1-process run.

How a step is split: the global batch is ``per_device_batch_size x world_size`` questions in one
seeded order; rank r takes its slice, and samples the G completions of each of its questions
itself, so a group never spans processes and advantages are computed within groups as with one
process. Gradients are averaged over ranks (DDP's all-reduce, FSDP's reduce-scatter), so every
loss that is a mean over equal per-rank parts is the global mean; SFT's token-mean NLL is divided
by the answer tokens of all ranks (times the world size) so that 2 processes x batch 1 equals 1
process x batch 2. Only rank 0 writes the run directory.
"""

from __future__ import annotations

import contextlib
import math
import os
from typing import Callable, TypeVar

import torch

from vqa_grpo.errors import UserError
from vqa_grpo.training.launch import (  # noqa: F401  DeepSpeedSettings, FSDPSettings: imported from here too
    DeepSpeedSettings,
    FSDPSettings,
    launch_deepspeed,
    launch_fsdp,
    launched_world_size,
)
from vqa_grpo.training.sharding import (  # noqa: F401  wrap_targets: imported from here too
    _broadcast_from_rank0,
    _check_deepspeed,
    _gathered_state,
    _gradient_sync_off,
    _require_deepspeed,
    _synced_and_gathered,
    describe,
    gathered_moments,
    is_peft,
    load_moments,
    optimizer_names,
    parameter_counts,
    sharding_root,
    wrap_targets,
)

T = TypeVar("T")


class Dist:
    """Rank, world size and collectives of this run (accelerate's when launched on several processes)."""

    def __init__(self, acc=None, fsdp: FSDPSettings | None = None, ds: DeepSpeedSettings | None = None):
        self.acc = acc  # None: one process
        self.fsdp = fsdp  # not None: Dist.shard applies FSDP2
        self.ds = ds  # not None: Dist.prepare (and Dist.shard for a forward-only model) start DeepSpeed
        self.engine = None  # the trained model's DeepSpeed engine, once prepared
        self._params: list = []  # its parameters in the optimizer's order before DeepSpeed took it
        self._groups: list[dict] = []  # the optimizer's param_groups (1-process layout) at that point
        self._frozen: list = []  # engines of forward-only models (kept alive with their hooks)

    @classmethod
    def from_env(cls, device: str = "auto", timeout_s: float = 600) -> "Dist":
        """accelerate's processes when a launcher started several (gloo on the CPU), else one process.
        ``timeout_s``: how long a collective waits for a rank that hangs (train.collective_timeout).

        An FSDP launch is read here and accelerate is then started as a plain multi-process run
        (ACCELERATE_USE_FSDP=false for this process): the model is sharded by :meth:`shard`.
        """
        if launched_world_size() <= 1:
            return cls()
        ds = launch_deepspeed()
        if ds is not None:
            _require_deepspeed()
            os.environ["ACCELERATE_USE_DEEPSPEED"] = "false"
        fsdp = launch_fsdp()
        if fsdp is not None:
            os.environ["ACCELERATE_USE_FSDP"] = "false"
        from datetime import timedelta

        from accelerate import Accelerator
        from accelerate.utils import InitProcessGroupKwargs

        acc = Accelerator(
            cpu=device == "cpu" or not torch.cuda.is_available(),
            kwargs_handlers=[InitProcessGroupKwargs(timeout=timedelta(seconds=timeout_s))],
        )
        if acc.distributed_type.name in ("FSDP", "DEEPSPEED"):  # set up by code rather than the launcher
            raise UserError(
                f"accelerate's own {acc.distributed_type.name} is not supported by vqa-grpo's loop; "
                "launch with configs/accelerate/fsdp.yaml or ddp.yaml"
            )
        return cls(acc, fsdp, ds)

    def describe(self, model=None) -> str:
        """E.g. "2 processes, MULTI_CPU on cpu"; under FSDP with ``model``, its units and rank 0's share."""
        return describe(self, model)

    @property
    def rank(self) -> int:
        return self.acc.process_index if self.acc else 0

    @property
    def world(self) -> int:
        return self.acc.num_processes if self.acc else 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def device(self, fallback: torch.device) -> torch.device:
        return self.acc.device if self.acc else fallback

    @property
    def sharded_forward(self) -> bool:
        """Every forward pass is a collective (the weights are partitioned): FSDP or ZeRO-3."""
        return self.fsdp is not None or (self.ds is not None and self.ds.stage == 3)

    def check_config(self, cfg) -> None:
        """Settings that cannot run on sharded weights (or under DeepSpeed), refused before the model loads."""
        if self.ds is not None:
            _check_deepspeed(self.ds, cfg)
        if not self.sharded_forward:
            return
        if cfg.model.quantization != "none":
            raise UserError(
                f"model.quantization={cfg.model.quantization} weights cannot be sharded by FSDP; set "
                "model.quantization=none, or launch with configs/accelerate/ddp.yaml"
            )
        if cfg.grpo.generation_backend == "vllm":
            raise UserError(
                "grpo.generation_backend=vllm needs the full weights on every process; set "
                "grpo.generation_backend=transformers, or launch with configs/accelerate/ddp.yaml"
            )

    def shard(self, model, reshard_root: bool = False, frozen: bool = False):
        """Under FSDP: ``model`` sharded in place with FSDP2 (each wrap-class module its own unit, then
        the rest as the root unit) and returned; otherwise ``model`` unchanged. Rank 0's weights are
        broadcast first, as DDP does: randomly initialised ones (LoRA's A) differ between ranks
        seeded apart. Build the optimizer after this: sharding replaces the parameters.
        ``reshard_root``: free the root unit's gathered weights after each forward too (a model
        that only runs forward, like the KL reference, would otherwise keep them gathered).

        Under DeepSpeed: rank 0's weights broadcast; a ``frozen`` model (no optimizer: the KL
        reference, a model being evaluated) is partitioned now under ZeRO-3 (a DeepSpeed engine
        without optimizer; the module keeps its hooks and is returned), a trained one by :meth:`prepare`."""
        if self.ds is not None:
            _broadcast_from_rank0(model)
            if frozen and self.ds.stage == 3:
                import deepspeed

                self._frozen.append(deepspeed.initialize(model=model, config=self.ds.config())[0])
            return model
        if self.fsdp is None:
            return model
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import CPUOffloadPolicy, OffloadPolicy, fully_shard

        mesh = init_device_mesh(self.acc.device.type, (self.world,))
        offload = (
            CPUOffloadPolicy(pin_memory=self.acc.device.type == "cuda") if self.fsdp.offload_params else OffloadPolicy()
        )
        kwargs = dict(mesh=mesh, reshard_after_forward=self.fsdp.reshard_after_forward, offload_policy=offload)
        _broadcast_from_rank0(model)
        root = sharding_root(model)
        for layer in reversed(wrap_targets(root, self.fsdp.wrap_classes) if self.fsdp.wrap_layers else []):
            fully_shard(layer, **kwargs)  # innermost first: a unit owns the parameters no inner unit took
        # The root unit keeps its weights gathered from forward to backward (FSDP2's own default for
        # the root: backward needs them at once), and through a Dist.decoding block.
        fully_shard(root, **{**kwargs, "reshard_after_forward": reshard_root})
        # FSDP makes the unit that runs forward first the root. transformers' generate may call the
        # image encoder before the model's forward (Dist.decoding), so fix the root now (torch has
        # no public call for this).
        root._get_fsdp_state()._lazy_init()
        return model

    def prepare(self, model, optimizer, train=None):
        """The model wrapped for DDP (and its optimizer) when there are several processes; under
        FSDP both as they are (:meth:`shard` did the wrapping). Under DeepSpeed: its engine and ZeRO
        optimizer over ``model`` and the torch ``optimizer`` (which keeps stepping the partitions, so
        a scheduler made over it keeps setting the rate), configured from ``train``
        (config.TrainConfig: micro-batch size, gradient accumulation steps, clipping); a state the
        optimizer holds already (a resumed checkpoint's, in 1-process layout) is moved into ZeRO's partitions."""
        if self.ds is not None:
            return self._start_deepspeed(model, optimizer, train)
        if self.acc is None or self.fsdp is not None:
            return model, optimizer
        return self.acc.prepare(model, optimizer)

    def _start_deepspeed(self, model, optimizer, train):
        import deepspeed

        self._params = [p for g in optimizer.param_groups for p in g["params"]]
        self._groups = optimizer.state_dict()["param_groups"]
        resumed = {i: optimizer.state.pop(p) for i, p in enumerate(self._params) if p in optimizer.state}
        engine, zero, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, config=self.ds.config(train))
        self.engine = engine
        if resumed:
            load_moments(zero, self._params, resumed)
        return engine, zero

    def backward(self, loss: torch.Tensor) -> None:
        if self.engine is not None:  # DeepSpeed: the loss is already the step's share (no division by the accumulation)
            self.engine.backward(loss, scale_wrt_gas=False)
        elif self.acc is None:
            loss.backward()
        else:
            self.acc.backward(loss)

    def no_sync(self, model, sync: bool):
        """Skip the gradient all-reduce (FSDP: reduce-scatter) of this backward unless ``sync`` (the
        step's last one); the skipped micro-batches' gradients accumulate unsharded until then.
        Under DeepSpeed, ``sync`` marks its gradient-accumulation boundary (ZeRO reduces each
        micro-batch's gradients into the partitions as it goes)."""
        if self.engine is not None:
            self.engine.set_gradient_accumulation_boundary(sync)
            return contextlib.nullcontext()
        if self.acc is None or sync:
            return contextlib.nullcontext()
        if self.fsdp is not None:
            return _gradient_sync_off(sharding_root(model))
        return self.acc.no_sync(model)

    def step(self, model, optimizer, max_norm: float) -> float:
        """Clip the gradients to ``max_norm`` (when > 0), step ``optimizer`` unless their global norm
        is non-finite, zero them; return that norm (before clipping). Under DeepSpeed its engine
        does all of this at the accumulation boundary (it too skips a step whose norm is not finite)."""
        if self.engine is not None:
            self.engine.step()
            norm = self.engine.get_global_grad_norm()
            return float(norm) if norm is not None else float("nan")
        norm = self.clip_grad_norm(model, max_norm)
        if math.isfinite(norm):
            optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return norm

    def clip_grad_norm(self, model, max_norm: float) -> float:
        """Global gradient norm (over every rank's shard), clipped to ``max_norm`` when > 0."""
        params = [p for p in model.parameters() if p.grad is not None]
        limit = max_norm if max_norm > 0 else float("inf")
        if self.acc is None or self.fsdp is not None:  # FSDP: the norm of DTensor gradients, a collective
            if not params:
                return 0.0
            norm = torch.nn.utils.clip_grad_norm_(params, limit)
            return float(norm.full_tensor() if hasattr(norm, "full_tensor") else norm)
        return float(self.acc.clip_grad_norm_(model.parameters(), limit))

    def decoding(self, model):
        """Under FSDP, a block in which every rank keeps decoding until all ranks' rows have stopped
        (each decode step is a collective forward), with the root unit of ``model`` gathered
        throughout: transformers' ``generate`` runs a multimodal model's image encoder outside the
        model's forward, where FSDP would not gather the weights the root unit holds. Otherwise a
        no-op block. Under ZeRO-3, the block keeps the ranks decoding in step (DeepSpeed's hooks
        gather each module's weights as it runs, the image encoder's too)."""
        if self.fsdp is None:
            if self.sharded_forward:
                from vqa_grpo.models.prefix import synced_decoding

                return synced_decoding(self.any)
            return contextlib.nullcontext()
        return _synced_and_gathered(sharding_root(model), self.any)

    def sum(self, value: float) -> float:
        """``value`` summed over ranks."""
        if self.acc is None:
            return value
        t = torch.tensor([float(value)], dtype=torch.float64, device=self.acc.device)
        return float(self.acc.reduce(t, reduction="sum").item())

    def mean_stats(self, stats: dict) -> dict:
        """Each numeric stat averaged over ranks (None stays None); every rank gets the result."""
        if self.acc is None:
            return stats
        keys = sorted(k for k, v in stats.items() if isinstance(v, (int, float)) and not isinstance(v, bool))
        t = torch.tensor([float(stats[k]) for k in keys], dtype=torch.float64, device=self.acc.device)
        t = self.acc.reduce(t, reduction="mean")
        return {**stats, **{k: float(v) for k, v in zip(keys, t.tolist())}}

    def any(self, flag: bool) -> bool:
        """True on every rank when it is true on one (e.g. a stop signal seen by one process)."""
        return self.sum(1.0 if flag else 0.0) > 0

    def map_sharded(self, fn: Callable[[list], list[T]], items: list) -> list[T]:
        """``fn`` on this rank's share (items r, r + world, ...), gathered back into the input's order.

        Under FSDP or ZeRO-3 every rank's share is padded to the same length (with copies of the share's
        first item, or of item 0) so that all run ``fn``'s forward passes the same number of times;
        the padding's results are dropped.
        """
        if self.acc is None:
            return fn(items)
        from accelerate.utils import gather_object

        share = items[self.rank :: self.world]
        n = len(share)
        if self.sharded_forward and items:
            share = share + [share[0] if share else items[0]] * (math.ceil(len(items) / self.world) - n)
        mine = fn(share)[:n]
        shards = gather_object([mine])
        out: list = [None] * len(items)
        for r, shard in enumerate(shards):
            out[r :: self.world] = shard
        return out

    def barrier(self) -> None:
        if self.acc is not None:
            self.acc.wait_for_everyone()

    def from_main(self, value: T) -> T:
        """Rank 0's ``value`` on every rank (a picklable object)."""
        if self.acc is None:
            return value
        from accelerate.utils import broadcast_object_list

        return broadcast_object_list([value], from_process=0)[0]

    # ---- full state dicts of a sharded model (collectives: every rank calls them) --------------

    def model_state(self, model) -> dict | None:
        """Under FSDP or ZeRO-3, the full state dict of ``model`` in CPU memory on rank 0 (None on the
        others), LoRA runs gathering only the trainable (adapter) weights; None otherwise (the
        module's own state dict is the full one: DDP, ZeRO-2)."""
        if self.ds is not None:
            return _gathered_state(model, self.is_main) if self.ds.stage == 3 else None
        if self.fsdp is None:
            return None
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        options = StateDictOptions(full_state_dict=True, cpu_offload=True, ignore_frozen_params=is_peft(model))
        state = get_model_state_dict(model, options=options)
        if not self.is_main:
            return None
        first = {n for n, _ in model.named_parameters()}
        tied = {
            n for n, _ in model.named_parameters(remove_duplicate=False)
        } - first  # e.g. lm_head tied to the embeddings
        return {k: v for k, v in state.items() if k not in tied}  # as save_pretrained writes a live model

    def optimizer_state(self, model, optimizer) -> dict | None:
        """Under FSDP, the full optimizer state on rank 0 in ``optimizer.state_dict()``'s layout of a
        1-process run (parameters numbered in the optimizer's order), None on the others; None without
        FSDP. Under DeepSpeed the same, gathered from ZeRO's partitions."""
        if self.ds is not None:
            return gathered_moments(optimizer, self._params, self._groups, self.is_main)
        if self.fsdp is None:
            return None
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

        state = get_optimizer_state_dict(
            model, optimizer, options=StateDictOptions(full_state_dict=True, cpu_offload=True)
        )
        if not self.is_main:
            return None
        index = {name: i for i, name in enumerate(optimizer_names(model, optimizer))}
        return {
            "state": {index[k]: v for k, v in state["state"].items()},
            "param_groups": [{**g, "params": [index[k] for k in g["params"]]} for g in state["param_groups"]],
        }

    def load_model_state(self, model, state: dict, strict: bool = True) -> None:
        """Copy the full ``state`` (the same on every rank) into the sharded ``model``: each rank keeps its shard."""
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

        set_model_state_dict(model, state, options=StateDictOptions(full_state_dict=True, strict=strict))

    def load_optimizer_state(self, model, optimizer, state: dict) -> None:
        """Load a full optimizer state in 1-process layout (as :meth:`optimizer_state` writes it) into
        the optimizer over the sharded ``model``; every rank passes the same ``state``."""
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

        names = optimizer_names(model, optimizer)
        by_name = {
            "state": {names[i]: v for i, v in state["state"].items()},
            "param_groups": [{**g, "params": [names[i] for i in g["params"]]} for g in state["param_groups"]],
        }
        set_optimizer_state_dict(model, optimizer, by_name, options=StateDictOptions(full_state_dict=True))
