"""Log-probabilities of completion tokens given the prompt and image: the forward pass of SFT and GRPO.

Shapes: B prompts, G completions each (``group_size``, 1 for SFT), R = B*G rows, P prompt tokens
(left-padded), C completion tokens (right-padded), V vocabulary.
"""

from __future__ import annotations

import torch

from vqa_grpo.models import prefix as shared
from vqa_grpo.models.adapters import FamilyAdapter, PromptBatch


def answer_tokens(tokenizer, answers: list[str], stop_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Ground-truth answers as completions: the answer's tokens then the stop token, right-padded.

    Returns ids [R, C] and mask [R, C].
    """
    rows = [tokenizer(a, add_special_tokens=False)["input_ids"] + [stop_id] for a in answers]
    width = max(len(r) for r in rows)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else stop_id
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = torch.tensor(r)
        mask[i, : len(r)] = 1
    return ids, mask


def completion_logits(
    model,
    adapter: FamilyAdapter,
    prompts: PromptBatch,
    completion_ids: torch.Tensor,
    completion_mask: torch.Tensor,
    *,
    group_size: int = 1,
    shared_prefix: bool = False,
    prefix=None,
) -> torch.Tensor:
    """Logits that predict each completion token: [R, C, V].

    ``prompts`` holds R / group_size prompts; row r's completion follows prompt r // group_size.
    Plain path: the prompts repeated to R rows, one forward pass over prompt + completion, only
    the last C+1 positions' logits computed (``logits_to_keep``). ``shared_prefix``: each prompt
    runs once and the completions run against its expanded KV cache (models/prefix.py); the
    result is the same up to float rounding. Gradient checkpointing in training drops the cache,
    so there the plain path runs. ``prefix``: the prompts' shared pass already run with gradient
    for sampling (the fused prefill, grpo/plan.py), extended here instead of run again.
    """
    rule = adapter.position_rule
    if prefix is not None:
        return shared.prefix_completion_logits(
            model, prompts, group_size, completion_ids, completion_mask, prefix, position_rule=rule
        )
    if shared_prefix and rule is None:
        raise RuntimeError(f"the {adapter.name} adapter has no shared-prefix position rule: use the plain path")
    if shared_prefix and shared.cache_is_dropped(model):  # a guard for direct callers (the plan already chose)
        shared._log_once("loss: plain path, gradient checkpointing drops the KV cache")
        shared_prefix = False
    if shared_prefix:
        return shared.prefix_completion_logits(
            model, prompts, group_size, completion_ids, completion_mask, position_rule=rule
        )
    if group_size > 1:
        prompts = adapter.repeat(prompts, group_size)
    full = adapter.append(prompts, completion_ids, completion_mask)
    C = completion_ids.shape[1]
    logits = adapter.forward_logits(model, full, C + 1)  # the family's forward (Phi-3-vision: no logits_to_keep)
    return logits[:, :-1, :]  # position P-1+t predicts completion token t


def token_logprobs(logits: torch.Tensor, ids: torch.Tensor, temperatures: torch.Tensor | None = None) -> torch.Tensor:
    """log softmax(logits / temperature)[ids]: [R, C, V] logits, [R, C] ids -> [R, C] in float32.

    With ``temperatures`` [R], row r's logits are divided by its temperature first. Computed as
    the gathered logit minus the logsumexp, so the [R, C, V] log-softmax is never built.
    """
    if temperatures is not None:
        logits = logits / temperatures.to(logits.dtype)[:, None, None]
    logits = logits.float()
    return logits.gather(-1, ids.unsqueeze(-1)).squeeze(-1) - torch.logsumexp(logits, dim=-1)


def token_entropy(logits: torch.Tensor, temperatures: torch.Tensor | None = None) -> torch.Tensor:
    """Entropy H = logsumexp(z) - sum_v softmax(z)_v z_v of each position, in nats, without grad: [R, C]."""
    with torch.no_grad():
        if temperatures is not None:
            logits = logits / temperatures.to(logits.dtype)[:, None, None]
        z = logits.detach().float()
        return torch.logsumexp(z, dim=-1) - (torch.softmax(z, dim=-1) * z).sum(-1)


def completion_logprobs(
    model,
    adapter: FamilyAdapter,
    prompts: PromptBatch,
    completion_ids: torch.Tensor,
    completion_mask: torch.Tensor,
    temperatures: torch.Tensor | None = None,
    *,
    with_entropy: bool = True,
    group_size: int = 1,
    shared_prefix: bool = False,
    prefix=None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Per-token log-probs [R, C] of the completion under the model, and the entropy [R, C]
    (None when ``with_entropy`` is false: SFT and the old/reference passes do not need it).

    With ``temperatures`` [R], row r's logits are divided by its sampling temperature first, so
    the log-probs are those of the distribution the row was sampled from (before top-p); see
    :func:`token_logprobs`. ``group_size``, ``shared_prefix`` and ``prefix`` are those of
    :func:`completion_logits`.
    """
    logits = completion_logits(
        model,
        adapter,
        prompts,
        completion_ids,
        completion_mask,
        group_size=group_size,
        shared_prefix=shared_prefix,
        prefix=prefix,
    )  # [R, C, V]
    logp = token_logprobs(logits, completion_ids, temperatures)
    return logp, token_entropy(logits, temperatures) if with_entropy else None
