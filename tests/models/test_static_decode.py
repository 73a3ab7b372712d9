"""The static-cache decode (models/static_decode.py) against the dynamic one, on every family with a
shared-prefix rule: the same tokens, greedy and sampled with a fixed seed, with rows stopping at
different steps, and the sampler's scores within float rounding. (The CUDA graphs it is compiled
into on a GPU replay these same steps; that part needs a GPU and is not run here.)"""

from __future__ import annotations

import pytest
import torch
from family_models import model_config
from plans import on_path, rollout
from transformers import LogitsProcessorList

from vqa_grpo.config import DataConfig, GRPOConfig, ModelConfig, RewardConfig
from vqa_grpo.data.loader import load_vqa
from vqa_grpo.errors import UserError
from vqa_grpo.grpo.plan import choose_plan
from vqa_grpo.models.adapters import adapter_for
from vqa_grpo.models.generation import generate
from vqa_grpo.models.loading import load_model
from vqa_grpo.models.processors import RowwiseTemperatureTopP, row_sampling_params
from vqa_grpo.models.static_decode import StaticDecoder
from vqa_grpo.models.tiny import TINY_FAMILIES

CPU = torch.device("cpu")
B, G, C = 2, 4, 6
FAMILIES = [f for f in TINY_FAMILIES if adapter_for(f).position_rule]


@pytest.fixture(scope="module")
def examples(synth_dir):
    data = load_vqa(DataConfig(path=str(synth_dir)), seed=0).train
    return [
        next(e for e in data if e.question == "How many objects are there?"),
        next(e for e in data if "left or right" in e.question),
    ]


@pytest.fixture(scope="module")
def family_model(family_dirs):
    def get(family):
        lm = load_model(model_config(family_dirs(family)), CPU)
        lm.model.eval()
        return lm

    return get


def decode_both(lm, prompts, **kw):
    out = {}
    for decode in ("dynamic", "static"):
        torch.manual_seed(5)
        out[decode] = generate(
            lm.model,
            lm.adapter,
            lm.processor,
            prompts,
            on_path(lm.adapter, True, decode=decode),
            max_new_tokens=C,
            group_size=G,
            **kw,
        )
    return out["dynamic"], out["static"]


@pytest.mark.parametrize("family", FAMILIES)
def test_static_decode_draws_the_tokens_of_the_dynamic_one(family, family_model, examples, monkeypatch):
    built = []
    real_step = StaticDecoder.step
    monkeypatch.setattr(StaticDecoder, "step", lambda self, tokens: built.append(1) or real_step(self, tokens))
    lm = family_model(family)
    images = [e.load_image() for e in examples]
    images[1] = images[1].resize((168, 168))  # prompts of different lengths: one is left-padded
    prompts = lm.adapter.encode_prompts(lm.processor, images, [e.question for e in examples])
    temps, top_ps = row_sampling_params(B, G, [0.7, 1.0, 1.5], [0.9, 1.0])
    sampler = LogitsProcessorList([RowwiseTemperatureTopP(temps, top_ps)])
    sample = dict(do_sample=True, logits_processor=sampler, keep_scores=True)
    # A stop token that makes rows stop at different steps: the third one row 0 samples.
    first, _ = decode_both(lm, prompts, **sample)
    gen = lm.model.generation_config
    eos = gen.eos_token_id if isinstance(gen.eos_token_id, list) else [gen.eos_token_id]
    gen.eos_token_id = [*eos, int(first.ids[0, 2])]
    try:
        greedy_d, greedy_s = decode_both(lm, prompts)
        sampled_d, sampled_s = decode_both(lm, prompts, **sample)
    finally:
        gen.eos_token_id = eos if len(eos) > 1 else eos[0]
    for d, s in ((greedy_d, greedy_s), (sampled_d, sampled_s)):
        assert torch.equal(s.ids, d.ids) and torch.equal(s.mask, d.mask) and torch.equal(s.truncated, d.truncated)
    assert len(built) >= C - 1  # the static path ran (its first decode, with no extra stop, takes C - 1 steps)
    lengths = sampled_d.mask.sum(1)
    assert lengths.min() <= 3 and lengths.max() == C  # some rows stopped early, others ran to the limit
    for a, b in zip(sampled_d.scores, sampled_s.scores, strict=True):
        finite = torch.isfinite(a)
        assert torch.equal(finite, torch.isfinite(b))
        assert (a[finite] - b[finite]).abs().max() < 1e-4


def test_the_plan_chooses_the_static_decode_where_asked_and_exact(tiny_model_dir):
    lm = load_model(ModelConfig(name_or_path=str(tiny_model_dir)), CPU)
    assert choose_plan(lm.model, lm.adapter, GRPOConfig()).decode == "dynamic"  # off by default
    assert choose_plan(lm.model, lm.adapter, GRPOConfig(static_decode="auto")).decode == "dynamic"  # CUDA only
    plan = choose_plan(lm.model, lm.adapter, GRPOConfig(static_decode="on"))
    assert plan.decode == "static" and "(static decode)" in plan.describe()
    with pytest.raises(UserError, match="^grpo.static_decode=on cannot run: no shared-prefix sampler; set grpo"):
        choose_plan(lm.model, lm.adapter, GRPOConfig(static_decode="on", shared_prefix="off"))
    with pytest.raises(UserError, match="synced decoding under sharded weights"):
        choose_plan(lm.model, lm.adapter, GRPOConfig(static_decode="on"), any_rank=lambda here: here)


def test_a_repetition_penalty_reads_the_same_sequence_on_both_decodes(family_model, examples):
    lm = family_model("qwen2_vl")
    prompts = lm.adapter.encode_prompts(
        lm.processor, [e.load_image() for e in examples], [e.question for e in examples]
    )
    plain, _ = decode_both(lm, prompts)
    lm.model.generation_config.repetition_penalty = 3.0
    try:
        dynamic, static = decode_both(lm, prompts)
    finally:
        lm.model.generation_config.repetition_penalty = None
    assert torch.equal(static.ids, dynamic.ids) and not torch.equal(dynamic.ids, plain.ids)


def test_a_sliding_window_shorter_than_the_prompt_and_completion_keeps_the_dynamic_cache(family_model, examples):
    from vqa_grpo.models.prefix import encode_prefix
    from vqa_grpo.models.static_decode import decoder_for, sliding_windows

    lm = family_model("gemma3")
    (window,) = set(sliding_windows(lm.model))
    prompts = lm.adapter.encode_prompts(lm.processor, [examples[0].load_image()], [examples[0].question])
    with torch.no_grad():
        prefix = encode_prefix(lm.model, prompts, 2, lm.adapter.position_rule)
    P = prompts.input_ids.shape[1]
    assert P < window and decoder_for(lm.model, prefix, window - P) is not None
    assert decoder_for(lm.model, prefix, window - P + 1) is None
    assert sliding_windows(family_model("qwen2_vl").model) == []


def test_a_rollout_on_the_static_decode_is_the_dynamic_ones(tiny_model_dir, examples):
    lm = load_model(ModelConfig(name_or_path=str(tiny_model_dir)), CPU)
    images = [e.load_image() for e in examples]
    rollouts = []
    for setting in ("off", "on"):
        grpo = GRPOConfig(num_generations=G, max_completion_length=C, static_decode=setting)
        torch.manual_seed(0)
        rollouts.append(rollout(lm.model, lm.adapter, lm.processor, examples, images, grpo, RewardConfig(), CPU))
    dynamic, static = rollouts
    assert static.plan.decode == "static" and dynamic.plan.decode == "dynamic"
    assert torch.equal(static.completion_ids, dynamic.completion_ids)
    assert (static.sampling_logprobs - dynamic.sampling_logprobs).abs().max() < 1e-5
    assert torch.equal(static.rewards, dynamic.rewards)
