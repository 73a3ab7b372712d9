"""The forward plan (models/plan.py, grpo/plan.py): chosen once, from the adapter and the settings,
and handed to every pass: the position rule and the synced-decoding collective included."""

from __future__ import annotations

import pytest
import torch
from plans import on_path

from vqa_grpo.config import DataConfig, GRPOConfig, ModelConfig
from vqa_grpo.data.loader import load_vqa
from vqa_grpo.distributed import DDP
from vqa_grpo.grpo.plan import choose_plan
from vqa_grpo.models.generation import generate
from vqa_grpo.models.loading import load_model
from vqa_grpo.models.plan import PLAIN

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def lm(tiny_model_dir):
    lm = load_model(ModelConfig(name_or_path=str(tiny_model_dir)), CPU)
    lm.model.eval()
    return lm


def test_the_plan_of_each_setting(lm):
    assert (PLAIN.sampling, PLAIN.loss) == ("plain", "plain") and not (PLAIN.sample_shared or PLAIN.score_shared)
    fused = choose_plan(lm.model, lm.adapter, GRPOConfig())
    assert (fused.sampling, fused.loss, fused.position_rule) == ("shared prefix", "fused prefill", "mrope")
    assert fused.reason == "qwen2_vl adapter, mrope positions" and fused.any_rank is None
    two = choose_plan(lm.model, lm.adapter, GRPOConfig(num_iterations=2))
    assert (two.sampling, two.loss) == ("shared prefix", "shared prefix")
    assert two.reason == "qwen2_vl adapter, mrope positions, no fused prefill: grpo.num_iterations > 1"
    off = choose_plan(lm.model, lm.adapter, GRPOConfig(shared_prefix="off"))
    assert (off.sampling, off.loss, off.position_rule, off.reason) == ("plain", "plain", None, "grpo.shared_prefix=off")
    lm.model.generation_config.no_repeat_ngram_size = 2  # only transformers' generate applies it
    try:
        gen = choose_plan(lm.model, lm.adapter, GRPOConfig())
    finally:
        lm.model.generation_config.no_repeat_ngram_size = 0
    assert (gen.sampling, gen.loss) == ("plain", "shared prefix")  # the loss still runs each prompt once
    assert "the generation config sets no_repeat_ngram_size" in gen.reason


def test_model_family_reaches_the_plan(tiny_model_dir):
    # The same Qwen2-VL checkpoint taken by the generic adapter (model.family=generic): no position
    # rule, so every pass runs the plain path, whatever its model_type.
    generic = load_model(ModelConfig(name_or_path=str(tiny_model_dir), family="generic"), CPU)
    assert generic.model.config.model_type == "qwen2_vl" and generic.adapter.position_rule is None
    plan = choose_plan(generic.model, generic.adapter, GRPOConfig())
    assert (plan.sampling, plan.loss) == ("plain", "plain")
    assert plan.reason == "the generic adapter has no tested shared-prefix position rule"


def test_synced_decoding_is_passed_explicitly(lm, synth_dir):
    # One process has nothing to sync with; the collective reaches the decoder as an argument: with
    # one that always answers "a rank still runs", the decode takes every step, drawing the same
    # tokens where this rank's rows run (a stopped row keeps padding).
    assert DDP().synced_decoding() is None
    examples = load_vqa(DataConfig(path=str(synth_dir)), seed=0).train[:2]
    prompts = lm.adapter.encode_prompts(
        lm.processor, [e.load_image() for e in examples], [e.question for e in examples]
    )
    asked = []

    def any_rank(here: bool) -> bool:
        asked.append(here)
        return True

    kw = dict(max_new_tokens=5, group_size=3)
    alone = generate(lm.model, lm.adapter, lm.processor, prompts, on_path(lm.adapter, True), **kw)
    synced = generate(lm.model, lm.adapter, lm.processor, prompts, on_path(lm.adapter, True, any_rank=any_rank), **kw)
    assert len(asked) == 4  # asked before each of the 4 steps after the first
    assert torch.equal(synced.ids[:, : alone.ids.shape[1]], alone.ids) and torch.equal(
        synced.truncated, alone.truncated
    )
