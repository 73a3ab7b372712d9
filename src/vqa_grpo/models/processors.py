"""The logits processors transformers' ``generate`` builds from a model's generation config, rebuilt
for the shared-prefix decode (models/generation.py), and the settings it does not rebuild (a model
that sets one samples on the plain path: grpo/plan.py).
"""

from __future__ import annotations

from transformers import LogitsProcessorList

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
