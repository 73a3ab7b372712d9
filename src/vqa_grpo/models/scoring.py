"""Log-probabilities of completion tokens given the prompt and image: the forward pass of SFT and GRPO,
on the forward plan's path (models/plan.py): the prompts repeated to every row (plain), or each
prompt run once and its KV cache expanded to its rows (the shared prefix, models/prefix.py).

Shapes: B prompts, G completions each (``group_size``, 1 for SFT), R = B*G rows, P prompt tokens
(left-padded), C completion tokens (right-padded), V vocabulary.
"""

from __future__ import annotations

import torch

from vqa_grpo.models.adapters import FamilyAdapter, PromptBatch
from vqa_grpo.models.chunked import chunked_logprobs, head_inputs
from vqa_grpo.models.plan import ForwardPlan
from vqa_grpo.models.prefix import Prefix, encode_prefix


def answer_ids(tokenizer, answers: list[str], stop_id: int) -> tuple[torch.Tensor, torch.Tensor]:
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
    plan: ForwardPlan,
    *,
    group_size: int = 1,
    prefix: Prefix | None = None,
) -> torch.Tensor:
    """Logits that predict each completion token: [R, C, V].

    ``prompts`` holds R / group_size prompts; row r's completion follows prompt r // group_size.
    Where ``plan`` shares the prefix for this pass (``ForwardPlan.shares_prefix_now``: with gradient
    the loss's path, without it the other log-prob passes'), each prompt runs once and the
    completions run against its expanded KV cache; else the prompts are repeated to R rows and one
    forward pass runs over prompt + completion, only the last C+1 positions' logits computed
    (``logits_to_keep``). The two agree up to float rounding. ``prefix``: the prompts' shared pass
    already run with gradient for sampling (the fused prefill, grpo/plan.py), extended here.
    """
    if prefix is not None or plan.shares_prefix_now():
        return _prefix_logits(model, prompts, group_size, completion_ids, completion_mask, plan, prefix)
    if group_size > 1:
        prompts = adapter.repeat(prompts, group_size)
    full = adapter.append(prompts, completion_ids, completion_mask)
    C = completion_ids.shape[1]
    logits = model(**full.model_inputs(), logits_to_keep=C + 1, use_cache=False).logits  # [R, C+1, V]
    return logits[:, :-1, :]  # position P-1+t predicts completion token t


def _prefix_logits(
    model,
    prompts: PromptBatch,
    group_size: int,
    completion_ids: torch.Tensor,
    completion_mask: torch.Tensor,
    plan: ForwardPlan,
    prefix: Prefix | None,
) -> torch.Tensor:
    """:func:`completion_logits` on the shared prefix, each of the B prompts run once (or
    ``prefix``, extended in place). Token 0 is predicted by the prompt's last position; tokens
    1..C-1 by completion tokens 0..C-2, which run against the expanded cache (the last completion
    token predicts nothing and is not run)."""
    prefix = encode_prefix(model, prompts, group_size, plan.position_rule) if prefix is None else prefix
    first = prefix.last_logits[:, None, :]  # [R, 1, V]
    C = completion_ids.shape[1]
    if C == 1:
        return first
    rest = prefix.extend(model, completion_ids[:, :-1], completion_mask[:, :-1])  # [R, C-1, V]
    return torch.cat([first, rest.to(first.dtype)], dim=1)


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
    plan: ForwardPlan,
    temperatures: torch.Tensor | None = None,
    *,
    with_entropy: bool = True,
    group_size: int = 1,
    prefix: Prefix | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Per-token log-probs [R, C] of the completion under the model, and the entropy [R, C]
    (None when ``with_entropy`` is false: SFT and the old/reference passes do not need it).

    With ``temperatures`` [R], row r's logits are divided by its sampling temperature first, so
    the log-probs are those of the distribution the row was sampled from (before top-p).
    ``plan``, ``group_size`` and ``prefix`` are those of :func:`completion_logits`, and the
    numbers are :func:`token_logprobs` and :func:`token_entropy` of its logits up to float
    rounding, but computed from the last hidden states ``plan.logprob_chunk_size`` positions at
    a time (models/chunked.py): the [R, C, V] logits never exist.
    """
    head, fn = adapter.output_head(model)

    def rest(hidden: torch.Tensor):  # [R, T, H] -> the last T tokens' log-probs and entropies [R, T]
        ids = completion_ids[:, completion_ids.shape[1] - hidden.shape[1] :]
        chunks = {"chunk_size": plan.logprob_chunk_size, "params": tuple(head.parameters())}
        return chunked_logprobs(hidden, fn, ids, temperatures, with_entropy=with_entropy, **chunks)

    first, others = _through_head(
        model, adapter, head, rest, prompts, completion_ids, completion_mask, plan, group_size, prefix
    )
    parts = [] if others is None else [others]
    if first is not None:  # token 0, from the prefix's logits [R, 1, V]
        entropy = token_entropy(first, temperatures) if with_entropy else None
        parts.insert(0, (token_logprobs(first, completion_ids[:, :1], temperatures), entropy))
    logp = torch.cat([p[0] for p in parts], dim=1)
    return logp, torch.cat([p[1] for p in parts], dim=1) if with_entropy else None


def _through_head(model, adapter, head, rest, prompts, completion_ids, completion_mask, plan, group_size, prefix):
    """:func:`completion_logits`'s passes with the LM head ``head`` handed no positions and ``rest``
    applied, inside the forward pass, to the last hidden states it would have had: (the logits
    [R, 1, V] that predict completion token 0 where the shared prefix has them, else None; ``rest``
    of the hidden states [R, T, H] that predict the other T tokens, None where there are none)."""
    C = completion_ids.shape[1]
    if prefix is not None or plan.shares_prefix_now():
        prefix = encode_prefix(model, prompts, group_size, plan.position_rule) if prefix is None else prefix
        if C == 1:
            return prefix.last_logits[:, None, :], None
        with head_inputs(head, rest) as seen:
            prefix.extend(model, completion_ids[:, :-1], completion_mask[:, :-1])
        return prefix.last_logits[:, None, :], seen[-1]  # hidden [R, C-1, H]: tokens 1..C-1
    if group_size > 1:
        prompts = adapter.repeat(prompts, group_size)
    full = adapter.append(prompts, completion_ids, completion_mask)
    with head_inputs(head, lambda hidden: rest(hidden[:, :-1])) as seen:  # P-1+t predicts token t
        model(**full.model_inputs(), logits_to_keep=C + 1, use_cache=False)
    return None, seen[-1]
