"""The shared prefix: each prompt and its image run once per group, its KV cache expanded to the
group's rows, for sampling (models/generation.py) and the log-prob passes (models/scoring.py).

All G completions of a group share one prompt of P tokens (image tokens included). The plain
path repeats the prompt G times, so a group costs G*(P+C) token positions when sampling and again
in the loss's forward and backward passes. Here the prompt runs once, its key/value cache is
repeated to the G rows (``DynamicCache.batch_repeat_interleave``), and only the completion tokens
run per row: P + G*C positions. Each completion token still attends to its row's P cached keys.

With gradients on, the repeat is part of the autograd graph, so the G rows' gradients sum back
into the one prefix (vision tower included). Log-probs and gradients equal the plain path's up to
float rounding (tests/models/test_prefix.py).

Positions must continue the prompt's as the model's own forward computes them. Each family's rule
is on its adapter (``FamilyAdapter.position_rule``) and reaches these functions through the run's
forward plan (models/plan.py), so ``model.family`` decides it too:

- "mrope", Qwen2-VL and Qwen2.5-VL: the model's ``get_rope_index`` gives the prompt's 3-D
  positions; completion token t is at the last prompt token's position + 1 + t on all three
  axes, as the full forward over prompt and completion (the loss's plain path) numbers text
  after the prompt. transformers' ``generate`` continues at the largest prompt position + 1
  instead (its ``rope_deltas``): the same for images, but past the text's for a clip whose
  temporal positions (frames apart x tokens_per_second) outrun it, e.g. 8 frames at 0.5 fps.
  Sampling and scoring here both follow the full forward, so a completion is scored at the
  positions it was sampled at. Positions are always passed explicitly, never left to the
  model's cached ``rope_deltas``.
- "linear", the 1-D families (LLaVA, Idefics3/SmolVLM, Gemma 3, Phi-3/Phi-4): positions count real
  tokens only (left padding skipped), prompt and completion alike, as ``generate`` numbers them.
  (The plain forward pass counts the padding too; with rotary positions only the distance between
  tokens matters, so the two agree. Gemma 3's image tokens attend to each other inside the prompt,
  which runs whole.)

Every other family, and any model whose cache would be dropped (gradient checkpointing while
training), takes the plain path; the plan says which path runs, once, on the ``vqa_grpo.prefix``
logger.

Shapes: B prompts (P tokens, left-padded), G completions each, R = B*G rows (group after group),
T tokens after the prefix, C completion tokens, V vocabulary.
"""

from __future__ import annotations

import copy
import functools
import inspect
import logging
from dataclasses import dataclass
from typing import Callable

import torch
from transformers.cache_utils import DynamicLayer, DynamicSlidingWindowLayer

from vqa_grpo.models.adapters import PromptBatch, unwrap_ddp

log = logging.getLogger("vqa_grpo.prefix")

_logged: set[str] = set()


def keep_decoding(running: torch.Tensor, any_rank: Callable[[bool], bool] | None = None) -> tuple[bool, bool]:
    """(a row here is still running, take another decode step): with ``any_rank`` (synced decoding
    under sharded weights, ForwardPlan.any_rank) the step is taken while a row runs on any rank."""
    here = bool(running.any())
    return here, (here if any_rank is None else any_rank(here))


def log_once(message: str) -> None:
    """Log ``message`` on the ``vqa_grpo.prefix`` logger, the first time only."""
    if message not in _logged:
        _logged.add(message)
        log.info(message)


def checkpointing_on(model) -> bool:
    """Whether gradient (activation) checkpointing is switched on, whatever the mode."""
    model = unwrap_ddp(model)
    base = model.get_base_model() if hasattr(model, "get_base_model") else model  # under a PEFT wrapper
    flag = getattr(base, "is_activation_checkpointing", None)  # transformers 5's name
    if flag is None:
        flag = getattr(base, "is_gradient_checkpointing", False)
    return bool(flag)


def cache_is_dropped(model) -> bool:
    """True when a forward pass now would drop the KV cache: gradient checkpointing while training
    with gradients on (transformers then replays layers without a cache)."""
    return model.training and torch.is_grad_enabled() and checkpointing_on(model)


# ----------------------------------------------------------------------------------------------
# Positions


def _rope_model(model):
    """The module that owns ``get_rope_index`` (under a PEFT wrapper too)."""
    model = unwrap_ddp(model)
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    inner = getattr(base, "model", base)
    if not hasattr(inner, "get_rope_index"):
        raise RuntimeError(f"{type(base).__name__} has no get_rope_index: cannot continue its M-RoPE positions")
    return inner


def prompt_positions(model, prompts: PromptBatch, rule: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Positions of the prompt tokens under the position ``rule`` ("mrope" or "linear"), as the
    model's forward would compute them, and the position of each prompt's first completion token.

    Returns ``position_ids`` ([3, B, P] for M-RoPE, [B, P] otherwise) and ``next_position`` [B].
    """
    mask = prompts.attention_mask
    n_real = mask.sum(dim=1)  # [B]
    if rule == "mrope":
        inner = _rope_model(model)
        accepted = inspect.signature(inner.get_rope_index).parameters
        extra = {k: v for k, v in prompts.extra.items() if k in accepted}
        position_ids, _ = inner.get_rope_index(prompts.input_ids, attention_mask=mask, **extra)
        # The last prompt token (left padding: the last column) is text, equal on the three axes;
        # the full forward numbers the text after it from there (not from rope_deltas' maximum).
        return position_ids, position_ids[0, :, -1].to(n_real.device) + 1
    position_ids = (mask.long().cumsum(dim=1) - 1).clamp(min=0)  # [B, P] padding at 0
    return position_ids, n_real


def continuation_positions(rule: str, start: torch.Tensor, length: int) -> torch.Tensor:
    """Positions of ``length`` tokens after the prefix: start [R] + 0..length-1 ([3, R, C] or [R, C])."""
    pos = start[:, None] + torch.arange(length, device=start.device)[None, :]  # [R, C]
    if rule == "mrope":
        return pos.unsqueeze(0).expand(3, -1, -1)
    return pos


# ----------------------------------------------------------------------------------------------
# The prefix and what runs after it


@dataclass
class Prefix:
    """A prompt batch run once and expanded to its G rows; the cache grows as tokens are added."""

    cache: object  # transformers DynamicCache, R rows, P (+ tokens added since) positions
    last_logits: torch.Tensor  # [R, V] logits at the last prompt position: they predict completion token 0
    attention_mask: torch.Tensor  # [R, P + tokens added since]
    next_position: torch.Tensor  # [R] position of the next token to add
    position_rule: str  # the adapter's ("mrope" or "linear")

    def extend(
        self, model, ids: torch.Tensor, mask: torch.Tensor | None = None, *, logits_to_keep: int = 0
    ) -> torch.Tensor:
        """Run ``ids`` [R, C] after everything cached so far; returns their logits [R, C, V]
        (only the last ``logits_to_keep`` when > 0). ``mask`` [R, C] marks real tokens (default all)."""
        R, T = ids.shape
        mask = torch.ones_like(ids) if mask is None else mask
        self.attention_mask = torch.cat([self.attention_mask, mask.to(self.attention_mask.dtype)], dim=1)
        cached = int(self.cache.get_seq_length())  # a static layer's is a tensor the forward grows in place
        out = model(
            input_ids=ids,
            attention_mask=self.attention_mask,
            position_ids=continuation_positions(self.position_rule, self.next_position, T),
            use_cache=True,
            logits_to_keep=logits_to_keep,
            **{cache_argument(model): self.cache},
        )
        grown = int(self.cache.get_seq_length())
        if grown != cached + T:  # a forward that took the cache under another name
            raise RuntimeError(  # ran without it: every log-prob after the prompt would be wrong
                f"{type(unwrap_ddp(model)).__name__} did not extend the KV cache it was given "
                f"({cached} -> {grown} positions, expected {cached + T}): "
                "use grpo.shared_prefix=off"
            )
        self.next_position = self.next_position + T
        return out.logits


def sampling_copy(prefix: Prefix) -> Prefix:
    """The same prefix without its autograd history, for sampling: the copy's cache grows as tokens
    are sampled while ``prefix`` (the one the loss will extend) stays as it is. The dynamic cache
    layers only rebind their tensors when they grow (``torch.cat``, slicing), never write into
    them; a cache of another kind is refused (see ``copyable_cache``)."""
    if not copyable_cache(prefix.cache):
        raise RuntimeError(f"cannot copy a {type(prefix.cache).__name__} for sampling: use grpo.fuse_prefill=off")
    cache = copy.copy(prefix.cache)
    cache.layers = [_detached_layer(layer) for layer in prefix.cache.layers]
    return Prefix(
        cache, prefix.last_logits.detach().clone(), prefix.attention_mask, prefix.next_position, prefix.position_rule
    )


def copyable_cache(cache) -> bool:
    """True for caches whose layers are all transformers' dynamic (full or sliding-window) layers."""
    layers = getattr(cache, "layers", None)
    return bool(layers) and all(type(layer) in (DynamicLayer, DynamicSlidingWindowLayer) for layer in layers)


def _detached_layer(layer):
    new = copy.copy(layer)
    for name, value in vars(layer).items():
        if isinstance(value, torch.Tensor):
            setattr(new, name, value.detach())
    return new


def cache_argument(model) -> str:
    """The name under which the model's forward takes a KV cache: ``cache`` (transformers >= 5.20)
    or ``past_key_values`` (earlier, and remote code). Passing the wrong one is not an error: the
    model would silently run without the cache, so it is read from the forward's signature."""
    model = unwrap_ddp(model)
    base = model.get_base_model() if hasattr(model, "get_base_model") else model  # under a PEFT wrapper
    return _cache_argument(type(base))


@functools.cache
def _cache_argument(cls) -> str:
    params = inspect.signature(cls.forward).parameters
    if "cache" in params:
        return "cache"
    if "past_key_values" in params:
        return "past_key_values"
    raise RuntimeError(
        f"{cls.__name__}.forward takes no KV cache (neither cache nor past_key_values): use grpo.shared_prefix=off"
    )


def output_cache(out):
    """The KV cache a forward pass returned: ``out.cache`` (transformers >= 5.20), else ``out.past_key_values``."""
    cache = getattr(out, "cache", None)
    return cache if cache is not None else getattr(out, "past_key_values", None)


def encode_prefix(model, prompts: PromptBatch, group_size: int, position_rule: str) -> Prefix:
    """Run the B prompts (with their images) once and repeat the cache and last logits G times;
    ``position_rule``: the adapter's.

    Under autograd the repeat is differentiable: the G rows' gradients sum into the one prefix.
    """
    if cache_is_dropped(model):
        raise RuntimeError("gradient checkpointing drops the KV cache in training: use the plain path")
    position_ids, next_position = prompt_positions(model, prompts, position_rule)
    out = model(**prompts.model_inputs(), position_ids=position_ids, use_cache=True, logits_to_keep=1)
    cache = output_cache(out)
    P = prompts.input_ids.shape[1]
    if cache is None or cache.get_seq_length() != P:  # never continue from a cache that is not the prompt's
        raise RuntimeError(
            f"the prompt's KV cache holds {None if cache is None else cache.get_seq_length()} positions, expected {P}"
        )
    if group_size > 1:
        cache.batch_repeat_interleave(group_size)
    return Prefix(
        cache=cache,
        last_logits=out.logits[:, -1].repeat_interleave(group_size, dim=0),
        attention_mask=prompts.attention_mask.repeat_interleave(group_size, dim=0),
        next_position=next_position.repeat_interleave(group_size, dim=0),
        position_rule=position_rule,
    )
