"""Batched generation of answers: greedy for evaluation, sampled for GRPO rollouts.

Two paths, one result: transformers' ``generate`` over the prompts repeated G times (the plain
path), or, with ``shared_prefix``, each prompt run once and its KV cache expanded to its G rows
(models/prefix.py). Both sample every row in one batch, with the KV cache, and no Python loop
over samples.

Shapes: B prompts, G completions each (``group_size``), R = B*G rows, P prompt tokens, C
completion tokens (at most ``max_new_tokens``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from vqa_grpo.data.prompts import DEFAULT_TEMPLATE, user_texts
from vqa_grpo.models import prefix as shared
from vqa_grpo.models import prefix_sampling as sampling
from vqa_grpo.models.adapters import FamilyAdapter, PromptBatch


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
    *,
    max_new_tokens: int,
    do_sample: bool = False,
    temperature: float = 1.0,
    top_p: float = 1.0,
    logits_processor=None,
    keep_scores: bool = False,
    group_size: int = 1,
    shared_prefix: bool = False,
    prefix=None,
    any_rank=None,
    decode: str = "dynamic",
) -> Completions:
    """Sample (or greedily decode) ``group_size`` completions of each prompt in one batch.

    ``prompts`` holds B prompts; the result has R = B * group_size rows, row r following prompt
    r // group_size. ``logits_processor`` (e.g. the row-wise temperature/top-p sampler of
    grpo/sampling.py, built for R rows) replaces the shared ``temperature``/``top_p`` when given.
    ``shared_prefix`` runs each prompt once (models/prefix.py) instead of G times; a model whose
    generation config asks for a processor that path does not rebuild stays on the plain path.
    ``prefix``: the prompts' expanded pass already run (models/prefix.Prefix, no gradient).
    ``any_rank``: synced decoding under sharded weights (``ForwardPlan.any_rank``): every rank
    steps until all ranks' rows have stopped. ``decode``: the shared-prefix sampler's
    (``ForwardPlan.decode``; synced decoding keeps it dynamic, logged).
    """
    stop_ids = adapter.stop_token_ids(processor, model)
    pad_id = processor.tokenizer.pad_token_id
    suppress = adapter.suppressed_token_ids(processor)
    if shared_prefix and adapter.position_rule is None:
        raise RuntimeError(f"the {adapter.name} adapter has no shared-prefix position rule: use the plain path")
    if shared_prefix:  # a guard for direct callers: a run's plan has already chosen (models/plan.py)
        blocked = sampling.plain_only_settings(model.generation_config, do_sample)
        if blocked:
            shared._log_once(f"generation: plain path, the generation config sets {', '.join(blocked)}")
            shared_prefix = False
    was_training = model.training
    model.eval()
    try:
        if shared_prefix:
            processors = sampling.build_processors(
                model.generation_config,
                suppress,
                do_sample=do_sample,
                temperature=temperature,
                top_p=top_p,
                logits_processor=logits_processor,
                device=prompts.input_ids.device,
            )
            if decode != "dynamic" and any_rank is not None:  # every step is a collective: no static steps
                shared._log_once("generation: dynamic decode, synced decoding under sharded weights")
                decode = "dynamic"
            ids, scores = sampling.sample_from_prefix(
                model,
                prompts,
                group_size,
                max_new_tokens=max_new_tokens,
                processors=processors,
                do_sample=do_sample,
                stop_ids=stop_ids,
                pad_id=pad_id,
                keep_scores=keep_scores,
                prefix=prefix,
                position_rule=adapter.position_rule,
                any_rank=any_rank,
                decode=decode,
            )
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
                synced=any_rank is not None,
            )
    finally:
        model.train(was_training)
    mask, truncated = completion_mask(ids, stop_ids)
    ids = ids.masked_fill(mask == 0, pad_id)
    return Completions(ids, mask, truncated, scores)


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
    any_rank=None,
    template: str = DEFAULT_TEMPLATE,
) -> list[str | None]:
    """Decoded answers for ``examples`` in batches; None where the image failed to load.
    ``any_rank``: synced decoding under sharded weights, as in :func:`generate`. ``template``:
    the prompt template each question is put in (data/prompts.py)."""
    from tqdm.auto import tqdm

    from vqa_grpo.data.types import BadExample

    out: list[str | None] = [None] * len(examples)
    starts = range(0, len(examples), batch_size)
    for start in tqdm(starts, desc="evaluate", disable=not progress, leave=False):
        chunk, images, index = [], [], []
        for i, ex in enumerate(examples[start : start + batch_size], start=start):
            try:
                images.append(ex.load_image())
            except BadExample:
                continue
            chunk.append(ex)
            index.append(i)
        if not chunk:
            continue
        prompts = adapter.encode_prompts(processor, images, user_texts(chunk, template)).to(device)
        comp = generate(
            model,
            adapter,
            processor,
            prompts,
            max_new_tokens=max_new_tokens,
            do_sample=do_sample,
            temperature=temperature,
            top_p=top_p,
            any_rank=any_rank,
        )
        for i, text in zip(index, decode(processor, comp)):
            out[i] = text
    return out
