"""Model-family adapters: the prompt, the processor's image tensors, and how to batch them.

The trainer never names a family's image tensors. It asks the adapter to encode prompts, to
repeat a batch of prompts for G completions, and to append completion tokens; the adapter knows
which processor outputs are per token (``mm_token_type_ids``, ``token_type_ids``), per example
(``image_grid_thw``, ``image_sizes``, ``pixel_values`` [B, tiles, 3, H, W]) or flattened across
images (Qwen2-VL's ``pixel_values``), which tokens lay out an image (never generated, never
labels), which auto class loads the model, and where the vision tower and the language model's
projections are (freezing, LoRA targets). docs/models.md has a table of every family.

Shapes: B prompts, P prompt tokens (left-padded), C completion tokens (right-padded), G
completions per prompt, R = B*G rows.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch
from PIL import Image
from transformers import AutoProcessor

from vqa_grpo.errors import UserError
from vqa_grpo.models.phi3_v.processing import Phi3VProcessor


def unwrap_ddp(model):
    """The model inside a DDP wrapper (``.module``: the loss's forward runs through the wrapper), or itself."""
    return getattr(model, "module", model)


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
        """The keyword arguments of the model's forward and generate."""
        return {"input_ids": self.input_ids, "attention_mask": self.attention_mask, **self.extra}


# LoRA's default targets: the language model's attention and MLP projections (Llama, Qwen2, Gemma).
PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


class FamilyAdapter:
    """Generic adapter for any AutoModelForImageTextToText whose processor has a chat template.

    Per-token tensors are those shaped like ``input_ids``; every other tensor whose first
    dimension is B is per example. Families that flatten tensors across images override
    :meth:`repeat`; families whose processor takes one text at a time override
    :meth:`encode_prompts`.
    """

    name = "generic"
    auto_model = "AutoModelForImageTextToText"
    """The transformers auto class that loads the model."""
    per_token_keys: tuple[str, ...] = ("mm_token_type_ids", "token_type_ids")
    layout_token_names: tuple[str, ...] = (
        "image_token",
        "video_token",
        "audio_token",
        "boi_token",
        "eoi_token",
        "vision_start_token",
        "vision_end_token",
    )
    """Processor/tokenizer attributes naming the tokens that lay out an image (never generated)."""
    text_model_pattern = r"(?!.*(vision|visual|image|audio|projector|connector|merger)).*"
    """Regex (full match) over module names: the language model, where LoRA goes by default."""
    vision_pattern = r".*(vision_tower|vision_model|visual|vision_embed_tokens|image_embed)\..*"
    """Regex (full match) over parameter names: the vision tower that model.freeze_vision freezes."""
    position_rule: str | None = None
    """How a completion's positions continue its prompt's on the shared-prefix path (models/prefix.py):
    "mrope" (Qwen2-VL's 3-D positions from ``get_rope_index``), "linear" (1-D, counting real tokens),
    or None: no rule tested for this family, so its prompts run G times (the plain path)."""

    # ---- prompts and batches ----

    def prompt_text(self, processor, text: str) -> str:
        """One user turn (the image, then ``text``: the question in the prompt template,
        data/prompts.py) and the assistant's turn opened, in the processor's chat template (the
        tokenizer's when the processor has none: Phi-4-multimodal's processor does not reload its own)."""
        messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": text}]}]
        owner = processor if getattr(processor, "chat_template", None) else processor.tokenizer
        if not getattr(owner, "chat_template", None):
            raise UserError(f"the {self.name} adapter needs a chat template, and this model's processor has none")
        return owner.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)

    def processor_images(self, images: list[Image.Image]) -> list:
        """Images as the processor takes them with B texts: one list of images per text."""
        return [[im] for im in images]

    def encode_prompts(self, processor, images: list[Image.Image], user_texts: list[str]) -> PromptBatch:
        """B prompts, one image each, left-padded to P tokens, with the processor's image tensors.
        ``user_texts``: each user turn's text (``data.prompts.user_text``: the question in the template)."""
        texts = [self.prompt_text(processor, t) for t in user_texts]
        enc = processor(
            text=texts, images=self.processor_images(images), return_tensors="pt", padding=True, padding_side="left"
        )
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

    # ---- tokens ----

    def stop_token_ids(self, processor, model) -> list[int]:
        """Token ids that end an answer (the model's EOS ids and the tokenizer's)."""
        model = unwrap_ddp(model)
        ids = model.generation_config.eos_token_id
        ids = [ids] if isinstance(ids, int) else list(ids or [])
        tok = processor.tokenizer
        if tok.eos_token_id is not None and tok.eos_token_id not in ids:
            ids.append(tok.eos_token_id)
        return ids

    def layout_tokens(self, processor) -> list[str]:
        """The family's image-layout tokens as strings (image, delimiters, tile tags)."""
        found = []
        for n in self.layout_token_names:  # both: Gemma 3's processor calls <start_of_image> its image_token
            for owner in (processor, processor.tokenizer):
                t = getattr(owner, n, None)
                if isinstance(t, str) and t not in found:
                    found.append(t)
        return found

    def suppressed_token_ids(self, processor) -> list[int]:
        """Special tokens that must never be generated: image, video and vision delimiter tokens."""
        tok = processor.tokenizer
        ids = {getattr(processor, f"{n}_id", None) for n in self.layout_token_names}
        vocab = tok.get_vocab()
        ids.update(vocab[t] for t in self.layout_tokens(processor) if t in vocab)
        return sorted(i for i in ids if isinstance(i, int) and i >= 0 and i != tok.unk_token_id)

    def image_token_mask(self, processor, input_ids: torch.Tensor) -> torch.Tensor:
        """Bool [B, P]: positions holding an image-layout token (never a label, never scored)."""
        return torch.isin(input_ids, torch.tensor(self.suppressed_token_ids(processor), dtype=input_ids.dtype))

    def prompt_labels(self, processor, batch: PromptBatch) -> torch.Tensor:
        """Labels [B, P] for a language-model loss over the prompt: the prompt's text tokens, with
        padding and image-layout tokens set to -100 (ignored)."""
        ignore = (batch.attention_mask == 0) | self.image_token_mask(processor, batch.input_ids)
        return batch.input_ids.masked_fill(ignore, -100)

    # ---- the model ----

    def output_head(self, model) -> tuple[torch.nn.Module, Callable[[torch.Tensor], torch.Tensor]]:
        """The LM head module, whose input is the last hidden states (models/scoring.py takes them
        there), and the function from hidden states [n, H] to logits [n, V] as the forward computes it."""
        head = unwrap_ddp(model).get_output_embeddings()  # through a PEFT wrapper too
        return head, head

    def lora_targets(self) -> list[str] | str:
        """Default LoRA target modules: a regex (peft full-matches it) over module names, the
        language model's attention and MLP projections only, so the vision tower is left out."""
        return self.text_model_pattern + r"\.(" + "|".join(PROJECTIONS) + ")"

    strict_weights = False
    """True: a checkpoint with a missing or misshaped weight is refused (naming the first one)."""

    def load_processor(self, path: str, cfg):
        """The processor of the model directory or hub id ``path``."""
        return AutoProcessor.from_pretrained(
            path, trust_remote_code=cfg.trust_remote_code, **self.processor_kwargs(cfg)
        )

    def image_problem(self, processor, image: Image.Image) -> str | None:
        """Why the processor cannot take ``image`` (None when it can): such an example is skipped
        and counted like an image that fails to decode (models.loading.check_images)."""
        return None

    def processor_kwargs(self, cfg) -> dict:
        """Keyword arguments for ``AutoProcessor.from_pretrained`` from the model config."""
        if cfg.num_crops is not None:
            raise UserError(
                f"model.num_crops applies to Phi-3/3.5-vision only, not to the {self.name} family; remove it"
            )
        return {}


class Qwen2VLAdapter(FamilyAdapter):
    """Qwen2-VL and Qwen2.5-VL: ``pixel_values`` [sum of patches, C*T*p*p] flattened across images,
    with ``image_grid_thw`` [num_images, 3] giving each image's patch grid, and
    ``mm_token_type_ids`` [B, P] marking the image tokens."""

    name = "qwen2_vl"
    position_rule = "mrope"
    text_model_pattern = r".*language_model.*"

    def processor_images(self, images: list[Image.Image]) -> list:
        return list(images)

    def repeat(self, batch: PromptBatch, repeats: int) -> PromptBatch:
        out = super().repeat(batch, repeats)
        if "pixel_values" in batch.extra:
            grid = batch.extra["image_grid_thw"]  # [B, 3], one image per prompt
            chunks = batch.extra["pixel_values"].split(grid.prod(-1).tolist(), dim=0)
            out.extra["pixel_values"] = torch.cat([c for c in chunks for _ in range(repeats)], dim=0)
        return out

    def suppressed_token_ids(self, processor) -> list[int]:
        ids = set(super().suppressed_token_ids(processor))
        vocab = processor.tokenizer.get_vocab()
        ids.update(vocab[t] for t in ("<|vision_start|>", "<|vision_end|>") if t in vocab)
        return sorted(ids)


class LlavaAdapter(FamilyAdapter):
    """LLaVA-1.5 (``pixel_values`` [B, 3, H, W], a fixed number of image tokens) and LLaVA-NeXT
    (``pixel_values`` [B, patches, 3, H, W] zero-padded to the batch's most patches, with
    ``image_sizes`` [B, 2]: the number of image tokens depends on each image's size)."""

    name = "llava"
    position_rule = "linear"
    text_model_pattern = r".*language_model.*"


class Idefics3Adapter(FamilyAdapter):
    """Idefics3 and SmolVLM: large images are split into tiles (plus the whole image, downscaled);
    ``pixel_values`` [B, tiles, 3, H, W] is zero-padded to the batch's most tiles and
    ``pixel_attention_mask`` [B, tiles, H, W] marks real pixels. Each tile's image tokens sit
    between ``<fake_token_around_image>`` and a ``<row_i_col_j>`` or ``<global-img>`` tag."""

    name = "idefics3"
    position_rule = "linear"
    text_model_pattern = r".*text_model.*"

    def layout_tokens(self, processor) -> list[str]:
        tags = [f"<row_{i}_col_{j}>" for i in range(1, 7) for j in range(1, 7)]
        extra = [getattr(processor, "fake_image_token", None), getattr(processor, "global_image_tag", None)]
        return [*super().layout_tokens(processor), *[t for t in extra if t], *tags]


class Gemma3Adapter(FamilyAdapter):
    """Gemma 3: a fixed number of image tokens between ``<start_of_image>`` and ``<end_of_image>``,
    and ``token_type_ids`` [B, P] (1 on image tokens: bidirectional attention among them)."""

    name = "gemma3"
    position_rule = "linear"
    text_model_pattern = r".*language_model.*"

    def output_head(self, model):
        """Gemma3ForCausalLM caps its logits (final_logit_softcapping); Gemma3ForConditionalGeneration does not."""
        head, fn = super().output_head(model)
        base = unwrap_ddp(model)
        base = base.get_base_model() if hasattr(base, "get_base_model") else base
        causal = type(base).__name__ == "Gemma3ForCausalLM"
        cap = getattr(base.config, "final_logit_softcapping", None) if causal else None
        return (head, lambda h: torch.tanh(head(h) / cap) * cap) if cap else (head, fn)


class Phi4MultimodalAdapter(FamilyAdapter):
    """Phi-4-multimodal (native in transformers): ``image_pixel_values`` [B, crops, 3, 448, 448]
    zero-padded to the batch's most crops, ``image_attention_mask`` [B, crops, 32, 32] and
    ``image_sizes`` [B, 2]; the language model's projections are fused (``qkv_proj``,
    ``gate_up_proj``) and live directly under ``model.layers``."""

    name = "phi4_multimodal"
    position_rule = "linear"
    auto_model = "AutoModelForCausalLM"
    text_model_pattern = r"model\.layers\.\d+\..*"
    vision_pattern = r"model\.embed_tokens_extend\.image_embed\..*"

    def lora_targets(self) -> str:
        return self.text_model_pattern + r"\.(qkv_proj|o_proj|gate_up_proj|down_proj)"


class Phi3VisionAdapter(FamilyAdapter):
    """Phi-3-vision and Phi-3.5-vision (model_type ``phi3_v``), vqa-grpo's native implementation
    (vqa_grpo.models.phi3_v: no remote code).

    ``input_ids`` hold each image as -1 repeated once per image token (the official layout),
    never labels; ``pixel_values`` is [B, num_crops + 1, 3, 336, 336] (the global view, then the
    crops, zero-padded) and ``image_sizes`` [B, 2] the HD image's (height, width). Answers end with
    ``<|end|>``. The language model's projections are fused (``qkv_proj``, ``gate_up_proj``).
    """

    name = "phi3_v"
    position_rule = "linear"
    auto_model = "AutoModelForCausalLM"
    per_token_keys = ()
    layout_token_names = ("special_image_token",)
    vision_pattern = r"model\.vision_embed_tokens\..*"  # the CLIP tower, separators and projection
    strict_weights = True
    # The official chat format written out (its chat template takes text only); {text} is the user
    # turn's text (data/prompts.py).
    PROMPT = "<|user|>\n<|image_1|>\n{text}<|end|>\n<|assistant|>\n"

    def prompt_text(self, processor, text: str) -> str:
        return self.PROMPT.format(text=text)

    def image_token_mask(self, processor, input_ids: torch.Tensor) -> torch.Tensor:
        return (input_ids < 0) | super().image_token_mask(processor, input_ids)

    def stop_token_ids(self, processor, model) -> list[int]:
        ids = super().stop_token_ids(processor, model)
        end = processor.tokenizer.convert_tokens_to_ids("<|end|>")
        return (
            ids + [end] if isinstance(end, int) and end != processor.tokenizer.unk_token_id and end not in ids else ids
        )

    def lora_targets(self) -> str:
        # The Phi-3 cookbook's targets: the language model's fused projections (the CLIP tower
        # names its own q_proj, k_proj, v_proj, out_proj, fc1 and fc2 and is left out).
        return r"model\.layers\.\d+\.(self_attn|mlp)\.(qkv_proj|o_proj|gate_up_proj|down_proj)"

    def processor_kwargs(self, cfg) -> dict:
        return {} if cfg.num_crops is None else {"num_crops": cfg.num_crops}

    def image_problem(self, processor, image: Image.Image) -> str | None:
        return processor.image_processor.layout_problem(image)

    def load_processor(self, path: str, cfg):
        try:
            return Phi3VProcessor.from_pretrained(path, **self.processor_kwargs(cfg))
        except (OSError, ValueError) as e:
            raise UserError(f"cannot load the Phi-3-vision processor of {path}: {e}") from None


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
