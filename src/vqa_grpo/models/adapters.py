"""Model-family adapters: which one a checkpoint takes (``adapter_for``), and every adapter's name.

An adapter owns a family's prompt, the processor's image tensors and how to batch them, so the
trainer never names an image tensor: the base class and ``PromptBatch`` are in
models/adapter_base.py, the families in models/families.py, where a prompt's visuals go in
models/visuals.py. docs/models.md has a table of every family.
"""

from __future__ import annotations

from vqa_grpo.errors import UserError
from vqa_grpo.models.adapter_base import PROJECTIONS, FamilyAdapter, PromptBatch, unwrap_ddp
from vqa_grpo.models.families import (
    Gemma3Adapter,
    Idefics3Adapter,
    LlavaAdapter,
    Phi3VisionAdapter,
    Phi4MultimodalAdapter,
    Qwen2VLAdapter,
)

__all__ = [
    "ADAPTERS",
    "PROJECTIONS",
    "FamilyAdapter",
    "Gemma3Adapter",
    "Idefics3Adapter",
    "LlavaAdapter",
    "Phi3VisionAdapter",
    "Phi4MultimodalAdapter",
    "PromptBatch",
    "Qwen2VLAdapter",
    "adapter_for",
    "unwrap_ddp",
]

ADAPTERS: dict[str, type[FamilyAdapter]] = {
    "qwen2_vl": Qwen2VLAdapter,
    "qwen2_5_vl": Qwen2VLAdapter,
    "llava": LlavaAdapter,
    "llava_next": LlavaAdapter,
    "idefics3": Idefics3Adapter,
    "smolvlm": Idefics3Adapter,
    "gemma3": Gemma3Adapter,
    "phi4_multimodal": Phi4MultimodalAdapter,
    "phi3_v": Phi3VisionAdapter,
    "generic": FamilyAdapter,
}


def adapter_for(model_type: str, family: str = "auto") -> FamilyAdapter:
    """The adapter named by ``family``, or detected from ``config.model_type`` when "auto"
    (the generic adapter for a model type with no adapter of its own).

    A named family must fit the checkpoint: where ``model_type`` has an adapter of its own, only
    the names of that adapter (qwen2_vl/qwen2_5_vl, llava/llava_next, idefics3/smolvlm) and
    "generic" are taken; another family's prompt, image keys and position rule would run silently
    wrong (llava's 1-D positions on Qwen2-VL give other log-probs)."""
    name = model_type if family == "auto" else family
    if family != "auto" and name not in ADAPTERS:
        raise UserError(f"model.family={family!r} is not known; choose auto or one of {', '.join(ADAPTERS)}")
    own = ADAPTERS.get(model_type)
    if own is not None and family not in ("auto", "generic") and ADAPTERS[family] is not own:
        fits = " or ".join(k for k, v in ADAPTERS.items() if v is own)
        raise UserError(
            f"model.family={family} does not fit this checkpoint, whose config.json has model_type={model_type!r}; "
            f"set model.family=auto (or {fits}, or generic)"
        )
    return ADAPTERS.get(name, FamilyAdapter)()
