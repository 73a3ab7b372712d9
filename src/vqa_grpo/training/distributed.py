"""The processes of a run, through accelerate, and FSDP2 sharding of the model.

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
import functools
import math
import os
from dataclasses import dataclass
from typing import Callable, Mapping, TypeVar

import torch

from vqa_grpo.errors import UserError

T = TypeVar("T")


def launched_world_size() -> int:
    """Processes started by a launcher (accelerate launch, torchrun): WORLD_SIZE, else 1."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def _flag(env: Mapping[str, str], name: str, default: str = "false") -> bool:
    return env.get(name, default).strip().lower() in ("true", "1", "yes")


@dataclass(frozen=True)
class FSDPSettings:
    """The FSDP settings of the launch (accelerate exports its config's fsdp_config as ``FSDP_*``)."""

    wrap_classes: tuple[str, ...]  # module class names sharded as their own unit; () = the model's _no_split_modules
    wrap_layers: bool  # False (fsdp_auto_wrap_policy: NO_WRAP): the whole model is one unit
    reshard_after_forward: bool  # free the gathered weights after each unit's forward (gather again in backward)
    offload_params: bool  # keep the shards (and AdamW's moments) in CPU memory: CPUOffloadPolicy

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> "FSDPSettings | None":
        """The settings when the launch asks for FSDP (ACCELERATE_USE_FSDP), else None; a setting this
        loop does not honour is a UserError naming the fix."""
        if not _flag(env, "ACCELERATE_USE_FSDP"):
            return None
        fix = "in the accelerate config's fsdp_config (configs/accelerate/fsdp.yaml)"
        if env.get("FSDP_VERSION", "1").strip() != "2":
            raise UserError(f"fsdp_version={env.get('FSDP_VERSION', '1')}: vqa-grpo shards with FSDP2; set fsdp_version: 2 {fix}")
        policy = env.get("FSDP_AUTO_WRAP_POLICY", "TRANSFORMER_BASED_WRAP").strip().upper()
        if policy not in ("TRANSFORMER_BASED_WRAP", "NO_WRAP"):
            raise UserError(f"fsdp_auto_wrap_policy={policy} is not supported; set fsdp_auto_wrap_policy: "
                            f"TRANSFORMER_BASED_WRAP (one unit per layer class) {fix}")
        kind = env.get("FSDP_STATE_DICT_TYPE", "FULL_STATE_DICT").strip().upper()
        if kind != "FULL_STATE_DICT":
            raise UserError(f"fsdp_state_dict_type={kind} is not supported (checkpoints are gathered into the "
                            f"files of a 1-process run); set fsdp_state_dict_type: FULL_STATE_DICT {fix}")
        refused = {
            "FSDP_ACTIVATION_CHECKPOINTING": "set fsdp_activation_checkpointing: false and model.gradient_checkpointing=true in the run's config",
            "FSDP_CPU_RAM_EFFICIENT_LOADING": f"set fsdp_cpu_ram_efficient_loading: false {fix} (every process loads the weights, then shards them)",
            "FSDP_FORWARD_PREFETCH": f"set fsdp_forward_prefetch: false {fix}",
        }
        for name, advice in refused.items():
            if _flag(env, name):
                raise UserError(f"{name.lower().removeprefix('fsdp_')}=true is not supported under vqa-grpo's FSDP2; {advice}")
        precision = env.get("ACCELERATE_MIXED_PRECISION", "no").strip().lower()
        if precision != "no":
            raise UserError(f"accelerate mixed_precision={precision} is not applied under vqa-grpo's FSDP2; set "
                            "mixed_precision: \"no\" in the accelerate config and train.mixed_precision=bf16 in the run's config")
        classes = tuple(c.strip() for c in env.get("FSDP_TRANSFORMER_CLS_TO_WRAP", "").split(",") if c.strip())
        return cls(classes, policy == "TRANSFORMER_BASED_WRAP", _flag(env, "FSDP_RESHARD_AFTER_FORWARD", "true"),
                   _flag(env, "FSDP_OFFLOAD_PARAMS"))


@dataclass(frozen=True)
class DeepSpeedSettings:
    """The DeepSpeed settings of the launch (accelerate exports its config's deepspeed_config as
    ``ACCELERATE_DEEPSPEED_*`` and ``ACCELERATE_GRADIENT_*``)."""

    stage: int  # ZeRO stage: 2 (gradients and AdamW's moments partitioned) or 3 (the weights as well)
    accumulation: int | None  # gradient_accumulation_steps, when the accelerate config names it
    clipping: float | None  # gradient_clipping, when the accelerate config names it

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> "DeepSpeedSettings | None":
        """The settings when the launch asks for DeepSpeed (ACCELERATE_USE_DEEPSPEED), else None; a
        setting this loop does not honour is a UserError naming the fix."""
        if not _flag(env, "ACCELERATE_USE_DEEPSPEED"):
            return None
        fix = "in the accelerate config's deepspeed_config (configs/accelerate/deepspeed_zero3.yaml)"
        if env.get("ACCELERATE_DEEPSPEED_CONFIG_FILE", "").strip():
            raise UserError("deepspeed_config_file is not supported (vqa-grpo builds DeepSpeed's config from the run's "
                            f"train.* settings); remove it and set zero_stage {fix}")
        stage = env.get("ACCELERATE_DEEPSPEED_ZERO_STAGE", "2").strip()
        if stage not in ("2", "3"):
            raise UserError(f"zero_stage={stage} is not supported; set zero_stage: 2 or 3 {fix}")
        for where in ("OPTIMIZER", "PARAM"):
            device = env.get(f"ACCELERATE_DEEPSPEED_OFFLOAD_{where}_DEVICE", "none").strip().lower()
            if device not in ("", "none"):
                raise UserError(f"offload_{where.lower()}_device={device} is not supported under vqa-grpo's DeepSpeed; set "
                                f"offload_{where.lower()}_device: none {fix}, or use configs/accelerate/fsdp.yaml with "
                                "fsdp_offload_params: true")
        if _flag(env, "ACCELERATE_DEEPSPEED_ZERO3_INIT"):
            raise UserError(f"zero3_init_flag=true is not supported (every process loads the weights, then ZeRO-3 "
                            f"partitions them); set zero3_init_flag: false {fix}")
        if env.get("ACCELERATE_DEEPSPEED_MOE_LAYER_CLS_NAMES", "").strip():
            raise UserError(f"deepspeed_moe_layer_cls_names is not supported; remove it {fix}")
        precision = env.get("ACCELERATE_MIXED_PRECISION", "no").strip().lower()
        if precision != "no":
            raise UserError(f"accelerate mixed_precision={precision} is not applied under vqa-grpo's DeepSpeed; set "
                            "mixed_precision: \"no\" in the accelerate config and train.mixed_precision=bf16 in the run's config")
        accumulation = env.get("ACCELERATE_GRADIENT_ACCUMULATION_STEPS", "").strip()
        clipping = env.get("ACCELERATE_GRADIENT_CLIPPING", "").strip().lower()
        return cls(int(stage), int(accumulation) if accumulation else None,
                   float(clipping) if clipping not in ("", "none", "auto") else None)

    def config(self, train=None) -> dict:
        """DeepSpeed's config for a model trained with ``train`` (config.TrainConfig; None: a model
        that only runs forward). Every ZeRO-3 parameter is partitioned, however small."""
        return {
            "train_micro_batch_size_per_gpu": train.per_device_batch_size if train else 1,
            "gradient_accumulation_steps": train.gradient_accumulation_steps if train else 1,
            "gradient_clipping": train.max_grad_norm if train else 0.0,
            "zero_optimization": {"stage": self.stage, "stage3_param_persistence_threshold": 0},
            "zero_allow_untested_optimizer": True,
            "steps_per_print": 2**62,
        }


@functools.cache
def launch_deepspeed() -> DeepSpeedSettings | None:
    """This process's DeepSpeed launch settings, read once (Dist.from_env then hides them from accelerate)."""
    return DeepSpeedSettings.from_env(os.environ)


@functools.cache
def launch_fsdp() -> FSDPSettings | None:
    """This process's launch settings, read once: Dist.from_env then hides them from accelerate
    (a second Dist in the same process, e.g. evaluation after training, must see them too)."""
    return FSDPSettings.from_env(os.environ)


def sharding_root(model):
    """The module FSDP's root unit is put on: the transformers model itself, also under a PEFT
    wrapper (whose ``generate`` calls the inner model directly, bypassing the wrapper's forward)."""
    if hasattr(model, "get_base_model"):
        return model.get_base_model()
    return model


def wrap_targets(root, names: tuple[str, ...]) -> list[torch.nn.Module]:
    """The submodules whose class is one of ``names`` (default: the model's ``_no_split_modules``),
    outermost first; a UserError when a name is found nowhere in the model."""
    wanted = names or tuple(getattr(root, "_no_split_modules", None) or ())
    found = {type(m).__name__ for m in root.modules()}
    missing = [n for n in wanted if n not in found]
    if names and missing:
        layers = sorted({type(m[0]).__name__ for m in root.modules() if isinstance(m, torch.nn.ModuleList) and len(m)})
        raise UserError(f"fsdp_transformer_layer_cls_to_wrap={','.join(missing)}: no such module in {type(root).__name__}; "
                        f"set it to its layer classes ({', '.join(layers)}) or remove the line to use the model's own")
    return [m for m in root.modules() if type(m).__name__ in wanted and m is not root]


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
    def from_env(cls, device: str = "auto") -> "Dist":
        """accelerate's processes when a launcher started several (gloo on the CPU), else one process.

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
        from accelerate import Accelerator

        acc = Accelerator(cpu=device == "cpu" or not torch.cuda.is_available())
        if acc.distributed_type.name in ("FSDP", "DEEPSPEED"):  # set up by code rather than the launcher
            raise UserError(f"accelerate's own {acc.distributed_type.name} is not supported by vqa-grpo's loop; "
                            "launch with configs/accelerate/fsdp.yaml or ddp.yaml")
        return cls(acc, fsdp, ds)

    def describe(self, model=None) -> str:
        """E.g. "2 processes, MULTI_CPU on cpu"; under FSDP with ``model``, its units and rank 0's share."""
        if self.acc is None:
            return "1 process"
        if self.ds is not None:
            text = f"{self.world} processes, DeepSpeed ZeRO-{self.ds.stage} on {self.acc.device.type}"
            if model is not None:
                local, full = parameter_counts(model)
                text += f", {local:,} of {full:,} parameters on this process"
            return text
        if self.fsdp is None:
            return f"{self.world} processes, {self.acc.distributed_type.value} on {self.acc.device.type}"
        text = f"{self.world} processes, FSDP2 on {self.acc.device.type}"
        if model is not None:
            from torch.distributed.fsdp import FSDPModule

            local, full = parameter_counts(model)
            units = sum(isinstance(m, FSDPModule) for m in model.modules())
            text += f", {units} sharded units, {local:,} of {full:,} parameters on this process"
        return text

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
            raise UserError(f"model.quantization={cfg.model.quantization} weights cannot be sharded by FSDP; set "
                            "model.quantization=none, or launch with configs/accelerate/ddp.yaml")
        if cfg.grpo.generation_backend == "vllm":
            raise UserError("grpo.generation_backend=vllm needs the full weights on every process; set "
                            "grpo.generation_backend=transformers, or launch with configs/accelerate/ddp.yaml")

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
        offload = CPUOffloadPolicy(pin_memory=self.acc.device.type == "cuda") if self.fsdp.offload_params else OffloadPolicy()
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
            self._load_moments(zero, resumed)
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
        tied = {n for n, _ in model.named_parameters(remove_duplicate=False)} - first  # e.g. lm_head tied to the embeddings
        return {k: v for k, v in state.items() if k not in tied}  # as save_pretrained writes a live model

    def optimizer_state(self, model, optimizer) -> dict | None:
        """Under FSDP, the full optimizer state on rank 0 in ``optimizer.state_dict()``'s layout of a
        1-process run (parameters numbered in the optimizer's order), None on the others; None without
        FSDP. Under DeepSpeed the same, gathered from ZeRO's partitions."""
        if self.ds is not None:
            return self._gathered_moments(optimizer)
        if self.fsdp is None:
            return None
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

        state = get_optimizer_state_dict(model, optimizer, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        if not self.is_main:
            return None
        index = {name: i for i, name in enumerate(optimizer_names(model, optimizer))}
        return {"state": {index[k]: v for k, v in state["state"].items()},
                "param_groups": [{**g, "params": [index[k] for k in g["params"]]} for g in state["param_groups"]]}

    def _gathered_moments(self, zero) -> dict | None:
        """AdamW's state in 1-process layout on rank 0, gathered from the partitions of the ZeRO
        optimizer ``zero`` (a collective; None on the other ranks)."""
        from deepspeed.utils import safe_get_full_optimizer_state

        inner = zero.optimizer  # the torch AdamW stepping ZeRO's flat fp32 partitions
        steps = [s["step"] for s in inner.state.values() if "step" in s]  # one count for all: none before the first step
        state = {}
        for i, p in enumerate(self._params if steps else []):
            moments = {k: safe_get_full_optimizer_state(p, k) for k in ADAM_MOMENTS}
            if self.is_main:
                state[i] = {"step": steps[0].detach().cpu().clone(), **{k: v.detach().cpu().clone() for k, v in moments.items()}}
        if not self.is_main:
            return None
        groups = [{**g, **{k: v for k, v in live.items() if k != "params"}} for g, live in zip(self._groups, inner.param_groups)]
        return {"state": state, "param_groups": groups}

    def _load_moments(self, zero, resumed: dict[int, dict]) -> None:
        """AdamW's state ``resumed`` (parameter index in the optimizer's order -> its full state) into
        the partitions of the ZeRO optimizer ``zero``; every rank passes the same."""
        from deepspeed.utils import safe_set_full_optimizer_state

        inner = zero.optimizer
        step = next(iter(resumed.values()))["step"]
        # The flat fp32 partitions AdamW steps (ZeRO-3 hands them to it only during its step), given
        # AdamW's lazy start here so that they can be written.
        flats = getattr(zero, "fp32_partitioned_groups_flat", None) or [p for g in inner.param_groups for p in g["params"]]
        for flat in flats:
            inner.state[flat] = {"step": step.clone(), **{k: torch.zeros_like(flat) for k in ADAM_MOMENTS}}
        if hasattr(zero, "_lazy_init_hp_params_optimizer_state"):  # ZeRO-2: link each parameter to its fragment (DeepSpeed does this at its first step)
            zero._lazy_init_hp_params_optimizer_state()
        for i, p in enumerate(self._params):
            for k in ADAM_MOMENTS:
                safe_set_full_optimizer_state(p, resumed[i][k].to(p.device), k)

    def load_model_state(self, model, state: dict, strict: bool = True) -> None:
        """Copy the full ``state`` (the same on every rank) into the sharded ``model``: each rank keeps its shard."""
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

        set_model_state_dict(model, state, options=StateDictOptions(full_state_dict=True, strict=strict))

    def load_optimizer_state(self, model, optimizer, state: dict) -> None:
        """Load a full optimizer state in 1-process layout (as :meth:`optimizer_state` writes it) into
        the optimizer over the sharded ``model``; every rank passes the same ``state``."""
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

        names = optimizer_names(model, optimizer)
        by_name = {"state": {names[i]: v for i, v in state["state"].items()},
                   "param_groups": [{**g, "params": [names[i] for i in g["params"]]} for g in state["param_groups"]]}
        set_optimizer_state_dict(model, optimizer, by_name, options=StateDictOptions(full_state_dict=True))


ADAM_MOMENTS = ("exp_avg", "exp_avg_sq")


def _require_deepspeed() -> None:
    try:
        import deepspeed  # noqa: F401
    except ImportError:
        raise UserError("the launch asks for DeepSpeed, which is not installed; pip install 'vqa-grpo[deepspeed]', "
                        "or launch with configs/accelerate/fsdp.yaml") from None


def _check_deepspeed(ds: DeepSpeedSettings, cfg) -> None:
    """The accelerate config's DeepSpeed numbers must be the run's (DeepSpeed steps with the run's)."""
    fix = "remove the line from the accelerate config's deepspeed_config (the run's value is used) or make them equal"
    t = cfg.train
    if ds.accumulation is not None and ds.accumulation != t.gradient_accumulation_steps:
        raise UserError(f"gradient_accumulation_steps={ds.accumulation} in the accelerate config but "
                        f"train.gradient_accumulation_steps={t.gradient_accumulation_steps}; {fix}")
    if ds.clipping is not None and ds.clipping != t.max_grad_norm:
        raise UserError(f"gradient_clipping={ds.clipping:g} in the accelerate config but train.max_grad_norm={t.max_grad_norm:g}; {fix}")
    if cfg.model.quantization != "none":
        raise UserError(f"model.quantization={cfg.model.quantization} is not supported under DeepSpeed; set "
                        "model.quantization=none, or launch with configs/accelerate/ddp.yaml")


def _gathered_state(model, is_main: bool) -> dict | None:
    """The full state dict of the ZeRO-3 partitioned ``model`` in CPU memory on rank 0 (None on the
    others), one parameter gathered at a time; a PEFT model's trainable (adapter) weights only, and
    tied weights once, as save_pretrained writes a live model."""
    import deepspeed

    first = dict(model.named_parameters())
    tied = {n for n, _ in model.named_parameters(remove_duplicate=False)} - set(first)
    peft = is_peft(model)
    out = {}
    for name, t in model.state_dict(keep_vars=True).items():
        if name in tied or (peft and not (name in first and first[name].requires_grad)):
            continue
        gather = deepspeed.zero.GatheredParameters([t]) if hasattr(t, "ds_id") else contextlib.nullcontext()
        with gather:
            if is_main:
                out[name] = t.detach().cpu().clone()
    return out if is_main else None


def is_peft(model) -> bool:
    return hasattr(model, "peft_config")


def optimizer_names(model, optimizer) -> list[str]:
    """The parameter names of ``optimizer``'s parameters, in its param_groups order."""
    name = {id(p): n for n, p in model.named_parameters()}
    return [name[id(p)] for g in optimizer.param_groups for p in g["params"]]


def parameter_counts(model) -> tuple[int, int]:
    """(elements this process holds, elements of the full model) over ``model``'s parameters."""
    def held(p) -> int:
        if hasattr(p, "ds_tensor"):  # ZeRO-3: this rank's partition (padded to equal parts)
            return p.ds_tensor.numel()
        return p.to_local().numel() if hasattr(p, "to_local") else p.numel()

    params = list(model.parameters())
    return sum(held(p) for p in params), sum(p.ds_numel if hasattr(p, "ds_numel") else p.numel() for p in params)


@torch.no_grad()
def _broadcast_from_rank0(model) -> None:
    import torch.distributed as tdist

    for t in [*model.parameters(), *model.buffers()]:
        tdist.broadcast(t.data, src=0)


@contextlib.contextmanager
def _synced_and_gathered(root, any_rank: Callable[[bool], bool]):
    from vqa_grpo.models.prefix import synced_decoding

    root.unshard()
    try:
        with synced_decoding(any_rank):
            yield
    finally:
        root.reshard()


@contextlib.contextmanager
def _gradient_sync_off(root):
    root.set_requires_gradient_sync(False)
    try:
        yield
    finally:
        root.set_requires_gradient_sync(True)


def predict_sharded(dist: Dist, lm, examples: list, eval_cfg, device, *, progress: bool = False) -> list[str | None]:
    """The raw answer to each example as ``eval_cfg`` (config.EvalConfig) asks (None where its image
    fails to load), each process answering its share and all getting every answer, in order.

    With sharded weights (FSDP, ZeRO-3) every generate call is a collective: the examples whose image fails
    are dropped first (so that no rank skips a batch the others run), the shares are padded to
    equal length and the ranks decode in step.
    """
    from vqa_grpo.models.generation import predict_answers

    def answer(chunk: list) -> list[str | None]:
        return predict_answers(
            lm.model, lm.adapter, lm.processor, chunk,
            batch_size=eval_cfg.batch_size, max_new_tokens=eval_cfg.max_new_tokens, device=device,
            do_sample=eval_cfg.do_sample, temperature=eval_cfg.temperature, top_p=eval_cfg.top_p, progress=progress,
        )

    if not dist.sharded_forward:
        return dist.map_sharded(answer, examples)
    loads = dist.map_sharded(lambda chunk: [_image_loads(e) for e in chunk], examples)
    with dist.decoding(lm.model):
        texts = iter(dist.map_sharded(answer, [e for e, ok in zip(examples, loads) if ok]))
    return [next(texts) if ok else None for ok in loads]


def _image_loads(example) -> bool:
    from vqa_grpo.data.types import BadExample

    try:
        example.load_image()
    except BadExample:
        return False
    return True
