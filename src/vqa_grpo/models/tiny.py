"""Tiny vision-language models built offline from transformers config classes.

The model is a real transformers architecture (the class, processor, image and video processors
that the full-size checkpoints use) with a tiny config and random weights, and a word-level
tokenizer built with the ``tokenizers`` library from the synthetic vocabulary plus the family's
special tokens. Nothing is downloaded. The result is saved with ``save_pretrained`` and loads
with ``AutoModelForImageTextToText`` and ``AutoProcessor``.
"""

from __future__ import annotations

from pathlib import Path

import torch
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers

from vqa_grpo.errors import UserError

TINY_FAMILIES = ("qwen2_vl",)

# Words every prompt may use besides the synthetic vocabulary: the chat roles and the seed's
# instruction "Answer with a single word or short phrase."
PROMPT_WORDS = ("system", "user", "assistant", "answer", "with", "a", "single", "word", "or", "short", "phrase", ".", "?", ",")

QWEN2_VL_SPECIALS = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
]

# Qwen2-VL's chat format (one image per user turn, then the text), written for this tokenizer.
QWEN2_VL_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<|im_end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def build_word_tokenizer(words: list[str], specials: list[str], unk: str = "<|unk|>") -> Tokenizer:
    """A word-level tokenizer: lower-cased, split on whitespace and punctuation, special tokens first."""
    vocab: dict[str, int] = {}
    for tok in [*specials, unk, *sorted(set(words))]:
        vocab.setdefault(tok, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token=unk))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()])
    tok.add_special_tokens(specials)
    return tok


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
    from transformers import (
        PreTrainedTokenizerFast,
        Qwen2VLConfig,
        Qwen2VLForConditionalGeneration,
        Qwen2VLImageProcessor,
        Qwen2VLProcessor,
        Qwen2VLVideoProcessor,
    )

    if words is None:
        from vqa_grpo.data.synthetic import VOCABULARY

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
        vision_config=dict(depth=vision_depth, embed_dim=vision_dim, hidden_size=hidden, num_heads=vision_heads, mlp_ratio=2),
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


def build_tiny(family: str, out_dir: str | Path, *, seed: int = 0) -> Path:
    """Build the tiny model of ``family`` into ``out_dir`` (the CLI's ``model tiny``)."""
    builders = {"qwen2_vl": build_tiny_qwen2_vl}
    if family not in builders:
        raise UserError(f"no tiny builder for family {family!r}; available: {', '.join(builders)}")
    return builders[family](out_dir, seed=seed)
