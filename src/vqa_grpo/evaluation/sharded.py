"""Evaluation under several processes: each answers its share of the questions (in step under
FSDP and ZeRO-3), and the answers are gathered back into the examples' order."""

from __future__ import annotations

from vqa_grpo.data.prompts import DEFAULT_TEMPLATE
from vqa_grpo.data.types import BadExample
from vqa_grpo.distributed import Dist
from vqa_grpo.models.generation import predict_answers
from vqa_grpo.models.plan import plain_plan


def predict_sharded(
    dist: Dist, lm, examples: list, eval_cfg, device, *, progress: bool = False, template: str = DEFAULT_TEMPLATE
) -> list[str | None]:
    """The raw answer to each example as ``eval_cfg`` (config.EvalConfig) asks (None where one of its
    visuals fails to load), each process answering its share and all getting every answer, in order.
    ``template``: the prompt template each question is put in (data/prompts.py).

    With sharded weights (FSDP, ZeRO-3) every generate call is a collective: the examples whose visuals fail
    are dropped first (so that no rank skips a batch the others run), the shares are padded to
    equal length and the ranks decode in step.
    """
    plan = plain_plan(dist.synced_decoding(), "evaluation")  # greedy answers, each prompt run once

    def answer(chunk: list) -> list[str | None]:
        return predict_answers(
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
        )

    if not dist.sharded_forward:
        return dist.map_sharded(answer, examples)
    loads = dist.map_sharded(lambda chunk: [_visuals_load(e) for e in chunk], examples)
    with dist.decoding(lm.model):
        texts = iter(dist.map_sharded(answer, [e for e, ok in zip(examples, loads) if ok]))
    return [next(texts) if ok else None for ok in loads]


def _visuals_load(example) -> bool:
    """Whether every image of the example, and its video, decodes."""
    try:
        example.load_visuals()
    except BadExample:
        return False
    return True
