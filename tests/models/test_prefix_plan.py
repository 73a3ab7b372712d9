"""When the shared prefix and the fused prefill are used: each family's position rule, the
grpo.shared_prefix and grpo.fuse_prefill settings, and the reason logged for each fallback.
That the two paths compute the same: test_prefix.py.
"""

from __future__ import annotations

import logging

import pytest
from test_prefix import SHARED_FAMILIES, load

from vqa_grpo.config import GRPOConfig
from vqa_grpo.config_load import load_config
from vqa_grpo.errors import UserError
from vqa_grpo.grpo import plan as plan_module
from vqa_grpo.grpo.plan import choose_plan
from vqa_grpo.models.adapters import ADAPTERS, adapter_for
from vqa_grpo.models.tiny import TINY_FAMILIES


def test_every_tiny_family_has_a_shared_prefix_rule():
    # Phi-3-vision (native) included; the generic adapter falls back. The rule is the adapter's, so
    # SmolVLM (the Idefics3 adapter) has it too.
    assert set(TINY_FAMILIES) == set(SHARED_FAMILIES)
    assert "phi3_v" in SHARED_FAMILIES
    rules = {name: a.position_rule for name, a in ADAPTERS.items()}
    assert rules == {
        "qwen2_vl": "mrope",
        "qwen2_5_vl": "mrope",
        "llava": "linear",
        "llava_next": "linear",
        "idefics3": "linear",
        "smolvlm": "linear",
        "gemma3": "linear",
        "phi4_multimodal": "linear",
        "phi3_v": "linear",
        "generic": None,
    }


def test_shared_prefix_setting(tiny_model_dir, caplog):
    # YAML 1.1 reads on/off as booleans; the key still takes them.
    assert load_config(None, ["grpo.shared_prefix=on"]).grpo.shared_prefix == "on"
    assert load_config(None, ["grpo.shared_prefix=off"]).grpo.shared_prefix == "off"
    assert load_config(None, []).grpo.shared_prefix == "auto"
    from vqa_grpo.config import ConfigError

    with pytest.raises(ConfigError, match="grpo.shared_prefix='always' is not allowed; choose one of auto, on, off"):
        load_config(None, ["grpo.shared_prefix=always"])

    lm = load(tiny_model_dir)
    for setting, shared in (("auto", True), ("on", True), ("off", False)):
        assert choose_plan(lm.model, lm.adapter, GRPOConfig(shared_prefix=setting)).sample_shared is shared
    generic = adapter_for("some_new_family")  # a family without a tested position rule: the generic adapter
    plan_module._logged.clear()
    with caplog.at_level(logging.INFO, logger="vqa_grpo.prefix"):
        assert not choose_plan(lm.model, generic, GRPOConfig()).sample_shared
    assert (
        "GRPO forward plan: sampling: plain; loss: plain; log-prob passes: plain [the generic adapter has no tested "
        "shared-prefix position rule]" in caplog.text
    )
    with pytest.raises(UserError, match="^grpo.shared_prefix=on cannot run: the generic adapter has no tested"):
        choose_plan(lm.model, generic, GRPOConfig(shared_prefix="on"))


def test_fused_prefill_is_used_only_where_it_is_exact(family_dirs, tiny_model_dir, caplog):
    lm = load(tiny_model_dir)
    ok = GRPOConfig()

    def fused_prefill_reason(model, cfg, **kw):
        return plan_module.fused_prefill_reason(model, lm.adapter, cfg, **kw)

    def fuse_prefill(model, cfg):
        return choose_plan(model, lm.adapter, cfg).fused

    assert fused_prefill_reason(lm.model, ok) is None
    reasons = {
        "grpo.fuse_prefill=off": (GRPOConfig(fuse_prefill="off"), {}),
        "no shared prefix": (GRPOConfig(shared_prefix="off"), {}),
        "grpo.num_iterations > 1": (GRPOConfig(num_iterations=2), {}),
        "the seed report's loss has no completion pass": (GRPOConfig(loss_type="seed_report"), {}),
        "vLLM samples": (GRPOConfig(generation_backend="vllm"), {}),
        "several processes": (ok, {"processes": 2}),
        "gradient accumulation": (ok, {"accumulation": 2}),
    }
    for why, (cfg, kw) in reasons.items():
        assert fused_prefill_reason(lm.model, cfg, **kw) == why
    lm.model.generation_config.no_repeat_ngram_size = 2  # only transformers' generate applies it
    assert fused_prefill_reason(lm.model, ok) == "the generation config needs transformers' generate"
    lm.model.generation_config.no_repeat_ngram_size = 0
    # YAML 1.1 reads off as a boolean; the key still takes it.
    assert load_config(None, ["grpo.fuse_prefill=off"]).grpo.fuse_prefill == "off"
    assert load_config(None, []).grpo.fuse_prefill == "auto"
    dropped = load(tiny_model_dir, lora=True, lora_dropout=0.05)
    assert fused_prefill_reason(dropped.model, ok) == "dropout is active"
    assert fused_prefill_reason(load(tiny_model_dir, lora=True).model, ok) is None  # lora_dropout 0
    plan_module._logged.clear()
    with caplog.at_level(logging.INFO, logger="vqa_grpo.prefix"):
        assert fuse_prefill(lm.model, ok) and not fuse_prefill(dropped.model, ok)
    assert "loss: fused prefill; log-prob passes: shared prefix [qwen2_vl adapter, mrope positions]" in caplog.text
    assert (
        "loss: shared prefix; log-prob passes: shared prefix [qwen2_vl adapter, mrope positions, no fused "
        "prefill: dropout is "
        "active]" in caplog.text
    )
