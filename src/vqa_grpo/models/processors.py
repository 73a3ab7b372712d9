"""The logits processors of sampling: GRPO's row-wise temperature and nucleus, and those
transformers' ``generate`` builds from a model's generation config, rebuilt for the shared-prefix
decode (models/generation.py), with the settings it does not rebuild (a model that sets one
samples on the plain path: grpo/plan.py).

The seed varies the sampling of the G completions of a question: completion g uses temperature
``temperatures[g % len]`` and top-p ``top_ps[g % len]`` (seed section 3.4). Rather than G generate
calls, one call samples all B x G rows and a logits processor applies each row's own temperature
and top-p. models/generation.py ``sample_groups`` does it on the run's forward plan:

    temps, top_ps = row_sampling_params(B, G, cfg.temperatures, cfg.top_ps)   # [R] each
    comp = generate(model, adapter, processor, prompts, plan, group_size=G, do_sample=True,
                    logits_processor=LogitsProcessorList([RowwiseTemperatureTopP(temps, top_ps)]),
                    keep_scores=True, max_new_tokens=...)
    logps = sampling_logprobs(comp.scores, comp.ids)                           # [R, C]

On the plain path ``generate`` repeats each prompt G times (``PromptBatch`` rows r // G) and calls
transformers' ``generate`` with temperature=1.0, top_p=1.0, top_k=0, so that its own warpers are
off; on the shared prefix the same processors are rebuilt and run in the same order
(``build_processors``). What transformers 5 does with this (read in ``generation/utils.py``,
checked by the tests):

- Row r of the generate batch is prompt r // G, sample r % G: the order ``row_sampling_params``
  produces.
- ``_get_logits_processor`` builds the non-sampling processors from the generation config
  (repetition penalty, bad words, min length, ...), merges the user's ``logits_processor`` after
  them, and only then appends the sampling warpers (temperature, top-k, top-p, min-p, typical,
  epsilon, eta). So this processor runs exactly where the built-in temperature and top-p would.
- The built-in warpers are skipped when temperature == 1.0, top_p >= 1.0 and top_k is 0 or None.
  These must be passed explicitly: a checkpoint's ``generation_config.json`` may set its own
  (some instruct checkpoints ship near-greedy values such as top_k=1), and with none set generate
  falls back to top_k=50. Non-warper settings from that file (e.g. a repetition penalty) still
  apply, before this processor, exactly as they would in a separate generate call.
- ``output_scores`` returns, per step, the scores after all processors (here: tempered and
  truncated, -inf outside the nucleus), in float32, one [R, V] tensor per generated token; the
  sampled token is drawn from their softmax. A finished row still gets a step (its token is the
  pad token).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor
from transformers import (
    LogitsProcessor,
    LogitsProcessorList,
    RepetitionPenaltyLogitsProcessor,
    SuppressTokensLogitsProcessor,
    TemperatureLogitsWarper,
    TopPLogitsWarper,
)


def row_sampling_params(
    num_prompts: int,
    num_generations: int,
    temperatures: Sequence[float],
    top_ps: Sequence[float],
) -> tuple[Tensor, Tensor]:  # temps [R], top_ps [R], R = num_prompts x num_generations
    """Per-row temperature and top-p for a generate batch of B prompts x G samples.

    Row r is prompt r // G, sample g = r % G, and gets ``temperatures[g % len(temperatures)]`` and
    ``top_ps[g % len(top_ps)]``; a single value is shared by every row. Both are float64 so that
    ``1 - top_p`` is formed as generate's own TopPLogitsWarper forms it.
    """
    if num_prompts < 1 or num_generations < 1:
        raise ValueError(f"need num_prompts >= 1 and num_generations >= 1, got {num_prompts}, {num_generations}")
    if not temperatures or any(t <= 0 for t in temperatures):
        raise ValueError(f"temperatures: need one or more values > 0, got {list(temperatures)}")
    if not top_ps or any(not 0 < p <= 1 for p in top_ps):
        raise ValueError(f"top_ps: need one or more values in (0, 1], got {list(top_ps)}")
    g = torch.arange(num_generations).repeat(num_prompts)  # [R] sample index of each row
    temps = torch.tensor(list(temperatures), dtype=torch.float64)[g % len(temperatures)]  # [R]
    ps = torch.tensor(list(top_ps), dtype=torch.float64)[g % len(top_ps)]  # [R]
    return temps, ps


class RowwiseTemperatureTopP(LogitsProcessor):
    """Divide row r's logits by ``temperatures[r]``, then keep row r's top-``top_ps[r]`` nucleus.

    Row by row this is transformers' ``TemperatureLogitsWarper`` followed by ``TopPLogitsWarper``,
    with the same boundary rule, vectorised over the rows: sort the row ascending, take the
    cumulative softmax, drop the tokens whose cumulative probability is <= 1 - top_p, always keep
    the ``min_tokens_to_keep`` most probable ones, set the dropped scores to ``filter_value``. So
    the smallest set of most probable tokens whose mass reaches top_p is kept. A row with
    top_p >= 1 is only tempered (generate adds no top-p warper for it either).

    Expects exactly R rows per call (B prompts x G samples, see the module docstring); another
    batch size is an error rather than a silent misassignment.
    """

    def __init__(
        self,
        temperatures: Tensor,  # [R]
        top_ps: Tensor,  # [R]
        *,
        filter_value: float = -float("inf"),
        min_tokens_to_keep: int = 1,
    ):
        temperatures = torch.as_tensor(temperatures, dtype=torch.float64)
        top_ps = torch.as_tensor(top_ps, dtype=torch.float64)
        if temperatures.dim() != 1 or temperatures.shape != top_ps.shape:
            raise ValueError(
                f"temperatures {tuple(temperatures.shape)} and top_ps {tuple(top_ps.shape)} must both be [R]"
            )
        if (temperatures <= 0).any():
            raise ValueError("temperatures must be > 0")
        if ((top_ps <= 0) | (top_ps > 1)).any():
            raise ValueError("top_ps must be in (0, 1]")
        if min_tokens_to_keep < 1:
            raise ValueError(f"min_tokens_to_keep={min_tokens_to_keep}: must be >= 1")
        self.temperatures = temperatures  # [R]
        self.top_ps = top_ps  # [R]
        self.any_top_p = bool((top_ps < 1).any())  # decided once here: no host sync per decode step
        self._on: dict = {}  # (device, dtype) -> (temps [R, 1], cutoff [R, 1], truncate [R, 1])
        self.filter_value = filter_value
        self.min_tokens_to_keep = min_tokens_to_keep

    def _params(self, scores: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Temperatures, 1 - top_p and the truncate flags as [R, 1] on the scores' device and dtype
        (moved once per device and dtype, not once per decode step)."""
        key = (scores.device, scores.dtype)
        if key not in self._on:
            temps = self.temperatures.to(device=scores.device, dtype=scores.dtype).unsqueeze(1)
            # 1 - top_p in float64, then rounded to the scores' dtype: what TopPLogitsWarper's Python
            # float threshold becomes when compared with the scores.
            cutoff = (1 - self.top_ps).to(device=scores.device, dtype=scores.dtype).unsqueeze(1)
            truncate = (self.top_ps < 1).to(scores.device).unsqueeze(1)
            self._on[key] = (temps, cutoff, truncate)
        return self._on[key]

    def __call__(self, input_ids: Tensor, scores: Tensor) -> Tensor:  # scores [R, V] -> [R, V]
        if scores.shape[0] != self.temperatures.shape[0]:
            raise ValueError(
                f"RowwiseTemperatureTopP was built for {self.temperatures.shape[0]} rows but generate "
                f"passed {scores.shape[0]}; build it with row_sampling_params(B, G, ...) for this batch"
            )
        temps, cutoff, truncate = self._params(scores)
        scores = scores / temps  # [R, V]
        if not self.any_top_p:  # temperature only: no nucleus to cut
            return scores
        sorted_scores, sorted_ids = torch.sort(scores, descending=False)  # [R, V] ascending
        cumulative = sorted_scores.softmax(dim=-1).cumsum(dim=-1)  # [R, V]
        drop_sorted = (cumulative <= cutoff) & truncate  # [R, V]
        drop_sorted[:, -self.min_tokens_to_keep :] = False  # the most probable tokens stay
        drop = drop_sorted.scatter(1, sorted_ids, drop_sorted)  # [R, V] back in vocabulary order
        return scores.masked_fill(drop, self.filter_value)


def sampling_logprobs(
    scores: Sequence[Tensor],  # C tensors [R, V], generate's output_scores
    completion_ids: Tensor,  # [R, C] the generated tokens (sequences without the prompt)
) -> Tensor:  # [R, C]
    """Log-probability of each generated token under the distribution it was sampled from.

    ``scores`` are generate's processed scores (``output_scores=True``), so this is
    log softmax(scores_t)[token_t]: the tempered and truncated distribution, the actual behaviour
    policy. One step at a time (no [R, C, V] stack). A token the processed distribution gives
    probability 0 cannot have been sampled; it is the pad token written after a row finished,
    and gets 0.0 instead of -inf so that masked arithmetic stays finite. Mask those positions.

    Note: these are not log pi_theta(token) of the plain (or only tempered) model distribution;
    top-p renormalises the nucleus, so for the same weights they are >= the tempered log-probs.
    """
    if completion_ids.dim() != 2 or completion_ids.shape[1] != len(scores):
        raise ValueError(
            f"completion_ids {tuple(completion_ids.shape)} must be [R, C] with C = {len(scores)} score steps"
        )
    steps = []
    for t, step_scores in enumerate(scores):  # [R, V]
        logp = torch.log_softmax(step_scores.float(), dim=-1)  # [R, V]
        steps.append(logp.gather(1, completion_ids[:, t : t + 1]).squeeze(1))  # [R]
    logps = torch.stack(steps, dim=1)  # [R, C]
    return torch.where(torch.isfinite(logps), logps, torch.zeros_like(logps))


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
