"""Evaluation under several processes: each answers its share of the questions (in step under
FSDP and ZeRO-3), and the answers are gathered back into the examples' order."""

from __future__ import annotations

from vqa_grpo.data.prompts import DEFAULT_TEMPLATE
from vqa_grpo.data.types import BadExample
from vqa_grpo.distributed import Dist
from vqa_grpo.models.generation import predict_answers
from vqa_grpo.models.plan import plain_plan


def predict_sharded(
    dist: Dist,
    lm,
    examples: list,
    eval_cfg,
    device,
    *,
    progress: bool = False,
    template: str = DEFAULT_TEMPLATE,
    guard=None,
) -> tuple[list[str | None], list[str | None]]:
    """The raw answer to each example as ``eval_cfg`` (config.EvalConfig) asks, each process
    answering its share and all getting every answer, in order; and beside it why an example was
    not answered (None where it was): one of its visuals failed to load (BadExample's kind), or
    ``guard`` (models/fit.py ``PromptGuard``) refused it, ``past_context``. ``template``: the
    prompt template each question is put in (data/prompts.py).

    With sharded weights (FSDP, ZeRO-3) every generate call is a collective: the examples whose
    visuals fail, or that the guard refuses, are dropped first (so that no rank skips a batch the
    others run), the shares are padded to equal length and the ranks decode in step.
    """
    plan = plain_plan(dist.synced_decoding(), "evaluation")  # greedy answers, each prompt run once

    def answer(chunk: list) -> list[tuple[str | None, str | None]]:
        skips: dict[int, str] = {}
        texts = predict_answers(
            lm.model,
            lm.adapter,
            lm.processor,
            chunk,
            batch_size=eval_cfg.batch_size,
            max_new_tokens=eval_cfg.max_new_tokens,
            device=device,
            do_sample=eval_cfg.do_sample,
            temperature=eval_cfg.temperature,
            top_p=eval_cfg.top_p,
            progress=progress,
            plan=plan,
            template=template,
            guard=guard,
            skips=skips,
        )
        return [(t, skips.get(i)) for i, t in enumerate(texts)]

    if not dist.sharded_forward:
        got = dist.map_sharded(answer, examples)
        return [t for t, _ in got], [why for _, why in got]
    why = dist.map_sharded(lambda chunk: [_skip_reason(e, guard) for e in chunk], examples)
    with dist.decoding(lm.model):
        got = iter(dist.map_sharded(answer, [e for e, w in zip(examples, why) if w is None]))
    texts = [next(got)[0] if w is None else None for w in why]
    return texts, why


def _skip_reason(example, guard) -> str | None:
    """Why the example cannot be answered (one of its visuals fails to decode, or ``guard``
    refuses it), None when it can."""
    try:
        shown = example.load_visuals()
        if guard is not None:
            guard(example, shown)
    except BadExample as e:
        return e.kind
    return None
