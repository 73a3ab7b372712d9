"""Tiny vision-language models built offline from transformers config classes.

The model is a real transformers architecture (the class, processor, image and video processors
that the full-size checkpoints use) with a tiny config and random weights, and a word-level
tokenizer built with the ``tokenizers`` library from the synthetic vocabulary plus the family's
special tokens. Nothing is downloaded. The result is saved with ``save_pretrained`` and loads
with ``AutoModelForImageTextToText`` and ``AutoProcessor``.
"""

from __future__ import annotations

import functools
from pathlib import Path

import torch
from transformers import (
    PreTrainedTokenizerFast,
    Qwen2_5_VLConfig,
    Qwen2_5_VLForConditionalGeneration,
    Qwen2_5_VLProcessor,
    Qwen2VLConfig,
    Qwen2VLForConditionalGeneration,
    Qwen2VLImageProcessor,
    Qwen2VLProcessor,
    Qwen2VLVideoProcessor,
)

from vqa_grpo.data.synthetic import VOCABULARY
from vqa_grpo.errors import UserError
from vqa_grpo.models.phi3_v.tiny import build_tiny_phi3_v
from vqa_grpo.models.tiny_families import (
    build_tiny_gemma3,
    build_tiny_idefics3,
    build_tiny_llava,
    build_tiny_llava_next,
    build_tiny_phi4_multimodal,
)
from vqa_grpo.models.tiny_parts import (  # noqa: F401  PROMPT_WORDS, build_word_tokenizer: imported from here too
    PROMPT_WORDS,
    _fast_tokenizer,
    _save,
    _set_generation_ids,
    _words,
    build_word_tokenizer,
)

QWEN2_VL_SPECIALS = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
]

# Qwen2-VL's chat format (each image and video in its vision block, in order, and the text),
# written for this tokenizer.
QWEN2_VL_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif part['type'] == 'video' %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<|im_end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def build_tiny_qwen2_vl(
    out_dir: str | Path,
    *,
    seed: int = 0,
    words: list[str] | None = None,
    hidden: int = 128,
    layers: int = 4,
    vision_dim: int = 64,
    vision_depth: int = 2,
    heads: int = 4,
    vision_heads: int = 2,
) -> Path:
    """A ~1M-parameter Qwen2-VL (at the defaults) with its real processor, saved to ``out_dir``."""
    if words is None:
        words = [*VOCABULARY, *PROMPT_WORDS]
    raw = build_word_tokenizer(words, QWEN2_VL_SPECIALS)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=raw,
        unk_token="<|unk|>",
        pad_token="<|endoftext|>",
        eos_token="<|im_end|>",
        padding_side="left",
        extra_special_tokens={"image_token": "<|image_pad|>", "video_token": "<|video_pad|>"},
    )
    tokenizer.chat_template = QWEN2_VL_CHAT_TEMPLATE
    ids = {t: raw.token_to_id(t) for t in QWEN2_VL_SPECIALS}
    # M-RoPE splits each head's rotary half (head_dim / 2) into temporal, height and width parts.
    half = hidden // heads // 2
    mrope = [half // 4, (half - half // 4) // 2, half - half // 4 - (half - half // 4) // 2]
    config = Qwen2VLConfig(
        text_config=dict(
            vocab_size=raw.get_vocab_size(),
            hidden_size=hidden,
            intermediate_size=3 * hidden,
            num_hidden_layers=layers,
            num_attention_heads=heads,
            num_key_value_heads=2,
            max_position_embeddings=2048,
            rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": mrope},
            bos_token_id=None,
            eos_token_id=ids["<|im_end|>"],
            pad_token_id=ids["<|endoftext|>"],
        ),
        vision_config=dict(
            depth=vision_depth, embed_dim=vision_dim, hidden_size=hidden, num_heads=vision_heads, mlp_ratio=2
        ),
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=True,
    )
    torch.manual_seed(seed)
    model = Qwen2VLForConditionalGeneration(config)
    model.generation_config.eos_token_id = ids["<|im_end|>"]
    model.generation_config.pad_token_id = ids["<|endoftext|>"]
    model.generation_config.bos_token_id = None
    # Images up to 224x224 keep their size (rounded to 28 px); larger ones are scaled down.
    image_processor = Qwen2VLImageProcessor(min_pixels=56 * 56, max_pixels=224 * 224)
    video_processor = Qwen2VLVideoProcessor(min_pixels=56 * 56, max_pixels=224 * 224)
    processor = Qwen2VLProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        video_processor=video_processor,
        chat_template=QWEN2_VL_CHAT_TEMPLATE,
    )
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    processor.save_pretrained(out)
    return out


def build_tiny_qwen2_5_vl(
    out_dir: str | Path, *, seed: int = 0, words: list[str] | None = None, hidden: int = 64
) -> Path:
    """Qwen2.5-VL: Qwen2-VL's prompt and processor outputs; a windowed-attention vision tower with
    RMSNorm and a gated MLP, and ``out_hidden_size`` projecting to the text model."""
    raw = build_word_tokenizer(_words(words), QWEN2_VL_SPECIALS)
    ids = {t: raw.token_to_id(t) for t in QWEN2_VL_SPECIALS}
    tokenizer = _fast_tokenizer(
        raw,
        QWEN2_VL_CHAT_TEMPLATE,
        pad_token="<|endoftext|>",
        eos_token="<|im_end|>",
        extra_special_tokens={"image_token": "<|image_pad|>", "video_token": "<|video_pad|>"},
    )
    heads = 4
    half = hidden // heads // 2
    mrope = [half // 4, (half - half // 4) // 2, half - half // 4 - (half - half // 4) // 2]
    config = Qwen2_5_VLConfig(
        text_config=dict(
            vocab_size=raw.get_vocab_size(),
            hidden_size=hidden,
            intermediate_size=2 * hidden,
            num_hidden_layers=2,
            num_attention_heads=heads,
            num_key_value_heads=2,
            max_position_embeddings=2048,
            rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": mrope},
            bos_token_id=None,
            eos_token_id=ids["<|im_end|>"],
            pad_token_id=ids["<|endoftext|>"],
        ),
        # window_size 56 px = 2x2 merged tokens; block 1 attends over the whole image.
        vision_config=dict(
            depth=2,
            hidden_size=32,
            intermediate_size=64,
            num_heads=2,
            out_hidden_size=hidden,
            window_size=56,
            fullatt_block_indexes=[1],
        ),
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=True,
    )
    torch.manual_seed(seed)
    model = Qwen2_5_VLForConditionalGeneration(config)
    _set_generation_ids(model, eos=ids["<|im_end|>"], pad=ids["<|endoftext|>"])
    pixels = dict(min_pixels=56 * 56, max_pixels=224 * 224)
    processor = Qwen2_5_VLProcessor(
        image_processor=Qwen2VLImageProcessor(**pixels),
        tokenizer=tokenizer,
        video_processor=Qwen2VLVideoProcessor(**pixels),
        chat_template=QWEN2_VL_CHAT_TEMPLATE,
    )
    return _save(model, processor, out_dir)


BUILDERS = {
    "qwen2_vl": build_tiny_qwen2_vl,
    "qwen2_5_vl": build_tiny_qwen2_5_vl,
    "llava": build_tiny_llava,
    "llava_next": build_tiny_llava_next,
    "idefics3": build_tiny_idefics3,
    "smolvlm": functools.partial(build_tiny_idefics3, smolvlm=True),
    "gemma3": build_tiny_gemma3,
    "phi4_multimodal": build_tiny_phi4_multimodal,
    "phi3_v": build_tiny_phi3_v,
}
TINY_FAMILIES = tuple(BUILDERS)


def build_tiny(family: str, out_dir: str | Path, *, seed: int = 0) -> Path:
    """Build the tiny model of ``family`` into ``out_dir`` (the CLI's ``model tiny``)."""
    if family not in BUILDERS:
        raise UserError(f"no tiny builder for family {family!r}; choose one of {', '.join(BUILDERS)}")
    return BUILDERS[family](out_dir, seed=seed)
