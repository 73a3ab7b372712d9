"""Loading real models: remote code, the family override, quantization and config checks.

A model directory here is either the tiny LLaVA of ``vqa-grpo model tiny`` or a config.json
written by the test (the part of a checkpoint that ``load_model`` reads first).
"""

from __future__ import annotations

import json

import pytest
import torch

from vqa_grpo.config import ConfigError, ModelConfig
from vqa_grpo.config_load import load_config
from vqa_grpo.errors import UserError
from vqa_grpo.models.adapters import FamilyAdapter, LlavaAdapter, Phi4MultimodalAdapter
from vqa_grpo.models.loading import load_model
from vqa_grpo.models.tiny import build_tiny

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def llava_dir(tmp_path_factory):
    return build_tiny("llava", tmp_path_factory.mktemp("llava") / "model", seed=0)


def test_a_model_with_remote_code_needs_trust_remote_code(tmp_path):
    # A config.json that names its own classes (auto_map) for a model type transformers lacks.
    (tmp_path / "config.json").write_text(
        json.dumps(
            {
                "model_type": "my_remote_vlm",
                "architectures": ["MyRemoteVLM"],
                "auto_map": {"AutoConfig": "configuration_my.MyConfig", "AutoModelForCausalLM": "modeling_my.MyVLM"},
            }
        )
    )
    (tmp_path / "preprocessor_config.json").write_text("{}")
    with pytest.raises(UserError) as err:
        load_model(ModelConfig(name_or_path=str(tmp_path)), CPU)
    message = str(err.value)
    assert "\n" not in message and "ships its own model code" in message and "model.trust_remote_code=true" in message


def test_family_is_detected_and_model_family_overrides_it(llava_dir):
    assert type(load_model(ModelConfig(name_or_path=str(llava_dir)), CPU, trainable=False).adapter) is LlavaAdapter
    generic = load_model(ModelConfig(name_or_path=str(llava_dir), family="generic"), CPU, trainable=False).adapter
    assert type(generic) is FamilyAdapter
    with pytest.raises(UserError, match="model.family='llava2' is not known"):
        load_model(ModelConfig(name_or_path=str(llava_dir), family="llava2"), CPU)


def test_dtype_and_attention_kernel_are_applied(llava_dir):
    lm = load_model(ModelConfig(name_or_path=str(llava_dir), dtype="bf16", attn_implementation="eager"), CPU)
    assert {p.dtype for p in lm.model.parameters()} == {torch.bfloat16}
    assert lm.model.config._attn_implementation == "eager"


def test_quantization_needs_lora_and_bitsandbytes(llava_dir):
    with pytest.raises(ConfigError, match="model.quantization=4bit needs model.lora=true"):
        load_config(None, ["model.quantization=4bit"])
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        with pytest.raises(UserError, match=r"needs bitsandbytes: pip install 'vqa-grpo\[quant\]'"):
            load_model(ModelConfig(name_or_path=str(llava_dir), lora=True, quantization="8bit"), CPU)
    else:
        with pytest.raises(UserError, match="needs a CUDA device"):
            load_model(ModelConfig(name_or_path=str(llava_dir), lora=True, quantization="8bit"), CPU)


def test_num_crops_is_checked(llava_dir):
    with pytest.raises(ConfigError, match="model.num_crops=0"):
        load_config(None, ["model.num_crops=0"])
    with pytest.raises(UserError, match="model.num_crops applies to Phi-3/3.5-vision only, not to the llava family"):
        load_model(ModelConfig(name_or_path=str(llava_dir), num_crops=4), CPU)


def test_an_import_error_is_reported_as_what_failed_not_as_an_attention_problem(tmp_path):
    # The case: remote modelling code written for transformers 4.x that imports a module
    # transformers 5 no longer has. The error names that import, not the attention kernel.
    from vqa_grpo.models.loading import _from_pretrained

    (tmp_path / "config.json").write_text(
        json.dumps(
            {
                "model_type": "llama",
                "architectures": ["OldVLM"],
                "vocab_size": 8,
                "hidden_size": 8,
                "intermediate_size": 8,
                "num_hidden_layers": 1,
                "num_attention_heads": 1,
                "auto_map": {"AutoModelForCausalLM": "modeling_old.OldVLM"},
            }
        )
    )
    (tmp_path / "modeling_old.py").write_text(
        "from transformers.modeling_attn_mask_utils import _prepare_4d_causal_attention_mask\n"
    )
    for attn in ("sdpa", "eager", "flash_attention_2"):
        with pytest.raises(UserError) as err:
            _from_pretrained(
                Phi4MultimodalAdapter(),
                str(tmp_path),
                ModelConfig(name_or_path=str(tmp_path), trust_remote_code=True, attn_implementation=attn),
                {},
            )
        message = str(err.value)
        assert message.startswith(f"cannot load {tmp_path}: its remote code failed to import (")
        assert "transformers.modeling_attn_mask_utils" in message and "flash" not in message
