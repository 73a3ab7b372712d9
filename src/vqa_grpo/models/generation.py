"""Batched generation of answers: greedy for evaluation, sampled for GRPO rollouts.

Two paths, one result, and the forward plan (models/plan.py) says which: transformers'
``generate`` over the prompts repeated G times (the plain path), or each prompt run once and its
KV cache expanded to its G rows (models/prefix.py), then decoded step by step as ``generate``
does, with its logits processors rebuilt (models/processors.py). Both sample every row in one
batch, with the KV cache, and no Python loop over samples.

Shapes: B prompts, G completions each (``group_size``), R = B*G rows, P prompt tokens, C
completion tokens (at most ``max_new_tokens``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm
from transformers import LogitsProcessorList

from vqa_grpo.data.prompts import DEFAULT_TEMPLATE, user_texts
from vqa_grpo.data.types import BadExample
from vqa_grpo.models.adapters import FamilyAdapter, PromptBatch
from vqa_grpo.models.plan import ForwardPlan
from vqa_grpo.models.prefix import Prefix, encode_prefix, keep_decoding, log_once
from vqa_grpo.models.processors import RowwiseTemperatureTopP, build_processors, sampling_logprobs
from vqa_grpo.models.static_decode import decoder_for


@dataclass
class Completions:
    """Generated tokens after the prompt, cut at the first stop token."""

    ids: torch.Tensor  # [R, C] token ids; positions after the stop token hold padding
    mask: torch.Tensor  # [R, C] 1 for real completion tokens, the stop token included
    truncated: torch.Tensor  # [R] bool: no stop token within max_new_tokens
    scores: tuple[torch.Tensor, ...] | None = None  # C x [R, V] processed logits when sampled


def completion_mask(ids: torch.Tensor, stop_ids: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Mask up to and including the first stop token of each row; rows with none are truncated."""
    is_stop = torch.isin(ids, torch.tensor(stop_ids, device=ids.device))  # [R, C]
    has_stop = is_stop.any(dim=1)  # [R]
    first = torch.where(
        has_stop, is_stop.int().argmax(dim=1), torch.full_like(has_stop, ids.shape[1], dtype=torch.long)
    )
    positions = torch.arange(ids.shape[1], device=ids.device)[None, :]  # [1, C]
    return (positions <= first[:, None]).long(), ~has_stop


@torch.no_grad()
def generate(
    model,
    adapter: FamilyAdapter,
    processor,
    prompts: PromptBatch,
    plan: ForwardPlan,
    *,
    max_new_tokens: int,
    do_sample: bool = False,
    temperature: float = 1.0,
    top_p: float = 1.0,
    logits_processor=None,
    keep_scores: bool = False,
    group_size: int = 1,
    prefix: Prefix | None = None,
) -> Completions:
    """Sample (or greedily decode) ``group_size`` completions of each prompt in one batch, on
    ``plan``'s sampling path, decode and synced decoding (``plan.any_rank``: every rank steps until
    all ranks' rows have stopped).

    ``prompts`` holds B prompts; the result has R = B * group_size rows, row r following prompt
    r // group_size. ``logits_processor`` (e.g. the row-wise temperature/top-p sampler of
    models/processors.py, built for R rows: :func:`sample_groups`) replaces the shared
    ``temperature``/``top_p`` when given.
    ``prefix``: the prompts' expanded pass already run (no gradient; the fused prefill's copy).
    """
    stop_ids = adapter.stop_token_ids(processor, model)
    pad_id = processor.tokenizer.pad_token_id
    suppress = adapter.suppressed_token_ids(processor)
    was_training = model.training
    model.eval()
    try:
        if plan.sample_shared:
            processors = build_processors(
                model.generation_config,
                suppress,
                do_sample=do_sample,
                temperature=temperature,
                top_p=top_p,
                logits_processor=logits_processor,
                device=prompts.input_ids.device,
            )
            prefix = encode_prefix(model, prompts, group_size, plan.position_rule) if prefix is None else prefix
            ids, scores = _decode_from_prefix(
                model, prompts.input_ids, prefix, plan, max_new_tokens, processors, do_sample, stop_ids, pad_id,
                keep_scores,
            )  # fmt: skip
        else:
            ids, scores = _hf_generate(
                model,
                adapter.repeat(prompts, group_size) if group_size > 1 else prompts,
                max_new_tokens=max_new_tokens,
                do_sample=do_sample,
                temperature=temperature,
                top_p=top_p,
                logits_processor=logits_processor,
                keep_scores=keep_scores,
                stop_ids=stop_ids,
                pad_id=pad_id,
                suppress=suppress,
                synced=plan.any_rank is not None,
            )
    finally:
        model.train(was_training)
    mask, truncated = completion_mask(ids, stop_ids)
    ids = ids.masked_fill(mask == 0, pad_id)
    return Completions(ids, mask, truncated, scores)


def sample_groups(
    model,
    adapter,
    processor,
    prompts,
    plan: ForwardPlan,
    temps: torch.Tensor,  # [R]
    top_ps: torch.Tensor,  # [R]
    *,
    group_size: int,
    max_new_tokens: int,
    prefix: Prefix | None = None,
) -> tuple[Completions, torch.Tensor]:  # [R, C] completions, [R, C] sampler log-probs
    """``group_size`` completions of each prompt of ``prompts`` on ``plan``'s sampling path, row r
    at ``temps[r]``/``top_ps[r]`` (R = B x group_size; models/processors.py), and each token's
    log-prob under the distribution it was drawn from (0 past the end). ``prefix``: the prompts'
    pass already run (no gradient; the fused prefill's copy)."""
    comp = generate(
        model,
        adapter,
        processor,
        prompts,
        plan,
        max_new_tokens=max_new_tokens,
        do_sample=True,
        logits_processor=LogitsProcessorList([RowwiseTemperatureTopP(temps, top_ps)]),
        keep_scores=True,
        group_size=group_size,
        prefix=prefix,
    )
    return comp, sampling_logprobs(comp.scores, comp.ids) * comp.mask


def _decode_from_prefix(
    model,
    prompt_ids: torch.Tensor,  # [B, P]
    prefix: Prefix,  # R rows
    plan: ForwardPlan,
    max_new_tokens: int,
    processors: LogitsProcessorList,
    do_sample: bool,
    stop_ids: list[int],
    pad_id: int,
    keep_scores: bool,
) -> tuple[torch.Tensor, tuple[torch.Tensor, ...] | None]:
    """Decode the R rows of ``prefix``: token ids [R, C] and, with ``keep_scores``, the processed
    scores of each step (C x [R, V], float32).

    Each step does what transformers' ``generate`` does: the scores are the last logits in
    float32 passed through ``processors`` (called with the sequences so far, prompt included),
    the token is ``multinomial(softmax(scores))`` when sampling or the argmax, a row that has
    emitted a stop token continues with ``pad_id``, and decoding ends when every row has stopped
    (under synced decoding, every rank's rows) or after ``max_new_tokens``. With the same seed and
    equal logits it draws the same tokens. One host sync per step (the all-stopped check), as in
    ``generate``. ``plan.decode``: "dynamic" (the prefix's cache grows), "static" or "static, CUDA
    graphs" (models/static_decode.py: the same tokens, from a static cache).
    """
    static = None
    if plan.decode != "dynamic":
        static = decoder_for(model, prefix, max_new_tokens, graphs=plan.decode == "static, CUDA graphs")
        if static is None:
            log_once("generation: dynamic decode, a sliding window is shorter than the prompt and its completion")
    R = prefix.attention_mask.shape[0]
    seqs = prompt_ids.repeat_interleave(R // prompt_ids.shape[0], dim=0)  # [R, P], grows by one per step
    stop = torch.tensor(stop_ids, device=seqs.device)
    running = torch.ones(R, dtype=torch.bool, device=seqs.device)  # [R]
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
        here, more = keep_decoding(running, plan.any_rank)
        if not more:
            break
        if static is not None:
            logits = static.step(nxt)
        else:
            logits = prefix.extend(model, nxt[:, None], logits_to_keep=1)[:, -1].float()
    return torch.stack(tokens, dim=1), (tuple(scores) if keep_scores else None)


def _hf_generate(
    model,
    prompts: PromptBatch,
    *,
    max_new_tokens,
    do_sample,
    temperature,
    top_p,
    logits_processor,
    keep_scores,
    stop_ids,
    pad_id,
    suppress,
    synced,
) -> tuple[torch.Tensor, tuple[torch.Tensor, ...] | None]:
    """transformers' ``generate`` over R prompt rows: the completion ids [R, C] and scores."""
    kwargs = dict(
        max_new_tokens=max_new_tokens,
        eos_token_id=stop_ids,
        pad_token_id=pad_id,
        suppress_tokens=suppress or None,
    )
    if do_sample and logits_processor is not None:
        kwargs.update(do_sample=True, temperature=1.0, top_p=1.0, top_k=0, logits_processor=logits_processor)
    elif do_sample:
        kwargs.update(do_sample=True, temperature=temperature, top_p=top_p, top_k=0)
    else:
        kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
    if synced:  # sharded weights: every rank steps until all are done
        kwargs["synced_gpus"] = True
    out = model.generate(**prompts.model_inputs(), **kwargs, return_dict_in_generate=True, output_scores=keep_scores)
    return out.sequences[:, prompts.input_ids.shape[1] :], (out.scores if keep_scores else None)


def decode(processor, completions: Completions) -> list[str]:
    """Completion texts without special tokens (the stop token and padding removed)."""
    lengths = completions.mask.sum(dim=1).tolist()
    rows = [row[:n] for row, n in zip(completions.ids.tolist(), lengths)]
    return processor.tokenizer.batch_decode(rows, skip_special_tokens=True)


def predict_answers(
    model,
    adapter: FamilyAdapter,
    processor,
    examples: list,
    *,
    batch_size: int,
    max_new_tokens: int,
    device,
    do_sample: bool = False,
    temperature: float = 0.7,
    top_p: float = 0.9,
    progress: bool = False,
    plan: ForwardPlan,
    template: str = DEFAULT_TEMPLATE,
    guard: Callable[[object, list], None] | None = None,
    skips: dict[int, str] | None = None,
) -> list[str | None]:
    """Decoded answers for ``examples`` in batches, on ``plan`` (the evaluation's, models/plan.py
    ``plain_plan``); None where any of its visuals (an image of its list, its video) failed to
    load, or where ``guard`` (models/fit.py ``PromptGuard``) refused the question with its visuals
    (a prompt past the model's context): never answered. ``skips``, when given, gets each such
    question's index -> the reason (BadExample.kind). ``template``: the prompt template each
    question is put in (data/prompts.py)."""
    out: list[str | None] = [None] * len(examples)
    starts = range(0, len(examples), batch_size)
    for start in tqdm(starts, desc="evaluate", disable=not progress, leave=False):
        chunk, visuals, index = [], [], []
        for i, ex in enumerate(examples[start : start + batch_size], start=start):
            try:
                shown = ex.load_visuals()
                if guard is not None:
                    guard(ex, shown)
            except BadExample as e:
                if skips is not None:
                    skips[i] = e.kind
                continue
            visuals.append(shown)
            chunk.append(ex)
            index.append(i)
        if not chunk:
            continue
        prompts = adapter.encode_prompts(processor, visuals, user_texts(chunk, template)).to(device)
        comp = generate(
            model,
            adapter,
            processor,
            prompts,
            plan,
            max_new_tokens=max_new_tokens,
            do_sample=do_sample,
            temperature=temperature,
            top_p=top_p,
        )
        for i, text in zip(index, decode(processor, comp)):
            out[i] = text
    return out
