"""DeepSpeed ZeRO-2/3 (configs/accelerate/deepspeed_zero2.yaml, deepspeed_zero3.yaml): :meth:`DeepSpeed.prepare`
calls ``deepspeed.initialize`` itself with the run's torch AdamW and a config built from the run's
train.* settings and the launch's ``ACCELERATE_DEEPSPEED_*`` variables (accelerate never turns
DeepSpeed on for a CPU). Its engine runs backward, marks the accumulation boundary, clips and steps.
ZeRO-3 partitions every weight, so the ranks decode in step as under FSDP2, and checkpoints gather the
weights and AdamW's moments into the files of a 1-process run."""

from __future__ import annotations

import contextlib

import torch

from vqa_grpo.distributed.dist import Dist
from vqa_grpo.distributed.helpers import broadcast_from_rank0, is_peft, parameter_counts
from vqa_grpo.distributed.launch import DeepSpeedSettings
from vqa_grpo.errors import UserError

ADAM_MOMENTS = ("exp_avg", "exp_avg_sq")


class DeepSpeed(Dist):
    """ZeRO-2 (the gradients and AdamW's moments partitioned) or ZeRO-3 (the weights too, from
    :meth:`prepare` on, or from :meth:`shard` on for a frozen model). A checkpoint loads before
    :meth:`prepare`, into the whole model and the torch optimizer, as with one process. Decoding
    needs nothing gathered: DeepSpeed's hooks gather each module's weights as it runs, the image
    encoder's too."""

    def __init__(self, settings: DeepSpeedSettings, acc=None):
        super().__init__(acc)
        self.settings = settings
        self.sharded_forward = settings.stage == 3
        self.engine = None  # the trained model's engine, once prepared
        self._params: list = []  # its parameters in the optimizer's order before DeepSpeed took it
        self._groups: list[dict] = []  # the optimizer's param_groups (1-process layout) at that point
        self._frozen: list = []  # engines of forward-only models (kept alive with their hooks)

    def check_config(self, cfg) -> None:
        """The accelerate config's DeepSpeed numbers must be the run's (DeepSpeed steps with the run's);
        no quantized weights; under ZeRO-3 what no sharded back-end runs (Dist.check_config)."""
        ds, t = self.settings, cfg.train
        fix = (
            "remove the line from the accelerate config's deepspeed_config (the run's value is used) or make them equal"
        )
        if ds.accumulation is not None and ds.accumulation != t.gradient_accumulation_steps:
            raise UserError(
                f"gradient_accumulation_steps={ds.accumulation} in the accelerate config but "
                f"train.gradient_accumulation_steps={t.gradient_accumulation_steps}; {fix}"
            )
        if ds.clipping is not None and ds.clipping != t.max_grad_norm:
            raise UserError(
                f"gradient_clipping={ds.clipping:g} in the accelerate config but "
                f"train.max_grad_norm={t.max_grad_norm:g}; {fix}"
            )
        if cfg.model.quantization != "none":
            raise UserError(
                f"model.quantization={cfg.model.quantization} is not supported under DeepSpeed; set "
                "model.quantization=none, or launch with configs/accelerate/ddp.yaml"
            )
        super().check_config(cfg)

    def shard(self, model, reshard_root: bool = False, frozen: bool = False):
        """Rank 0's weights broadcast; a ``frozen`` model (no optimizer) partitioned now under ZeRO-3
        (an engine without optimizer: the module keeps its hooks and is returned), a trained one by
        :meth:`prepare`."""
        broadcast_from_rank0(model)
        if frozen and self.settings.stage == 3:
            import deepspeed

            self._frozen.append(deepspeed.initialize(model=model, config=self.settings.config())[0])
        return model

    def prepare(self, model, optimizer, train=None):
        """The engine and ZeRO optimizer over ``model`` and the torch ``optimizer`` (which keeps
        stepping the partitions, so a scheduler made over it keeps setting the rate), configured from
        ``train``; a state the optimizer holds already (a resumed checkpoint's, in 1-process layout)
        is moved into ZeRO's partitions."""
        import deepspeed

        self._params = [p for g in optimizer.param_groups for p in g["params"]]
        self._groups = optimizer.state_dict()["param_groups"]
        resumed = {i: optimizer.state.pop(p) for i, p in enumerate(self._params) if p in optimizer.state}
        config = self.settings.config(train)
        engine, zero, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, config=config)
        self.engine = engine
        if resumed:
            load_moments(zero, self._params, resumed)
        return engine, zero

    def backward(self, loss: torch.Tensor) -> None:
        self.engine.backward(loss, scale_wrt_gas=False)  # the loss is already the step's share

    def no_sync(self, model, sync: bool):
        """``sync`` marks the accumulation boundary (ZeRO reduces each micro-batch's gradients as it goes)."""
        self.engine.set_gradient_accumulation_boundary(sync)
        return contextlib.nullcontext()

    def step(self, model, optimizer, max_norm: float) -> float:
        """The engine clips, steps (skipping a non-finite norm) and zeroes at the boundary."""
        self.engine.step()
        norm = self.engine.get_global_grad_norm()
        return float(norm) if norm is not None else float("nan")

    def model_state(self, model) -> dict | None:
        return gathered_state(model, self.is_main) if self.sharded_forward else None

    def optimizer_state(self, model, optimizer) -> dict | None:
        return gathered_moments(optimizer, self._params, self._groups, self.is_main)

    def describe(self, model=None) -> str:
        text = f"{self.acc.num_processes} processes, DeepSpeed ZeRO-{self.settings.stage} on {self.acc.device.type}"
        if model is not None:
            local, full = parameter_counts(model)
            text += f", {local:,} of {full:,} parameters on this process"
        return text


def require_deepspeed() -> None:
    """DeepSpeed importable (a one-line error if not), and its CPU inference all-reduce left unbuilt."""
    try:
        import deepspeed
    except ImportError:
        raise UserError(
            "the launch asks for DeepSpeed, which is not installed; pip install 'vqa-grpo[deepspeed]', "
            "or launch with configs/accelerate/fsdp.yaml"
        ) from None
    from deepspeed.accelerator import get_accelerator

    if get_accelerator().device_name() == "cpu":
        # On a CPU, DeepSpeed's communication back-end compiles its shared-memory all-reduce (the C++
        # extension deepspeed_shm_comm, ~65 CPU-s with the system compiler, again in every new
        # environment) when it starts. Only its inference engine's all-reduce uses it: ZeRO training
        # reduces through torch.distributed. Marked unavailable, it is not built.
        deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False


def gathered_state(model, is_main: bool) -> dict | None:
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


def gathered_moments(zero, params: list, groups: list[dict], is_main: bool) -> dict | None:
    """AdamW's state in 1-process layout on rank 0, gathered from the partitions of the ZeRO
    optimizer ``zero`` (a collective; None on the other ranks). ``params``, ``groups``: the
    optimizer's parameters and param_groups before DeepSpeed took it (DeepSpeed.prepare)."""
    from deepspeed.utils import safe_get_full_optimizer_state

    inner = zero.optimizer  # the torch AdamW stepping ZeRO's flat fp32 partitions
    steps = [s["step"] for s in inner.state.values() if "step" in s]  # one count for all: none before the first step
    state = {}
    for i, p in enumerate(params if steps else []):
        moments = {k: safe_get_full_optimizer_state(p, k) for k in ADAM_MOMENTS}
        if is_main:
            state[i] = {
                "step": steps[0].detach().cpu().clone(),
                **{k: v.detach().cpu().clone() for k, v in moments.items()},
            }
    if not is_main:
        return None
    live_groups = [
        {**g, **{k: v for k, v in live.items() if k != "params"}} for g, live in zip(groups, inner.param_groups)
    ]
    return {"state": state, "param_groups": live_groups}


def load_moments(zero, params: list, resumed: dict[int, dict]) -> None:
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
    if hasattr(
        zero, "_lazy_init_hp_params_optimizer_state"
    ):  # ZeRO-2: link each parameter to its fragment (DeepSpeed does this at its first step)
        zero._lazy_init_hp_params_optimizer_state()
    for i, p in enumerate(params):
        for k in ADAM_MOMENTS:
            safe_set_full_optimizer_state(p, resumed[i][k].to(p.device), k)
