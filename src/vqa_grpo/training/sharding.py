"""What distributed.py's Dist needs around the back-ends: FSDP wrap units, DeepSpeed's checks,
gathered state dicts, rank-0 broadcast, synced decoding and parameter counts."""

from __future__ import annotations

import contextlib
from typing import Callable

import torch

from vqa_grpo.errors import UserError
from vqa_grpo.training.launch import DeepSpeedSettings


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
        raise UserError(
            f"fsdp_transformer_layer_cls_to_wrap={','.join(missing)}: no such module in {type(root).__name__}; "
            f"set it to its layer classes ({', '.join(layers)}) or remove the line to use the model's own"
        )
    return [m for m in root.modules() if type(m).__name__ in wanted and m is not root]


ADAM_MOMENTS = ("exp_avg", "exp_avg_sq")


def _require_deepspeed() -> None:
    try:
        import deepspeed  # noqa: F401
    except ImportError:
        raise UserError(
            "the launch asks for DeepSpeed, which is not installed; pip install 'vqa-grpo[deepspeed]', "
            "or launch with configs/accelerate/fsdp.yaml"
        ) from None


def _check_deepspeed(ds: DeepSpeedSettings, cfg) -> None:
    """The accelerate config's DeepSpeed numbers must be the run's (DeepSpeed steps with the run's)."""
    fix = "remove the line from the accelerate config's deepspeed_config (the run's value is used) or make them equal"
    t = cfg.train
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


def gathered_moments(zero, params: list, groups: list[dict], is_main: bool) -> dict | None:
    """AdamW's state in 1-process layout on rank 0, gathered from the partitions of the ZeRO
    optimizer ``zero`` (a collective; None on the other ranks). ``params``, ``groups``: the
    optimizer's parameters and param_groups before DeepSpeed took it (Dist.prepare)."""
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


def describe(dist, model=None) -> str:
    """Dist.describe: e.g. "2 processes, MULTI_CPU on cpu"; under FSDP with ``model``, its units and rank 0's share."""
    if dist.acc is None:
        return "1 process"
    if dist.ds is not None:
        text = f"{dist.world} processes, DeepSpeed ZeRO-{dist.ds.stage} on {dist.acc.device.type}"
        if model is not None:
            local, full = parameter_counts(model)
            text += f", {local:,} of {full:,} parameters on this process"
        return text
    if dist.fsdp is None:
        return f"{dist.world} processes, {dist.acc.distributed_type.value} on {dist.acc.device.type}"
    text = f"{dist.world} processes, FSDP2 on {dist.acc.device.type}"
    if model is not None:
        from torch.distributed.fsdp import FSDPModule

        local, full = parameter_counts(model)
        units = sum(isinstance(m, FSDPModule) for m in model.modules())
        text += f", {units} sharded units, {local:,} of {full:,} parameters on this process"
    return text
