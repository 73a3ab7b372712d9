"""Forward plans and rollouts for tests: each test says which path its passes take (models/plan.py)."""

from __future__ import annotations

from dataclasses import replace

from vqa_grpo.grpo.plan import choose_plan
from vqa_grpo.grpo.rollout import Rollout, make_rollout_and_prefill
from vqa_grpo.models.plan import PLAIN, ForwardPlan


def on_path(adapter, shared: bool, **fields) -> ForwardPlan:
    """Sampling and every log-prob pass on the shared prefix (``shared``, with ``adapter``'s position
    rule) or all on the plain path; ``fields``: other ForwardPlan fields (decode, any_rank)."""
    if not shared:
        return replace(PLAIN, **fields)
    rule = adapter.position_rule
    return ForwardPlan(sampling="shared prefix", loss="shared prefix", position_rule=rule, reason="test", **fields)


def for_run(cfg, lm) -> ForwardPlan:
    """The plan a one-process run of ``cfg`` chooses (training/loop.py)."""
    return choose_plan(lm.model, lm.adapter, cfg.grpo, accumulation=cfg.train.gradient_accumulation_steps)


def rollout(model, adapter, processor, examples, images, grpo, reward, device, **kw) -> Rollout:
    """A rollout on the plan one process would choose, without the fused prefill (no loss takes it here)."""
    plan = choose_plan(model, adapter, replace(grpo, fuse_prefill="off"))
    return make_rollout_and_prefill(model, adapter, processor, examples, images, grpo, reward, device, plan, **kw)[0]
