"""Choosing a GRPO run's forward plan (models/plan.py), once, from the settings, the family's
adapter and the model: the shared prefix wherever the family has a position rule, and the fused
prefill wherever it is exact.

The fused prefill shares one pass of the prompts between sampling and the loss. That is exact only
when the loss's policy is the sampling one in the same mode: pi_old = pi_theta
(``num_iterations`` = 1), no dropout, and the transformers sampler. It holds the prompts'
activations during sampling, so it is kept to one micro-batch per step, and to one process
(DDP's hooks need every pass inside its wrapper).
"""

from __future__ import annotations

import logging
from typing import Callable

import torch

from vqa_grpo.config import GRPOConfig
from vqa_grpo.errors import UserError
from vqa_grpo.models.plan import ForwardPlan, shared_prefix_reason
from vqa_grpo.models.prefix import checkpointing_on
from vqa_grpo.models.processors import plain_only_settings
from vqa_grpo.models.static_decode import sliding_windows

log = logging.getLogger("vqa_grpo.prefix")
_logged: set[str] = set()


def has_active_dropout(model) -> bool:
    """True when a forward pass in training mode could drop anything: a dropout module with p > 0,
    or a module attribute naming a drop probability (``attention_dropout``, ``dropout``,
    ``attn_pdrop``, ``layerdrop``, ``drop_prob``, ...) that is a positive float. It may refuse for a
    tower that never runs (e.g. an audio encoder's dropout); it does not miss these forms."""
    for m in model.modules():
        if isinstance(m, torch.nn.modules.dropout._DropoutNd) and m.p > 0:
            return True
        for name, value in vars(m).items():
            if "drop" in name and isinstance(value, float) and not isinstance(value, bool) and value > 0:
                return True
    return False


def fused_prefill_reason(model, adapter, grpo: GRPOConfig, *, processes: int = 1, accumulation: int = 1) -> str | None:
    """Why the prompts' pass cannot be shared by sampling and the loss (None: it can)."""
    checks = [
        (grpo.fuse_prefill == "off", "grpo.fuse_prefill=off"),
        (shared_prefix_reason(adapter, grpo.shared_prefix) is not None, "no shared prefix"),
        (checkpointing_on(model), "gradient checkpointing drops the KV cache"),
        (
            bool(plain_only_settings(model.generation_config, True)),
            "the generation config needs transformers' generate",
        ),
        (grpo.loss_type == "seed_report", "the seed report's loss has no completion pass"),
        (grpo.num_iterations > 1, "grpo.num_iterations > 1"),
        (grpo.dynamic_sampling, "dynamic sampling re-packs the groups"),
        (bool(grpo.augment), "augmented rollouts sample on other images (grpo/augment.py)"),
        (grpo.generation_backend != "transformers", "vLLM samples"),
        (processes > 1, "several processes"),
        (accumulation > 1, "gradient accumulation"),
        (has_active_dropout(model), "dropout is active"),
    ]
    return next((why for failed, why in checks if failed), None)


def _decode(model, grpo: GRPOConfig, sampling: str, any_rank) -> tuple[str, str | None]:
    """The sampler's decode (models/static_decode.py) for ``grpo.static_decode``, and why it is not
    static where one would expect it (None where off, or auto on the CPU, leaves it dynamic)."""
    cuda = next(model.parameters()).device.type == "cuda"
    if grpo.static_decode == "off" or (grpo.static_decode == "auto" and not cuda):
        return "dynamic", None
    checks = [
        (sampling != "shared prefix", "no shared-prefix sampler"),
        (any_rank is not None, "synced decoding under sharded weights"),
    ]
    why = next((why for failed, why in checks if failed), None)
    if grpo.static_decode == "on" and why is not None:
        raise UserError(f"grpo.static_decode=on cannot run: {why}; set grpo.static_decode=auto or off")
    if why is not None:
        return "dynamic", why
    if not cuda:
        return "static", None
    if sliding_windows(model):  # their static layers keep a Python counter: no replayable step
        return "static", "sliding-window cache layers are decoded without CUDA graphs"
    return "static, CUDA graphs", None


def choose_plan(
    model,
    adapter,
    grpo: GRPOConfig,
    *,
    processes: int = 1,
    accumulation: int = 1,
    any_rank: Callable[[bool], bool] | None = None,
) -> ForwardPlan:
    """The run's plan; ``any_rank`` is the back-end's synced-decoding collective (None unless the
    weights are sharded). Logged once per distinct plan on the ``vqa_grpo.prefix`` logger."""
    off = shared_prefix_reason(adapter, grpo.shared_prefix)
    if off is not None:
        _decode(model, grpo, "plain", any_rank)  # grpo.static_decode=on without a shared prefix: one line
        plan = ForwardPlan(any_rank=any_rank, reason=off, logprob_chunk_size=grpo.logprob_chunk_size)
    else:
        blocked = plain_only_settings(model.generation_config, True)
        fused_off = fused_prefill_reason(model, adapter, grpo, processes=processes, accumulation=accumulation)
        if checkpointing_on(model):
            loss = "plain"
        else:
            loss = "fused prefill" if fused_off is None else "shared prefix"
        sampling = "vLLM" if grpo.generation_backend == "vllm" else "plain" if blocked else "shared prefix"
        decode, static_off = _decode(model, grpo, sampling, any_rank)
        plan = ForwardPlan(
            sampling=sampling,
            decode=decode,
            loss=loss,
            position_rule=adapter.position_rule,
            any_rank=any_rank,
            logprob_chunk_size=grpo.logprob_chunk_size,
            reason=", ".join(
                [f"{adapter.name} adapter, {adapter.position_rule} positions"]
                + ([f"the generation config sets {', '.join(blocked)}"] if blocked else [])
                + ([f"no fused prefill: {fused_off}"] if fused_off else [])
                + ([f"{decode} decode: {static_off}"] if static_off else [])
            ),
        )
    message = f"GRPO forward plan: {plan.describe()}"
    if message not in _logged:
        _logged.add(message)
        log.info(message)
    return plan
