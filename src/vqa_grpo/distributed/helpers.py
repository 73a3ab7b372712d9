"""What the back-ends share: the module FSDP2 shards as its root and its wrap units, PEFT and
parameter names, parameter counts, rank 0's weights broadcast to the others, and full (1-process)
checkpoint states loaded into a model or optimizer."""

from __future__ import annotations

import math

import torch
import torch.distributed as tdist

from vqa_grpo.errors import UserError


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
def broadcast_from_rank0(model) -> None:
    for t in [*model.parameters(), *model.buffers()]:
        tdist.broadcast(t.data, src=0)


def step_if_finite(norm: float, optimizer) -> float:
    """Step ``optimizer`` unless the gradients' global ``norm`` is non-finite, zero them, return ``norm``."""
    if math.isfinite(norm):
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return norm


def load_full_model_state(model, state: dict, strict: bool = True) -> None:
    """Copy the full ``state`` (the same on every rank) into ``model``: a sharded one keeps its shard."""
    # here and below: torch.distributed.checkpoint takes 0.5 s to import, for sharded runs only
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

    set_model_state_dict(model, state, options=StateDictOptions(full_state_dict=True, strict=strict))


def load_full_optimizer_state(model, optimizer, state: dict) -> None:
    """Load a full optimizer state in 1-process layout (parameters by index in the optimizer's order)
    into the optimizer over ``model``; every rank passes the same ``state``."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    names = optimizer_names(model, optimizer)
    by_name = {
        "state": {names[i]: v for i, v in state["state"].items()},
        "param_groups": [{**g, "params": [names[i] for i in g["params"]]} for g in state["param_groups"]],
    }
    set_optimizer_state_dict(model, optimizer, by_name, options=StateDictOptions(full_state_dict=True))


def load_optimizer_keeping_kind(optimizer: torch.optim.Optimizer, state: dict) -> None:
    """``optimizer.load_state_dict(state)``, then this optimizer's own kernel choice (``fused``,
    ``foreach``) back in every group: torch copies the saved groups' flags over, so a checkpoint of
    another kind (an older per-tensor AdamW, or a fused one where this device has no fused kernel)
    would silently change, or break, the kernel for the rest of the run."""
    kind = [{k: g.get(k) for k in ("fused", "foreach")} for g in optimizer.param_groups]
    optimizer.load_state_dict(state)
    for group, flags in zip(optimizer.param_groups, kind):
        group.update(flags)
