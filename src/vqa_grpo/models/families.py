"""The model families' adapters (the base and the shapes' legend: models/adapter_base.py).

Each says which processor outputs have one entry per image (``per_image_keys``) or per video,
how its prompt shows several images (the chat template's image entries, or Phi-3-vision's
``<|image_k|>`` tags) and whether a video goes to the processor's video path (Qwen2-VL,
Qwen2.5-VL) or is shown as its frames.
"""

from __future__ import annotations

import torch
from PIL import Image
from transformers.video_utils import VideoMetadata

from vqa_grpo.data.types import Video
from vqa_grpo.errors import UserError
from vqa_grpo.models.adapter_base import FamilyAdapter, PromptBatch, unwrap_ddp
from vqa_grpo.models.idefics3_frames import encode_with_untiled_frames, written_parts
from vqa_grpo.models.phi3_v.processing import Phi3VProcessor
from vqa_grpo.models.visuals import as_visuals, has_placeholders, layout


class Qwen2VLAdapter(FamilyAdapter):
    """Qwen2-VL and Qwen2.5-VL: ``pixel_values`` [patches of the N images, C*T*p*p] flattened
    across images, with ``image_grid_thw`` [N, 3] giving each image's patch grid; a video natively:
    ``pixel_values_videos`` flattened likewise, ``video_grid_thw`` [videos, 3] and (Qwen2.5-VL)
    ``second_per_grid_ts`` [videos], from the frames' rate, for the temporal positions;
    ``mm_token_type_ids`` [B, P] marks the image (1) and video (2) tokens."""

    name = "qwen2_vl"
    position_rule = "mrope"
    text_model_pattern = r".*language_model.*"
    per_image_keys = ("image_grid_thw",)
    per_video_keys = ("video_grid_thw", "second_per_grid_ts")
    video_native = True
    max_images = None

    def video_inputs(self, videos: list) -> dict:
        # The frames are already sampled: the processor keeps them all, at the clip's sampled rate.
        # cap_pixels_per_frame: each frame's pixels bounded by an even share of the clip's token
        # budget, as the reference (qwen-vl-utils) does; transformers warns on every call without it.
        meta = [VideoMetadata(total_num_frames=len(v.frames), fps=v.fps) for v in videos]
        frames = [v.frames for v in videos]
        return {"videos": frames, "video_metadata": meta, "do_sample_frames": False, "cap_pixels_per_frame": True}

    def rows_per_prompt(self, batch: PromptBatch, key: str) -> list[int] | None:
        flat = {
            "pixel_values": ("image_grid_thw", batch.image_counts()),
            "pixel_values_videos": ("video_grid_thw", batch.video_counts()),
        }
        if key not in flat:
            return super().rows_per_prompt(batch, key)
        grid, counts = flat[key]
        patches = batch.extra[grid].prod(-1).split(counts)  # each prompt's images' patch counts
        return [int(p.sum()) for p in patches]

    def suppressed_token_ids(self, processor) -> list[int]:
        ids = set(super().suppressed_token_ids(processor))
        vocab = processor.tokenizer.get_vocab()
        ids.update(vocab[t] for t in ("<|vision_start|>", "<|vision_end|>") if t in vocab)
        return sorted(ids)


class LlavaAdapter(FamilyAdapter):
    """LLaVA-1.5 (``pixel_values`` [N, 3, H, W], a fixed number of image tokens) and LLaVA-NeXT
    (``pixel_values`` [N, patches, 3, H, W] zero-padded to the batch's most patches, with
    ``image_sizes`` [N, 2]: the number of image tokens depends on each image's size); an image
    entry of the chat template for each image."""

    name = "llava"
    position_rule = "linear"
    text_model_pattern = r".*language_model.*"
    per_image_keys = ("pixel_values", "image_sizes")
    max_images = None


class Idefics3Adapter(FamilyAdapter):
    """Idefics3 and SmolVLM: large images are split into tiles (plus the whole image, downscaled);
    ``pixel_values`` [B, tiles, 3, H, W] is zero-padded to the batch's most tiles and
    ``pixel_attention_mask`` [B, tiles, H, W] marks real pixels: per example, a prompt's images'
    tiles one after the other (an all-zero tile is padding, which the model drops). Each tile's
    image tokens sit between ``<fake_token_around_image>`` and a ``<row_i_col_j>`` or
    ``<global-img>`` tag.

    A video's frames are shown untiled, one image each at ``max_image_size``, as transformers'
    video path for these models shows them; on SmolVLM (a processor with a video processor) with
    its video text: the frame count and duration, and each frame's time. A batch with a video is
    assembled by models/idefics3_frames.py; one without goes through the processor unchanged."""

    name = "idefics3"
    position_rule = "linear"
    text_model_pattern = r".*text_model.*"
    per_image_keys = ()
    max_images = None

    def prompt_text(self, processor, text: str, visuals=None) -> str:
        shown = as_visuals(visuals)
        if not any(isinstance(v, Video) for v in shown):
            return super().prompt_text(processor, text, visuals)
        return self.render(processor, written_parts(processor, layout(text, shown)), text)

    def encode_prompts(self, processor, visuals: list, user_texts: list[str]) -> PromptBatch:
        shown = [as_visuals(v) for v in visuals]
        if not any(isinstance(v, Video) for prompt in shown for v in prompt):
            return super().encode_prompts(processor, visuals, user_texts)
        layouts = [layout(t, v) for t, v in zip(user_texts, shown, strict=True)]
        texts = [self.render(processor, written_parts(processor, p), t) for p, t in zip(layouts, user_texts)]
        return encode_with_untiled_frames(processor, layouts, texts)

    def layout_tokens(self, processor) -> list[str]:
        tags = [f"<row_{i}_col_{j}>" for i in range(1, 7) for j in range(1, 7)]
        extra = [getattr(processor, "fake_image_token", None), getattr(processor, "global_image_tag", None)]
        return [*super().layout_tokens(processor), *[t for t in extra if t], *tags]


class Gemma3Adapter(FamilyAdapter):
    """Gemma 3: ``pixel_values`` [rows, 3, H, W], one row per image, and with pan-and-scan (the
    image processor's ``do_pan_and_scan``) one more per crop of each image the processor crops,
    after it; a fixed number of image tokens between ``<start_of_image>`` and ``<end_of_image>`` for
    each row, and ``token_type_ids`` [B, P] (1 on image tokens: bidirectional attention among each
    row's)."""

    name = "gemma3"
    position_rule = "linear"
    text_model_pattern = r".*language_model.*"
    per_image_keys = ("pixel_values",)
    max_images = None

    def rows_per_prompt(self, batch: PromptBatch, key: str) -> list[int] | None:
        """A prompt's rows of ``pixel_values``: its images when there are as many rows as images (no
        crops: pan-and-scan off, or no image cropped); else counted from what the processor wrote,
        as the prompt's image tokens (``token_type_ids``) over the batch's image tokens per row.
        The processor returns no per-image crop counts (transformers drops its ``num_crops``)."""
        images = super().rows_per_prompt(batch, key)
        if key != "pixel_values" or "token_type_ids" not in batch.extra:
            return images
        rows = batch.extra[key].shape[0]
        if rows == sum(images):
            return images
        tokens = (batch.extra["token_type_ids"] != 0).sum(1)  # [B] image tokens of each prompt
        per_row, rest = divmod(int(tokens.sum()), rows)
        if rest or not per_row:
            raise ValueError(f"{int(tokens.sum())} image tokens do not split into {rows} rows of pixel_values")
        return (tokens // per_row).tolist()

    def load_processor(self, path: str, cfg):
        """The processor, with the checkpoint's image processor config's pan-and-scan settings
        (``do_pan_and_scan``, ``pan_and_scan_*``) where it sets them: Gemma3Processor passes its own
        defaults (pan-and-scan off) to the image processor on every call, over the saved ones."""
        processor = super().load_processor(path, cfg)
        if not isinstance(getattr(processor, "images_kwargs", None), dict):
            return processor
        saved = {k: getattr(processor.image_processor, k, None) for k in processor.images_kwargs if "pan_and_scan" in k}
        processor.images_kwargs = {**processor.images_kwargs, **{k: v for k, v in saved.items() if v is not None}}
        return processor

    def vllm_processor_kwargs(self, processor, cfg) -> dict | None:
        """The pan-and-scan settings the processor's calls pass (``images_kwargs``, the checkpoint's
        as :meth:`load_processor` set them) when ``do_pan_and_scan`` is on: vLLM's calls of its own
        Gemma3Processor pass the class's defaults, pan-and-scan off, as a processor without
        ``images_kwargs`` does (transformers 5.19, which vLLM 0.32 pins: None then)."""
        active = getattr(processor, "images_kwargs", None)
        if not isinstance(active, dict) or not active.get("do_pan_and_scan"):
            return None
        return {k: v for k, v in active.items() if "pan_and_scan" in k}

    def output_head(self, model):
        """Gemma3ForCausalLM caps its logits (final_logit_softcapping); Gemma3ForConditionalGeneration does not."""
        head, fn = super().output_head(model)
        base = unwrap_ddp(model)
        base = base.get_base_model() if hasattr(base, "get_base_model") else base
        causal = type(base).__name__ == "Gemma3ForCausalLM"
        cap = getattr(base.config, "final_logit_softcapping", None) if causal else None
        return (head, lambda h: torch.tanh(head(h) / cap) * cap) if cap else (head, fn)


class Phi4MultimodalAdapter(FamilyAdapter):
    """Phi-4-multimodal (native in transformers): ``image_pixel_values`` [N, crops, 3, 448, 448]
    zero-padded to the batch's most crops, ``image_attention_mask`` [N, crops, 32, 32] and
    ``image_sizes`` [N, 2]; the language model's projections are fused (``qkv_proj``,
    ``gate_up_proj``) and live directly under ``model.layers``."""

    name = "phi4_multimodal"
    position_rule = "linear"
    auto_model = "AutoModelForCausalLM"
    text_model_pattern = r"model\.layers\.\d+\..*"
    vision_pattern = r"model\.embed_tokens_extend\.image_embed\..*"
    per_image_keys = ("image_pixel_values", "image_attention_mask", "image_sizes")
    max_images = None

    def lora_targets(self) -> str:
        return self.text_model_pattern + r"\.(qkv_proj|o_proj|gate_up_proj|down_proj)"


class Phi3VisionAdapter(FamilyAdapter):
    """Phi-3-vision and Phi-3.5-vision (model_type ``phi3_v``), vqa-grpo's native implementation
    (vqa_grpo.models.phi3_v: no remote code).

    The prompt tags a prompt's images ``<|image_1|>``, ``<|image_2|>``, ... (the official format):
    each on its own line before the text, or in place of the question's placeholders. ``input_ids``
    hold image k as -k repeated once per image token (the official layout), never labels;
    ``pixel_values`` is [N, num_crops + 1, 3, 336, 336] (the global view, then the crops,
    zero-padded) and ``image_sizes`` [N, 2] the HD image's (height, width). Answers end with
    ``<|end|>``. The language model's projections are fused (``qkv_proj``, ``gate_up_proj``).
    """

    name = "phi3_v"
    position_rule = "linear"
    auto_model = "AutoModelForCausalLM"
    per_token_keys = ()
    layout_token_names = ("special_image_token",)
    vision_pattern = r"model\.vision_embed_tokens\..*"  # the CLIP tower, separators and projection
    strict_weights = True
    per_image_keys = ("pixel_values", "image_sizes")
    max_images = None
    # The official chat format written out (its chat template takes text only); {text} is the user
    # turn: the image tags and the text (data/prompts.py).
    PROMPT = "<|user|>\n{text}<|end|>\n<|assistant|>\n"

    def render(self, processor, parts, text: str) -> str:
        placed, tags, body = has_placeholders(text), 0, []
        for kind, value in parts:
            if kind == "text":
                body.append(value)
            else:
                tags += 1
                body.append(f"<|image_{tags}|>" + ("" if placed else "\n"))
        return self.PROMPT.format(text="".join(body))

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

    def vllm_processor_kwargs(self, processor, cfg) -> dict | None:
        """model.num_crops, which the trainer's processor was loaded with; None: the checkpoint's."""
        return self.processor_kwargs(cfg) or None

    def image_problem(self, processor, image: Image.Image) -> str | None:
        return processor.image_processor.layout_problem(image)

    def load_processor(self, path: str, cfg):
        try:
            return Phi3VProcessor.from_pretrained(path, **self.processor_kwargs(cfg))
        except (OSError, ValueError) as e:
            raise UserError(f"cannot load the Phi-3-vision processor of {path}: {e}") from None
