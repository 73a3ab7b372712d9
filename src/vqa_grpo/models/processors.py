"""Sampling from a shared prefix (models/prefix.py): G completions per prompt decoded against one
prompt pass, step by step as transformers' ``generate`` does, with its logits processors rebuilt.

Shapes: B prompts, G completions each, R = B*G rows, C completion tokens, V vocabulary.
"""

from __future__ import annotations

from typing import Callable

import torch
from transformers import LogitsProcessorList

from vqa_grpo.models.adapters import PromptBatch
from vqa_grpo.models.prefix import Prefix, encode_prefix, keep_decoding

# ----------------------------------------------------------------------------------------------
# Sampling


@torch.no_grad()
def sample_from_prefix(
    model,
    prompts: PromptBatch,
    group_size: int,
    *,
    max_new_tokens: int,
    processors: LogitsProcessorList,
    do_sample: bool,
    stop_ids: list[int],
    pad_id: int,
    keep_scores: bool = False,
    prefix: Prefix | None = None,
    position_rule: str,
    any_rank: Callable[[bool], bool] | None = None,
    decode: str = "dynamic",
) -> tuple[torch.Tensor, tuple[torch.Tensor, ...] | None]:
    """Decode G completions per prompt from one shared prefix (``prefix`` when already run): token ids [R, C] and, with
    ``keep_scores``, the processed scores of each step (C x [R, V], float32).

    Each step does what transformers' ``generate`` does: the scores are the last logits in
    float32 passed through ``processors`` (called with the sequences so far, prompt included),
    the token is ``multinomial(softmax(scores))`` when sampling or the argmax, a row that has
    emitted a stop token continues with ``pad_id``, and decoding ends when every row has stopped
    or after ``max_new_tokens`` (with ``any_rank``, synced decoding: when every rank's rows have). With the
    same seed and equal logits it draws the same tokens. One host sync per step (the all-stopped
    check), as in ``generate``. ``position_rule``: the adapter's, for a prefix run here. ``decode``:
    "dynamic" (the prefix's cache grows), "static" or "static, CUDA graphs" (models/static_decode.py:
    the same tokens, from a static cache; the caller has checked that it is exact here).
    """
    prefix = encode_prefix(model, prompts, group_size, position_rule) if prefix is None else prefix
    static = None
    if decode != "dynamic":
        from vqa_grpo.models.prefix import _log_once
        from vqa_grpo.models.static_decode import decoder_for

        static = decoder_for(model, prefix, max_new_tokens, graphs=decode == "static, CUDA graphs")
        if static is None:
            _log_once("generation: dynamic decode, a sliding window is shorter than the prompt and its completion")
    seqs = prompts.input_ids.repeat_interleave(group_size, dim=0)  # [R, P], grows by one per step
    stop = torch.tensor(stop_ids, device=seqs.device)
    running = torch.ones(seqs.shape[0], dtype=torch.bool, device=seqs.device)  # [R]
    logits = prefix.last_logits.float()  # [R, V]
    tokens, scores = [], []
    here = True  # a row on this rank is still running
    for step in range(max_new_tokens):
        if here:
            step_scores = processors(seqs, logits)  # [R, V]
            if do_sample:
                nxt = torch.multinomial(torch.softmax(step_scores, dim=-1), num_samples=1).squeeze(1)
            else:
                nxt = torch.argmax(step_scores, dim=-1)
            nxt = torch.where(running, nxt, torch.full_like(nxt, pad_id))  # [R]
        else:  # synced decoding, every row here stopped: step with the other ranks without drawing,
            # so that this rank's random stream stays the one a single process would have
            step_scores, nxt = torch.zeros_like(logits), torch.full_like(running, pad_id, dtype=torch.long)
        seqs = torch.cat([seqs, nxt[:, None]], dim=1)
        tokens.append(nxt)
        if keep_scores:
            scores.append(step_scores)
        running = running & ~torch.isin(nxt, stop)
        if step + 1 == max_new_tokens:
            break
        here, more = keep_decoding(running, any_rank)
        if not more:
            break
        if static is not None:
            logits = static.step(nxt)
        else:
            logits = prefix.extend(model, nxt[:, None], logits_to_keep=1)[:, -1].float()
    return torch.stack(tokens, dim=1), (tuple(scores) if keep_scores else None)


# Generation-config settings that make transformers add a logits processor this sampler does not
# rebuild; a model that sets one is sampled on the plain path (repetition_penalty is rebuilt).
_PLAIN_ONLY_SETTINGS = {
    "guidance_scale": lambda v: v is not None and v != 1,
    "sequence_bias": lambda v: v is not None,
    "encoder_repetition_penalty": lambda v: v is not None and v != 1.0,
    "no_repeat_ngram_size": lambda v: bool(v),
    "encoder_no_repeat_ngram_size": lambda v: bool(v),
    "bad_words_ids": lambda v: v is not None,
    "min_length": lambda v: bool(v),
    "min_new_tokens": lambda v: bool(v),
    "forced_bos_token_id": lambda v: v is not None,
    "forced_eos_token_id": lambda v: v is not None,
    "exponential_decay_length_penalty": lambda v: v is not None,
    "begin_suppress_tokens": lambda v: v is not None,
    "watermarking_config": lambda v: v is not None,
    "stop_strings": lambda v: v is not None,
}
_PLAIN_ONLY_SAMPLING = {
    "min_p": lambda v: v is not None,
    "top_h": lambda v: v is not None,
    "typical_p": lambda v: v is not None and v < 1.0,
    "epsilon_cutoff": lambda v: v is not None and 0.0 < v < 1.0,
    "eta_cutoff": lambda v: v is not None and 0.0 < v < 1.0,
}


def plain_only_settings(generation_config, do_sample: bool) -> list[str]:
    """The model's generation-config settings that only transformers' ``generate`` applies."""
    checks = {**_PLAIN_ONLY_SETTINGS, **(_PLAIN_ONLY_SAMPLING if do_sample else {})}
    return [k for k, bad in checks.items() if bad(getattr(generation_config, k, None))]


def build_processors(
    generation_config,
    suppress_ids: list[int],
    *,
    do_sample: bool,
    temperature: float,
    top_p: float,
    logits_processor=None,
    device=None,
) -> LogitsProcessorList:
    """The processors ``generate`` would run, in its order: repetition penalty (from the model's
    generation config), suppressed tokens (``suppress_ids``, else the generation config's), the
    caller's processors, then (sampling without a caller's processor) temperature and top-p."""
    from transformers import (
        RepetitionPenaltyLogitsProcessor,
        SuppressTokensLogitsProcessor,
        TemperatureLogitsWarper,
        TopPLogitsWarper,
    )

    out = LogitsProcessorList()
    penalty = getattr(generation_config, "repetition_penalty", None)
    if penalty is not None and penalty != 1.0:
        out.append(RepetitionPenaltyLogitsProcessor(penalty=penalty))
    suppress = suppress_ids or getattr(generation_config, "suppress_tokens", None)  # generate's fallback too
    if suppress:
        out.append(SuppressTokensLogitsProcessor(suppress, device=device))
    if logits_processor is not None:
        out.extend(logits_processor)
    elif do_sample:
        if temperature != 1.0:
            out.append(TemperatureLogitsWarper(temperature))
        if top_p < 1.0:
            out.append(TopPLogitsWarper(top_p))
    return out
