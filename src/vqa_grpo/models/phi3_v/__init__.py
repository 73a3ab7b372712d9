"""Phi-3-vision and Phi-3.5-vision, native (model_type ``phi3_v``): config, model and processor.

Importing this package registers the classes with transformers' auto classes, so
``AutoConfig`` and ``AutoModelForCausalLM`` load an official checkpoint without
``trust_remote_code`` (vqa_grpo.models.loading imports it).
"""

from transformers import AutoConfig, AutoModelForCausalLM
from transformers.models.auto.configuration_auto import CONFIG_MAPPING

from vqa_grpo.models.phi3_v.configuration import Phi3VConfig
from vqa_grpo.models.phi3_v.modeling import Phi3VForCausalLM, Phi3VModel

__all__ = ["Phi3VConfig", "Phi3VForCausalLM", "Phi3VModel", "register"]


def register() -> None:
    """Register ``phi3_v`` with AutoConfig and AutoModelForCausalLM (once)."""
    if "phi3_v" not in CONFIG_MAPPING:
        AutoConfig.register("phi3_v", Phi3VConfig)
        AutoModelForCausalLM.register(Phi3VConfig, Phi3VForCausalLM)


register()
