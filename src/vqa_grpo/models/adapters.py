"""Model-family adapters: the prompt, the processor's image tensors, and how to batch them.

The trainer never names a family's image tensors. It asks the adapter to encode prompts, to
repeat a batch of prompts for G completions, and to append completion tokens; the adapter knows
which processor outputs are per token (``mm_token_type_ids``, ``token_type_ids``), per example
(``image_grid_thw``, ``image_sizes``) or flattened across images (Qwen2-VL's ``pixel_values``).

Shapes: B prompts, P prompt tokens (left-padded), C completion tokens (right-padded), G
completions per prompt, R = B*G rows.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from PIL import Image

# The seed's instruction (section 3.1), appended to every question.
ANSWER_INSTRUCTION = " Answer with a single word or short phrase."


@dataclass
class PromptBatch:
    """Tokenised prompts with their image tensors, as the model's forward and generate take them."""

    input_ids: torch.Tensor  # [B, P] left-padded
    attention_mask: torch.Tensor  # [B, P]
    extra: dict[str, torch.Tensor] = field(default_factory=dict)
    """The family's other processor outputs (image tensors, per-token type ids), owned by the adapter."""

    @property
    def size(self) -> int:
        return self.input_ids.shape[0]

    def to(self, device: torch.device | str) -> "PromptBatch":
        return PromptBatch(
            self.input_ids.to(device),
            self.attention_mask.to(device),
            {k: v.to(device) for k, v in self.extra.items()},
        )

    def model_inputs(self) -> dict[str, torch.Tensor]:
        return {"input_ids": self.input_ids, "attention_mask": self.attention_mask, **self.extra}


class FamilyAdapter:
    """Generic adapter for any AutoModelForImageTextToText whose processor has a chat template.

    Per-token tensors are those shaped like ``input_ids``; every other tensor whose first
    dimension is B is per example. Families that flatten tensors across images override
    :meth:`repeat`.
    """

    name = "generic"
    per_token_keys: tuple[str, ...] = ("mm_token_type_ids", "token_type_ids")

    def prompt_text(self, processor, question: str) -> str:
        messages = [
            {
                "role": "user",
                "content": [{"type": "image"}, {"type": "text", "text": question.strip() + ANSWER_INSTRUCTION}],
            }
        ]
        return processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)

    def encode_prompts(self, processor, images: list[Image.Image], questions: list[str]) -> PromptBatch:
        texts = [self.prompt_text(processor, q) for q in questions]
        enc = processor(text=texts, images=images, return_tensors="pt", padding=True, padding_side="left")
        extra = {k: v for k, v in enc.items() if k not in ("input_ids", "attention_mask") and torch.is_tensor(v)}
        return PromptBatch(enc["input_ids"], enc["attention_mask"], extra)

    def repeat(self, batch: PromptBatch, repeats: int) -> PromptBatch:
        """Each prompt ``repeats`` times in a row: [B, ...] -> [B*repeats, ...], group after group."""
        extra = {k: v.repeat_interleave(repeats, dim=0) for k, v in batch.extra.items()}
        return PromptBatch(
            batch.input_ids.repeat_interleave(repeats, dim=0),
            batch.attention_mask.repeat_interleave(repeats, dim=0),
            extra,
        )

    def append(self, batch: PromptBatch, completion_ids: torch.Tensor, completion_mask: torch.Tensor) -> PromptBatch:
        """Prompt followed by completion tokens: [R, P] + [R, C] -> [R, P + C] (text tokens only)."""
        extra = dict(batch.extra)
        for key in self.per_token_keys:
            if key in extra:
                extra[key] = torch.cat([extra[key], torch.zeros_like(completion_ids, dtype=extra[key].dtype)], dim=1)
        return PromptBatch(
            torch.cat([batch.input_ids, completion_ids], dim=1),
            torch.cat([batch.attention_mask, completion_mask.to(batch.attention_mask.dtype)], dim=1),
            extra,
        )

    def stop_token_ids(self, processor, model) -> list[int]:
        """Token ids that end an answer (the model's EOS ids and the tokenizer's)."""
        ids = model.generation_config.eos_token_id
        ids = [ids] if isinstance(ids, int) else list(ids or [])
        tok = processor.tokenizer
        if tok.eos_token_id is not None and tok.eos_token_id not in ids:
            ids.append(tok.eos_token_id)
        return ids

    def suppressed_token_ids(self, processor) -> list[int]:
        """Special tokens that must never be generated: image, video and vision delimiter tokens."""
        tok = processor.tokenizer
        names = ("image_token", "video_token", "boi_token", "eoi_token", "vision_start_token", "vision_end_token")
        ids = {getattr(processor, f"{n}_id", None) for n in names}
        for n in names:
            t = getattr(processor, n, None) or getattr(tok, n, None)
            if isinstance(t, str):
                ids.add(tok.convert_tokens_to_ids(t))
        for t in ("<|vision_start|>", "<|vision_end|>"):
            if t in tok.get_vocab():
                ids.add(tok.convert_tokens_to_ids(t))
        return sorted(i for i in ids if isinstance(i, int) and i >= 0 and i != tok.unk_token_id)

    def lora_targets(self) -> list[str] | str:
        """Default LoRA target modules: the language model's attention and MLP projections."""
        return ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


class Qwen2VLAdapter(FamilyAdapter):
    """Qwen2-VL and Qwen2.5-VL: ``pixel_values`` [sum of patches, C*T*p*p] flattened across images,
    with ``image_grid_thw`` [num_images, 3] giving each image's patch grid."""

    name = "qwen2_vl"

    def repeat(self, batch: PromptBatch, repeats: int) -> PromptBatch:
        out = super().repeat(batch, repeats)
        if "pixel_values" in batch.extra:
            grid = batch.extra["image_grid_thw"]  # [B, 3], one image per prompt
            chunks = batch.extra["pixel_values"].split(grid.prod(-1).tolist(), dim=0)
            out.extra["pixel_values"] = torch.cat([c for c in chunks for _ in range(repeats)], dim=0)
        return out

    def lora_targets(self) -> str:
        # A regex over module names (peft full-matches it): the language model's projections only,
        # so the vision tower's layers are left out by default.
        return r".*language_model.*\.(" + "|".join(super().lora_targets()) + ")"


ADAPTERS: dict[str, type[FamilyAdapter]] = {
    "qwen2_vl": Qwen2VLAdapter,
    "qwen2_5_vl": Qwen2VLAdapter,
    "generic": FamilyAdapter,
}


def adapter_for(model_type: str, family: str = "auto") -> FamilyAdapter:
    """The adapter named by ``family``, or detected from ``config.model_type`` when "auto"."""
    from vqa_grpo.errors import UserError

    name = model_type if family == "auto" else family
    if family != "auto" and name not in ADAPTERS:
        raise UserError(f"model.family={family!r} is not known; choose auto or one of {', '.join(ADAPTERS)}")
    return ADAPTERS.get(name, FamilyAdapter)()
