"""Decoding from a shared prefix with a static KV cache, so that every decode step has the same
shapes and, on CUDA, runs as a replayed CUDA graph instead of hundreds of kernel launches.

The prefix's cache (R rows, P positions; models/prefix.py) is copied into a transformers
``StaticCache`` of L >= P + C positions (rounded up to ``BUCKET``), and the attention mask is one
[R, L] buffer whose position P + t is switched on at step t (later positions stay masked). A step then always takes
one token per row, a mask of the same length and a position tensor, and writes its keys and values
in place: with ``graphs`` it is compiled with ``torch.compile(mode="reduce-overhead")`` (CUDA
graphs), and the decoder is kept on the model for the next rollout of that shape, so its graphs are
recorded once. Rows that stop keep stepping on padding, as on the dynamic path; the only host sync
per step is the all-stopped check; the logits processors (per-row temperature and top-p included)
run outside the compiled step.

Exact where the dynamic path is: the same tokens, and logits within float rounding (masked cache
positions add exact zeros to the softmax); tests/models/test_static_decode.py checks every family
with a shared-prefix rule, greedy and sampled. Not taken under synced decoding (grpo/plan.py:
sharded weights make every step a collective), nor (``decoder_for`` returns None) where a
sliding-window layer's window is shorter than the prefix and its completion: the dynamic cache
then keeps only the window, which a static layer of that window would not reproduce. CUDA graphs
are not used for a model with sliding-window layers at all (their static layers count in Python).

Shapes: R rows, P prefix positions, C new tokens at most, V vocabulary.
"""

from __future__ import annotations

import torch
from transformers import StaticCache

from vqa_grpo.models.prefix import Prefix, cache_argument, continuation_positions

BUCKET = 64
"""The static cache's length is P + C rounded up to a multiple of this, so that rollouts whose
prompts differ a little in length share one decoder (and, on CUDA, its recorded graphs)."""


def sliding_windows(model) -> list[int]:
    """The sliding-window length of each of the model's sliding text layers (empty when it has none);
    read once per model."""
    if "_vqa_grpo_sliding_windows" not in model.__dict__:
        window = int(getattr(model.config.get_text_config(), "sliding_window", 0) or 0)
        probe = StaticCache(config=model.config, max_cache_len=1)  # nothing is allocated before a first update
        sliding = [window for layer in probe.layers if getattr(layer, "is_sliding", False)]
        model.__dict__["_vqa_grpo_sliding_windows"] = sliding
    return model.__dict__["_vqa_grpo_sliding_windows"]


def decoder_for(model, prefix: Prefix, max_new_tokens: int, *, graphs: bool = False) -> StaticDecoder | None:
    """A decoder loaded with ``prefix``: the model's decoder for R rows, grown when this prefix and
    its completion need more positions (one is kept on the model, so its buffers and graphs serve
    the next rollouts). None where a sliding window is shorter than the prefix and its completion."""
    R, P = prefix.attention_mask.shape
    windows = sliding_windows(model)
    if windows and min(windows) < P + max_new_tokens:
        return None
    length = -(-(P + max_new_tokens) // BUCKET) * BUCKET
    key = (R, graphs and not windows, prefix.last_logits.dtype)
    decoders = model.__dict__.setdefault("_vqa_grpo_static_decoders", {})
    if key not in decoders or decoders[key].length < length:
        decoders[key] = StaticDecoder(model, R, length, prefix.position_rule, graphs=key[1])
    decoder = decoders[key]
    decoder.load(prefix)
    return decoder


class StaticDecoder:
    """Decode steps on a static cache of ``length`` positions for R rows; :meth:`load` puts a prefix in."""

    def __init__(self, model, rows: int, length: int, position_rule: str, *, graphs: bool = False):
        self.model, self.rule, self.graphs, self.length = model, position_rule, graphs, length
        self.cache = StaticCache(config=model.config, max_cache_len=length)
        device = next(model.parameters()).device
        self.mask = torch.zeros(rows, length, dtype=torch.long, device=device)
        self.next_position = torch.zeros(rows, dtype=torch.long, device=device)
        self.step_index = torch.zeros((), dtype=torch.long, device=device)
        self.start = torch.zeros((), dtype=torch.long, device=device)  # P, the first completion slot
        self._argument = cache_argument(model)
        self._step = self._eager_step
        if graphs:  # the step's own buffers are written in place: fixed addresses, so the graphs may replay
            for t in (self.mask, self.next_position, self.step_index, self.start):
                torch._dynamo.mark_static_address(t)
            self._step = torch.compile(self._eager_step, mode="reduce-overhead", dynamic=False)

    def load(self, prefix: Prefix) -> None:
        """Put ``prefix`` (R rows, P positions) in, in place: the cache's positions 0..P-1, the mask, the positions."""
        P = prefix.attention_mask.shape[1]
        self.cache.reset()
        for layer, src in zip(self.cache.layers, prefix.cache.layers, strict=True):
            layer.update(src.keys, src.values)  # allocates the layer the first time; writes positions 0..P-1
        self.mask.zero_()
        self.mask[:, :P] = prefix.attention_mask
        self.next_position.copy_(prefix.next_position)
        self.step_index.zero_()
        self.start.fill_(P)

    def _eager_step(self, tokens: torch.Tensor) -> torch.Tensor:
        """Run ``tokens`` [R, 1] at the next position of every row; the next logits [R, V] in float32."""
        column = (self.start + self.step_index).view(1, 1).expand(self.mask.shape[0], 1)
        self.mask.scatter_(1, column, 1)
        positions = continuation_positions(self.rule, self.next_position + self.step_index, 1)
        out = self.model(
            input_ids=tokens,
            attention_mask=self.mask,
            position_ids=positions,
            use_cache=True,
            logits_to_keep=1,
            **{self._argument: self.cache},
        )
        self.step_index.add_(1)
        return out.logits[:, -1].float()

    def step(self, tokens: torch.Tensor) -> torch.Tensor:
        """The logits [R, V] after ``tokens`` [R] (a copy: a replayed graph reuses its output buffer)."""
        logits = self._step(tokens[:, None])
        return logits.clone() if self.graphs else logits
