"""The model-family adapter's base: the prompt, the processor's image tensors, and how to batch them.

The trainer never names a family's image tensors. It asks the adapter to encode prompts (each
with zero, one or several images, or a video: models/visuals.py places them), to repeat a batch
of prompts for G completions, and to append completion tokens; the adapter knows which processor
outputs are per token (``mm_token_type_ids``, ``token_type_ids``), per example (Idefics3's
``pixel_values`` [B, tiles, 3, H, W]), per image (LLaVA-NeXT's ``pixel_values`` and
``image_sizes``: first dimension the batch's number of images) or flattened across images
(Qwen2-VL's ``pixel_values``), which tokens lay out an image (never generated, never labels),
which auto class loads the model, and where the vision tower and the language model's
projections are (freezing, LoRA targets). The families are in models/families.py, the registry
in models/adapters.py; docs/models.md has a table of every family.

Shapes: B prompts, P prompt tokens (left-padded), C completion tokens (right-padded), G
completions per prompt, R = B*G rows, N images of the batch (a video's frames counted where the
family shows them as images).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Callable

import torch
from PIL import Image
from transformers import AutoProcessor

from vqa_grpo.errors import UserError
from vqa_grpo.models.visuals import Part, as_visuals, frames_as_images, layout, of_kind, repeat_blocks

_INTERLEAVES: dict[str, bool] = {}


def interleaves(owner) -> bool:
    """Whether ``owner``'s chat template (a processor's or tokenizer's) renders a user turn's parts
    in their order: probed once per template with (text, image, text). llava-hf's templates render
    every image first, then every text, so a question's placeholders would be lost."""
    template = owner.chat_template
    if template not in _INTERLEAVES:
        probe = [{"type": "text", "text": "vqaprobeA"}, {"type": "image"}, {"type": "text", "text": "vqaprobeB"}]
        rendered = owner.apply_chat_template([{"role": "user", "content": probe}], tokenize=False)
        between = rendered.partition("vqaprobeA")[2].partition("vqaprobeB")[0]
        _INTERLEAVES[template] = "vqaprobeB" in rendered and bool(between)
    return _INTERLEAVES[template]


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
    images_per_prompt: tuple[int, ...] | None = None
    """[B] images each prompt shows (a video's frames included where the family shows them as
    images); None: one each, as a batch built without the adapter holds."""
    videos_per_prompt: tuple[int, ...] | None = None
    """[B] videos each prompt holds on the processor's video path (Qwen2-VL); None: none."""

    @property
    def size(self) -> int:
        return self.input_ids.shape[0]

    def image_counts(self) -> list[int]:
        return list(self.images_per_prompt) if self.images_per_prompt is not None else [1] * self.size

    def video_counts(self) -> list[int]:
        return list(self.videos_per_prompt) if self.videos_per_prompt is not None else [0] * self.size

    def to(self, device: torch.device | str) -> "PromptBatch":
        return replace(
            self,
            input_ids=self.input_ids.to(device),
            attention_mask=self.attention_mask.to(device),
            extra={k: v.to(device) for k, v in self.extra.items()},
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

    per_image_keys: tuple[str, ...] | None = None
    """Processor outputs with one entry per image of the batch (first dimension N, prompt after
    prompt); None (the generic adapter): those whose first dimension is N, told by their size."""
    per_video_keys: tuple[str, ...] = ()
    """Processor outputs with one entry per video of the batch (Qwen2-VL's ``video_grid_thw``)."""
    video_native = False
    """True: a video goes to the processor's video path; False: its frames are shown as images."""
    max_images: int | None = 1
    """Most images one prompt may show; None: any number. The generic adapter cannot tell how an
    unknown processor lays several out, so it takes one."""

    # ---- prompts and batches ----

    def prompt_parts(self, text: str, visuals=None) -> list[Part]:
        """The user turn's parts in order (models/visuals.py ``layout``); ``visuals`` None: one
        image (its value None), as the single-image callers have it. A video becomes its frames
        unless the family takes video natively."""
        shown = [None] if visuals is None else as_visuals(visuals)
        parts = layout(text, shown)
        return parts if self.video_native else frames_as_images(parts)

    def prompt_text(self, processor, text: str, visuals=None) -> str:
        """One user turn (``text``: the question in the prompt template, data/prompts.py, with
        ``visuals``, one image when None, placed by :meth:`prompt_parts`) and the assistant's turn
        opened, in the processor's chat template (the tokenizer's when the processor has none:
        Phi-4-multimodal's processor does not reload its own)."""
        return self.render(processor, self.prompt_parts(text, visuals), text)

    def render(self, processor, parts: list[Part], text: str) -> str:
        """:meth:`prompt_text` of the user turn's ``parts`` (:meth:`prompt_parts` of ``text``)."""
        owner = processor if getattr(processor, "chat_template", None) else processor.tokenizer
        if not getattr(owner, "chat_template", None):
            raise UserError(f"the {self.name} adapter needs a chat template, and this model's processor has none")
        kinds = [kind for kind, _ in parts]
        visuals_first = kinds == sorted(kinds, key=lambda k: k == "text")  # every visual before the text
        if not visuals_first and not interleaves(owner):
            parts = [("text", self.inline_text(processor, parts))]
        content = [{"type": "text", "text": value} if kind == "text" else {"type": kind} for kind, value in parts]
        messages = [{"role": "user", "content": content}]
        return owner.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)

    def inline_text(self, processor, parts: list[Part]) -> str:
        """The user turn as one text with the processor's image token (and video token) written
        where each visual goes: for chat templates that render every image before the text (llava-hf's
        LLaVA-1.5 and LLaVA-NeXT), whose processors expand the token wherever the text holds it."""
        out = []
        for kind, value in parts:
            token = value if kind == "text" else getattr(processor, f"{kind}_token", None)
            if not isinstance(token, str):
                raise UserError(
                    f"this model's chat template shows every {kind} before the text and its processor names no "
                    f"{kind} token to write in its place: remove the question's <image>/<video> placeholders"
                )
            out.append(token)
        return "".join(out)

    def visual_problem(self, max_images: int, video: bool) -> str | None:
        """One line on why prompts with up to ``max_images`` images (and a video, when ``video``)
        cannot be shown by this family; None when they can."""
        frames = video and not self.video_native  # a video's frames are several images
        if self.max_images is None or (max_images <= self.max_images and not frames):
            return None
        shown = f"{max_images} image{'s' * (max_images != 1)}" + (" and a video's frames" if frames else "")
        return (
            f"the {self.name} adapter shows at most {self.max_images} image{'s' * (self.max_images != 1)} per "
            f"question, not {shown}: it cannot tell how this model's processor lays out several; where the "
            "checkpoint's family has an adapter of its own (docs/models.md lists them), set model.family=auto "
            "or its name"
        )

    def video_inputs(self, videos: list) -> dict:
        """The processor's keyword arguments for ``videos`` (their frames and rates), in prompt order."""
        return {}

    def encode_prompts(self, processor, visuals: list, user_texts: list[str]) -> PromptBatch:
        """B prompts, left-padded to P tokens, with the processor's image tensors. ``visuals[b]``:
        prompt b's one PIL image, or its list of Visual (images, a Video; [] for text only) in
        prompt order; ``user_texts``: each user turn's text (``data.prompts.user_text``)."""
        shown = [as_visuals(v) for v in visuals]
        parts = [self.prompt_parts(t, v) for t, v in zip(user_texts, shown, strict=True)]
        images = [of_kind(p, "image") for p in parts]
        videos = [of_kind(p, "video") for p in parts]
        problem = self.visual_problem(max(map(len, images), default=0), any(videos))
        if problem:
            raise UserError(problem)
        texts = [self.render(processor, p, t) for p, t in zip(parts, user_texts)]
        inputs = {"images": images} if any(images) else {}  # the processors refuse only empty lists
        if any(videos):
            inputs.update(self.video_inputs([v for vs in videos for v in vs]))
        enc = processor(text=texts, **inputs, return_tensors="pt", padding=True, padding_side="left")
        extra = {k: v for k, v in enc.items() if k not in ("input_ids", "attention_mask") and torch.is_tensor(v)}
        counts = tuple(map(len, images)), tuple(map(len, videos))
        return PromptBatch(enc["input_ids"], enc["attention_mask"], extra, *counts)

    def rows_per_prompt(self, batch: PromptBatch, key: str) -> list[int] | None:
        """How many leading rows of ``batch.extra[key]`` each prompt owns; None: one each (per
        token or per example)."""
        if key in self.per_token_keys:
            return None
        if key in self.per_video_keys:
            return batch.video_counts()
        images = batch.image_counts()
        if self.per_image_keys is None:  # told by size: N rows (with one image a prompt, N = B either way)
            return images if batch.extra[key].shape[0] == sum(images) else None
        return images if key in self.per_image_keys else None

    def repeat(self, batch: PromptBatch, repeats: int) -> PromptBatch:
        """Each prompt ``repeats`` times in a row: [B, ...] -> [B*repeats, ...], group after group;
        per-image tensors repeat each prompt's images as a block."""
        extra = {k: repeat_blocks(v, self.rows_per_prompt(batch, k), repeats) for k, v in batch.extra.items()}

        def each(counts: list[int]) -> tuple[int, ...]:
            return tuple(c for c in counts for _ in range(repeats))

        return PromptBatch(
            batch.input_ids.repeat_interleave(repeats, dim=0),
            batch.attention_mask.repeat_interleave(repeats, dim=0),
            extra,
            each(batch.image_counts()) if batch.images_per_prompt is not None else None,
            each(batch.video_counts()) if batch.videos_per_prompt is not None else None,
        )

    def append(self, batch: PromptBatch, completion_ids: torch.Tensor, completion_mask: torch.Tensor) -> PromptBatch:
        """Prompt followed by completion tokens: [R, P] + [R, C] -> [R, P + C] (text tokens only)."""
        extra = dict(batch.extra)
        for key in self.per_token_keys:
            if key in extra:
                extra[key] = torch.cat([extra[key], torch.zeros_like(completion_ids, dtype=extra[key].dtype)], dim=1)
        return replace(
            batch,
            input_ids=torch.cat([batch.input_ids, completion_ids], dim=1),
            attention_mask=torch.cat([batch.attention_mask, completion_mask.to(batch.attention_mask.dtype)], dim=1),
            extra=extra,
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

    def vllm_processor_kwargs(self, processor, cfg) -> dict | None:
        """The keyword arguments vLLM must call this model's processor with (its ``mm_processor_kwargs``)
        to show images as :meth:`encode_prompts` shows them with ``processor``; None: vLLM's own load
        of the checkpoint's processor already does."""
        return None

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
