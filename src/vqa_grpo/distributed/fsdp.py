"""FSDP2 (configs/accelerate/fsdp.yaml): PyTorch's ``fully_shard`` applied by :meth:`FSDP2.shard`, one
unit per decoder/vision layer and one for the rest, so each rank keeps 1/world of every weight,
gradient and AdamW moment. The settings come from the ``FSDP_*`` variables accelerate's launcher
exports (launch.py); accelerate itself is told not to wrap (its FSDP never turns on for a CPU, and
this way the CPU test runs the GPU code path). Every forward pass is a collective, so the ranks
decode in step (``Dist.synced_decoding``) and checkpoints gather full state dicts."""

from __future__ import annotations

import contextlib

import torch
from torch.distributed.device_mesh import init_device_mesh

from vqa_grpo.distributed.dist import Dist
from vqa_grpo.distributed.helpers import (
    broadcast_from_rank0,
    is_peft,
    load_full_model_state,
    load_full_optimizer_state,
    optimizer_names,
    parameter_counts,
    sharding_root,
    step_if_finite,
    wrap_targets,
)
from vqa_grpo.distributed.launch import FSDPSettings


class FSDP2(Dist):
    """Each rank holds 1/world of the model from :meth:`shard` on; checkpoints go in and out as full
    state dicts (the files of a 1-process run)."""

    sharded_forward = True

    def __init__(self, settings: FSDPSettings, acc=None):
        super().__init__(acc)
        self.settings = settings

    def shard(self, model, reshard_root: bool = False, frozen: bool = False):
        """``model`` sharded in place (each wrap-class module its own unit, innermost first, then the
        rest as the root unit) after rank 0's weights are broadcast, as DDP does (LoRA's random A
        differs between ranks seeded apart). Build the optimizer after this: sharding replaces the
        parameters. ``reshard_root``: free the root unit's gathered weights after each forward too
        (a forward-only model, like the KL reference, would otherwise keep them gathered)."""
        # here and below: torch.distributed.fsdp takes 0.8 s to import, and every run imports this module
        from torch.distributed.fsdp import CPUOffloadPolicy, OffloadPolicy, fully_shard

        device = self.acc.device.type
        mesh = init_device_mesh(device, (self.acc.num_processes,))
        offload = CPUOffloadPolicy(pin_memory=device == "cuda") if self.settings.offload_params else OffloadPolicy()
        kwargs = dict(mesh=mesh, reshard_after_forward=self.settings.reshard_after_forward, offload_policy=offload)
        broadcast_from_rank0(model)
        root = sharding_root(model)
        for layer in reversed(wrap_targets(root, self.settings.wrap_classes) if self.settings.wrap_layers else []):
            fully_shard(layer, **kwargs)  # innermost first: a unit owns the parameters no inner unit took
        # The root unit keeps its weights gathered from forward to backward (FSDP2's own default for
        # the root: backward needs them at once), and through a decoding block.
        fully_shard(root, **{**kwargs, "reshard_after_forward": reshard_root})
        # FSDP makes the unit that runs forward first the root. transformers' generate may call the
        # image encoder before the model's forward (decoding), so fix the root now (torch has no
        # public call for this).
        root._get_fsdp_state()._lazy_init()
        return model

    def no_sync(self, model, sync: bool):
        """No reduce-scatter until ``sync``: the skipped micro-batches' gradients accumulate unsharded."""
        return contextlib.nullcontext() if sync else _gradient_sync_off(sharding_root(model))

    def step(self, model, optimizer, max_norm: float) -> float:
        return step_if_finite(self._clip_grad_norm(model, max_norm), optimizer)

    def _clip_grad_norm(self, model, max_norm: float) -> float:
        """The norm of the DTensor gradients (a collective), clipped to ``max_norm`` when > 0."""
        params = [p for p in model.parameters() if p.grad is not None]
        if not params:
            return 0.0
        norm = torch.nn.utils.clip_grad_norm_(params, max_norm if max_norm > 0 else float("inf"))
        return float(norm.full_tensor() if hasattr(norm, "full_tensor") else norm)

    def decoding(self, model):
        """The root unit gathered throughout decoding: transformers' ``generate`` runs a multimodal
        model's image encoder outside the model's forward, where FSDP would not gather the weights
        the root unit holds."""
        return _gathered(sharding_root(model))

    def model_state(self, model) -> dict | None:
        """The full state dict in CPU memory on rank 0 (None on the others), a LoRA run's trainable
        (adapter) weights only, tied weights once (as save_pretrained writes a live model)."""
        # here and below: torch.distributed.checkpoint takes 0.5 s to import, for a sharded run's saves only
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        options = StateDictOptions(full_state_dict=True, cpu_offload=True, ignore_frozen_params=is_peft(model))
        state = get_model_state_dict(model, options=options)
        if not self.is_main:
            return None
        first = {n for n, _ in model.named_parameters()}
        tied = {n for n, _ in model.named_parameters(remove_duplicate=False)} - first  # lm_head tied to embeddings
        return {k: v for k, v in state.items() if k not in tied}

    def optimizer_state(self, model, optimizer) -> dict | None:
        """The full optimizer state on rank 0 in ``optimizer.state_dict()``'s layout of a 1-process
        run (parameters numbered in the optimizer's order), None on the others."""
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

        options = StateDictOptions(full_state_dict=True, cpu_offload=True)
        state = get_optimizer_state_dict(model, optimizer, options=options)
        if not self.is_main:
            return None
        index = {name: i for i, name in enumerate(optimizer_names(model, optimizer))}
        return {
            "state": {index[k]: v for k, v in state["state"].items()},
            "param_groups": [{**g, "params": [index[k] for k in g["params"]]} for g in state["param_groups"]],
        }

    def load_model_state(self, model, state: dict, strict: bool = True) -> None:
        """Every rank reads the full ``state`` and keeps its shard of it."""
        load_full_model_state(model, state, strict)

    def load_adapter_state(self, model, weights: dict) -> None:
        """The adapter's ``weights`` matched to the live (sharded) parameter names, each rank keeping its shard."""
        from peft import get_peft_model_state_dict  # here: seconds to import, for LoRA runs only

        # PEFT saves the adapter's weights under names without the adapter's name; match them to the
        # live names through the tensors PEFT picks from the live state dict.
        live = model.state_dict()
        saved_name = {id(t): k for k, t in get_peft_model_state_dict(model, state_dict=live).items()}
        full = {k: weights[saved_name[id(t)]] for k, t in live.items() if id(t) in saved_name}
        load_full_model_state(model, full, strict=False)

    def load_optimizer_state(self, model, optimizer, state: dict) -> None:
        load_full_optimizer_state(model, optimizer, state)

    def describe(self, model=None) -> str:
        text = f"{self.acc.num_processes} processes, FSDP2 on {self.acc.device.type}"
        if model is not None:
            from torch.distributed.fsdp import FSDPModule

            local, full = parameter_counts(model)
            units = sum(isinstance(m, FSDPModule) for m in model.modules())
            text += f", {units} sharded units, {local:,} of {full:,} parameters on this process"
        return text


@contextlib.contextmanager
def _gathered(root):
    root.unshard()
    try:
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
