"""Log-probs and entropies of chosen tokens, a chunk of positions at a time, from the last hidden
states: the logits of all R x C positions ([R, C, V], 5 GB in float32 for G = 8 completions of
1,024 tokens over Qwen2.5-VL's 151,936 words) never exist at once.

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

Equal to the full logits' numbers up to float rounding (tests/models/test_chunked.py). Shapes: R
rows, C completion positions, H hidden size, V vocabulary, N = R*C.
"""

from __future__ import annotations

import contextlib
from typing import Callable

import torch

Head = Callable[[torch.Tensor], torch.Tensor]
"""The model's output head as a function: hidden states [n, H] -> logits [n, V]."""


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
