"""Log-probabilities of completion tokens given the prompt and image: the forward pass of SFT and GRPO,
on the forward plan's path (models/plan.py): the prompts repeated to every row (plain), or each
prompt run once and its KV cache expanded to its rows (the shared prefix, models/prefix.py).

The LM head runs on ``grpo.logprob_chunk_size`` positions at a time (``chunked_logprobs``), from
the last hidden states: the logits of all R x C positions ([R, C, V], 5 GB in float32 for G = 8 completions
of 1,024 tokens over Qwen2.5-VL's 151,936 words) never exist at once.

For position t of row r, z = head(h_t) / T_r in float32 (T_r: the row's sampling temperature),
log p(y_t) = z[y_t] - logsumexp(z) and the entropy H_t = logsumexp(z) - sum_v softmax(z)_v z_v
(nats, no gradient). The R*C positions go through the head ``chunk_size`` at a time and each
chunk's [chunk_size, V] logits are dropped before the next (one chunk of them all is kept for
backward, as autograd would). The backward pass needs them again:

- head frozen (LoRA, or only the hidden states need a gradient): while a chunk's logits exist,
  the forward pass also takes each position's gradient d log p(y_t) / d h_t ([R*C, H]; log p(y_t)
  depends on h_t alone), which backward scales by the incoming gradient: no second pass;
- head trained: backward runs each chunk through the head again and takes the gradients of its
  log-probs for the hidden states and the head's parameters (summed over the chunks).

Equal to the full logits' numbers up to float rounding (tests/models/test_chunked.py).

Shapes: B prompts, G completions each (``group_size``, 1 for SFT), R = B*G rows, P prompt tokens
(left-padded), C completion tokens (right-padded), H hidden size, V vocabulary, N = R*C positions.
"""

from __future__ import annotations

import contextlib
from typing import Callable

import torch

from vqa_grpo.models.adapters import FamilyAdapter, PromptBatch
from vqa_grpo.models.plan import ForwardPlan
from vqa_grpo.models.prefix import Prefix, encode_prefix

Head = Callable[[torch.Tensor], torch.Tensor]
"""The model's output head as a function: hidden states [n, H] -> logits [n, V]."""


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
    a time (``chunked_logprobs``): the [R, C, V] logits never exist.
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


@torch.no_grad()
def tempered_and_raw_logprobs(
    model,
    adapter: FamilyAdapter,
    prompts: PromptBatch,
    completion_ids: torch.Tensor,
    completion_mask: torch.Tensor,
    plan: ForwardPlan,
    temperatures: torch.Tensor,
    *,
    group_size: int = 1,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Without gradient, from one forward pass: the completion's log-probs [R, C] at the rows'
    ``temperatures`` and at temperature 1 (vLLM's pi_old and the raw log-probs of its importance
    weights), each as :func:`completion_logprobs` computes it, ``plan.logprob_chunk_size`` positions
    at a time, so the [R, C, V] logits never exist."""
    head, fn = adapter.output_head(model)

    def rest(hidden: torch.Tensor):  # [R, T, H] -> the last T tokens' (tempered, raw) log-probs [R, T]
        ids = completion_ids[:, completion_ids.shape[1] - hidden.shape[1] :]
        size = plan.logprob_chunk_size
        return tuple(chunked_logprobs(hidden, fn, ids, t, chunk_size=size)[0] for t in (temperatures, None))

    first, others = _through_head(
        model, adapter, head, rest, prompts, completion_ids, completion_mask, plan, group_size, None
    )
    parts = [] if others is None else [others]
    if first is not None:  # token 0, from the prefix's logits [R, 1, V]
        parts.insert(0, tuple(token_logprobs(first, completion_ids[:, :1], t) for t in (temperatures, None)))
    return torch.cat([p[0] for p in parts], dim=1), torch.cat([p[1] for p in parts], dim=1)


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


@contextlib.contextmanager
def head_inputs(head: torch.nn.Module, compute: Callable[[torch.Tensor], object] = lambda hidden: hidden):
    """Within it, a forward pass of the model hands ``head`` (its LM head module) no positions, so
    its logits come out [R, 0, V], and ``compute(hidden)`` of the hidden states it would have
    turned into logits ([R, T, H], with their autograd history) is appended to the yielded list.
    ``compute`` runs inside the model's forward, where sharded weights (FSDP, ZeRO-3) are gathered;
    its own calls of ``head`` pass through."""
    seen: list = []
    inside = False

    def take(module, args):
        nonlocal inside
        if inside:
            return None
        inside = True
        try:
            seen.append(compute(args[0]))
        finally:
            inside = False
        return (args[0][..., :0, :], *args[1:])

    handle = head.register_forward_pre_hook(take)
    try:
        yield seen
    finally:
        handle.remove()


def chunked_logprobs(
    hidden: torch.Tensor,
    head: Head,
    ids: torch.Tensor,
    temperatures: torch.Tensor | None = None,
    *,
    chunk_size: int,
    with_entropy: bool = False,
    params: tuple[torch.nn.Parameter, ...] = (),
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """log p(ids) [R, C] in float32 (with gradient) and, with ``with_entropy``, the entropy [R, C]
    (without), from ``hidden`` [R, C, H] through ``head``, ``chunk_size`` positions at a time.

    ``temperatures`` [R]: row r's logits are divided by its temperature (in float32). ``params``:
    the head's parameters, so that those which require grad receive it. When all R*C positions fit
    in one chunk, autograd keeps that chunk's logits for the backward pass (no second pass through
    the head): a chunk size of at least R*C is the full logits' memory and time.
    """
    R, C, H = hidden.shape
    temps = None if temperatures is None else temperatures.float()[:, None].expand(R, C).reshape(-1)
    flat, ids = hidden.reshape(R * C, H), ids.reshape(-1)
    if R * C <= chunk_size:
        z, lse, logp = _chunk_logprobs(head(flat), ids, temps)
        with torch.no_grad():
            entropy = lse - torch.softmax(z, dim=-1).mul_(z).sum(-1) if with_entropy else None
    else:
        trained = tuple(p for p in params if p.requires_grad)
        logp, entropy = _Chunked.apply(flat, head, ids, temps, chunk_size, with_entropy, *trained)
    return logp.view(R, C), entropy.view(R, C) if with_entropy else None


def _chunk_logprobs(logits: torch.Tensor, ids: torch.Tensor, temps: torch.Tensor | None):
    """From one chunk's logits [n, V]: the scaled float32 logits, their logsumexp [n] and the ids' log-probs [n]."""
    z = logits.float()
    if temps is not None:  # in place where .float() made a copy: one [n, V] float buffer fewer
        z = z / temps[:, None] if z is logits else z.div_(temps[:, None])
    lse = torch.logsumexp(z, dim=-1)
    return z, lse, z.gather(-1, ids[:, None]).squeeze(-1) - lse


def _logit_grads(z, lse, ids, temps, g) -> torch.Tensor:
    """d (g . log p(ids)) / d logits = g (onehot(ids) - softmax(z)) / T, [n, V] float32, in z's
    buffer (z is consumed): the backward pass of :func:`_chunk_logprobs` without autograd's buffers."""
    g = g.float() if temps is None else g.float() / temps
    dz = z.sub_(lse[:, None]).exp_().mul_(-g[:, None])
    return dz.scatter_add_(1, ids[:, None], g[:, None])


class _Chunked(torch.autograd.Function):
    """The chunked pass with its own backward (see the module docstring). A ``torch.nn.Linear``
    head (the LM head of every family here) has its gradients written out (``_logit_grads``, then
    dz W and dz^T h, the latter added into the running sum in place); any other head goes through
    autograd on each chunk."""

    @staticmethod
    def forward(ctx, hidden, head, ids, temps, chunk_size, with_entropy, *params):
        N = hidden.shape[0]
        slope = ctx.needs_input_grad[0] and not params  # take d log p / d h now, while the logits exist
        linear = isinstance(head, torch.nn.Linear)
        logp = torch.empty(N, dtype=torch.float32, device=hidden.device)
        entropy = torch.empty(N if with_entropy else 0, dtype=torch.float32, device=hidden.device)
        slopes = torch.empty_like(hidden) if slope else None
        for s in range(0, N, chunk_size):
            e = min(s + chunk_size, N)
            t = None if temps is None else temps[s:e]
            with torch.enable_grad() if slope and not linear else contextlib.nullcontext():
                h = hidden[s:e].detach().requires_grad_(slope and not linear)
                z, lse, lp = _chunk_logprobs(head(h), ids[s:e], t)
                if slope and not linear:
                    (slopes[s:e],) = torch.autograd.grad(lp.sum(), h)  # rows are independent: one row's each
            logp[s:e] = lp.detach()
            z, lse = z.detach(), lse.detach()
            if with_entropy:
                entropy[s:e] = lse - torch.softmax(z, dim=-1).mul_(z).sum(-1)
            if slope and linear:
                slopes[s:e] = _logit_grads(z, lse, ids[s:e], t, torch.ones_like(lse)).to(h.dtype) @ head.weight
            del z, lse, lp
        ctx.mark_non_differentiable(entropy)
        ctx.head, ctx.chunk_size, ctx.slope, ctx.params = head, chunk_size, slope, params
        ctx.autocast = _autocast_state(hidden.device.type)
        ctx.save_for_backward(slopes if slope else hidden, ids, temps)
        return logp, entropy

    @staticmethod
    def backward(ctx, grad_logp, _grad_entropy):
        saved, ids, temps = ctx.saved_tensors
        n_params = len(ctx.needs_input_grad) - 6
        if ctx.slope:
            return saved * grad_logp[:, None].to(saved.dtype), None, None, None, None, None, *([None] * n_params)
        hidden, params, head = saved, list(ctx.params), ctx.head
        want_h = ctx.needs_input_grad[0]
        grad_h = torch.empty_like(hidden) if want_h else None
        grad_p: list[torch.Tensor | None] = [None] * len(params)
        linear = isinstance(head, torch.nn.Linear) and _whole(head.weight)  # else the module's call gathers it
        N = hidden.shape[0]
        for s in range(0, N, ctx.chunk_size):
            e = min(s + ctx.chunk_size, N)
            t, g = None if temps is None else temps[s:e], grad_logp[s:e]
            if linear:  # d/dh = dz W, d/dW = dz^T h (added into the sum in place), d/db = sum of dz
                with torch.autocast(**ctx.autocast):
                    z, lse, _ = _chunk_logprobs(head(hidden[s:e]), ids[s:e], t)
                    dz = _logit_grads(z, lse, ids[s:e], t, g).to(head.weight.dtype)  # [n, V]
                h = hidden[s:e].to(dz.dtype)
                if want_h:
                    grad_h[s:e] = dz @ head.weight
                for i, p in enumerate(params):
                    if p is head.weight:
                        grad_p[i] = dz.T @ h if grad_p[i] is None else grad_p[i].addmm_(dz.T, h)
                    else:
                        grad_p[i] = dz.sum(0) if grad_p[i] is None else grad_p[i].add_(dz.sum(0))
                continue
            with torch.enable_grad(), torch.autocast(**ctx.autocast):
                h = hidden[s:e].detach().requires_grad_(want_h)
                got = torch.autograd.grad(_chunk_logprobs(head(h), ids[s:e], t)[2], [h] * want_h + params, g)
            if want_h:
                grad_h[s:e], got = got[0], got[1:]
            for i, gp in enumerate(got):
                grad_p[i] = gp if grad_p[i] is None else grad_p[i].add_(gp)
        return grad_h, None, None, None, None, None, *grad_p


def _whole(weight: torch.Tensor) -> bool:
    """A weight held whole on this process: not an FSDP shard (a DTensor) nor a ZeRO-3 partition
    (empty outside its module's forward)."""
    return weight.numel() > 0 and not hasattr(weight, "full_tensor")


def _autocast_state(device_type: str) -> dict:
    """The autocast state of the forward pass, for the recomputation in backward."""
    return {
        "device_type": device_type,
        "dtype": torch.get_autocast_dtype(device_type),
        "enabled": torch.is_autocast_enabled(device_type),
    }
