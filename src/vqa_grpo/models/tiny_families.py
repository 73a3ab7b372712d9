"""The tiny builders of LLaVA, Idefics3, Gemma 3, LLaVA-NeXT and Phi-4-multimodal (tiny.py holds
Qwen2-VL's and the registry): smaller still (hidden 64, 2 layers), for the per-family tests."""

from __future__ import annotations

from pathlib import Path

import torch
import transformers as tf
from transformers import (
    CLIPImageProcessor,
    Gemma3Config,
    Gemma3ForConditionalGeneration,
    Gemma3ImageProcessor,
    Gemma3Processor,
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaNextConfig,
    LlavaNextForConditionalGeneration,
    LlavaNextImageProcessor,
    LlavaNextProcessor,
    LlavaProcessor,
    Phi4MultimodalConfig,
    Phi4MultimodalFeatureExtractor,
    Phi4MultimodalForCausalLM,
    Phi4MultimodalImageProcessor,
    Phi4MultimodalProcessor,
)

from vqa_grpo.models.tiny_parts import (
    _fast_tokenizer,
    _llama_text,
    _save,
    _set_generation_ids,
    _words,
    build_word_tokenizer,
)

LLAVA_SPECIALS = ["<pad>", "<s>", "</s>", "<image>"]
# llava-hf's LLaVA-1.5 format: "USER: <image>\n{text} ASSISTANT:", the answer ends with </s>. As
# llava-hf's own templates do, a turn's images all come first, then its texts.
LLAVA_CHAT_TEMPLATE = (
    "{% for message in messages %}{{ message['role'].upper() + ': ' }}"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] if part['type'] == 'image' %}<image>\n{% endfor %}"
    "{% for part in message['content'] if part['type'] == 'text' %}{{ part['text'] }}{% endfor %}"
    "{% endif %} {% endfor %}"
    "{% if add_generation_prompt %}ASSISTANT:{% endif %}"
)


def build_tiny_llava(out_dir: str | Path, *, seed: int = 0, words: list[str] | None = None, hidden: int = 64) -> Path:
    """LLaVA-1.5: a CLIP vision tower at 56 px (patch 14: 16 image tokens after dropping CLS), a
    2-layer MLP projector and a Llama text model. Every image is resized to 56 px, so every prompt
    holds the same 16 image tokens whatever the image's size."""
    raw = build_word_tokenizer(_words(words, (":",)), LLAVA_SPECIALS)
    ids = {t: raw.token_to_id(t) for t in LLAVA_SPECIALS}
    tokenizer = _fast_tokenizer(
        raw,
        LLAVA_CHAT_TEMPLATE,
        pad_token="<pad>",
        bos_token="<s>",
        eos_token="</s>",
        extra_special_tokens={"image_token": "<image>"},
    )
    config = LlavaConfig(
        text_config=_llama_text(raw.get_vocab_size(), hidden, 2, eos=ids["</s>"], pad=ids["<pad>"], bos=ids["<s>"]),
        vision_config=dict(
            model_type="clip_vision_model",
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            image_size=56,
            patch_size=14,
            projection_dim=32,
        ),
        image_token_index=ids["<image>"],
        image_seq_length=16,
        vision_feature_layer=-2,
        vision_feature_select_strategy="default",
    )
    torch.manual_seed(seed)
    model = LlavaForConditionalGeneration(config)
    _set_generation_ids(model, eos=ids["</s>"], pad=ids["<pad>"], bos=ids["<s>"])
    image_processor = CLIPImageProcessor(size={"shortest_edge": 56}, crop_size={"height": 56, "width": 56})
    processor = LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=14,
        vision_feature_select_strategy="default",
        chat_template=LLAVA_CHAT_TEMPLATE,
        num_additional_image_tokens=1,
    )
    return _save(model, processor, out_dir)


IDEFICS3_SPECIALS = [
    "<|endoftext|>",
    "<|im_start|>",
    "<end_of_utterance>",
    "<fake_token_around_image>",
    "<image>",
    "<global-img>",
    *[f"<row_{i}_col_{j}>" for i in range(1, 7) for j in range(1, 7)],
]
# SmolVLM's format: "<|im_start|>User:<image>{text}<end_of_utterance>\nAssistant:".
IDEFICS3_CHAT_TEMPLATE = (
    "<|im_start|>{% for message in messages %}{{ message['role'] | capitalize }}:"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}<image>{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<end_of_utterance>\n{% endfor %}"
    "{% if add_generation_prompt %}Assistant:{% endif %}"
)


def build_tiny_idefics3(
    out_dir: str | Path, *, seed: int = 0, words: list[str] | None = None, hidden: int = 64, smolvlm: bool = False
) -> Path:
    """Idefics3 (SmolVLM): a SigLIP-like tower on 32 px tiles (patch 8, pixel shuffle 2: 4 image
    tokens a tile). Images larger than 32 px are split into up to 2x2 tiles plus the whole image
    downscaled, so images of different sizes give different numbers of tiles and image tokens;
    ``pixel_values`` [B, tiles, 3, 32, 32] is zero-padded to the batch's most tiles, with
    ``pixel_attention_mask`` [B, tiles, 32, 32]. ``smolvlm``: the same model in transformers'
    SmolVLM classes (model_type ``smolvlm``), which take the same adapter."""
    kind = "SmolVLM" if smolvlm else "Idefics3"
    config_cls, model_cls = getattr(tf, f"{kind}Config"), getattr(tf, f"{kind}ForConditionalGeneration")
    image_cls, processor_cls = getattr(tf, f"{kind}ImageProcessor"), getattr(tf, f"{kind}Processor")

    raw = build_word_tokenizer(_words(words, (":",)), IDEFICS3_SPECIALS)
    ids = {t: raw.token_to_id(t) for t in IDEFICS3_SPECIALS}
    tokenizer = _fast_tokenizer(
        raw,
        IDEFICS3_CHAT_TEMPLATE,
        pad_token="<|endoftext|>",
        bos_token="<|im_start|>",
        eos_token="<end_of_utterance>",
        extra_special_tokens={"image_token": "<image>"},
    )
    config = config_cls(
        text_config=_llama_text(
            raw.get_vocab_size(),
            hidden,
            2,
            eos=ids["<end_of_utterance>"],
            pad=ids["<|endoftext|>"],
            bos=ids["<|im_start|>"],
        ),
        vision_config=dict(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            image_size=32,
            patch_size=8,
        ),
        image_token_id=ids["<image>"],
        scale_factor=2,
        pad_token_id=ids["<|endoftext|>"],
    )
    torch.manual_seed(seed)
    model = model_cls(config)
    _set_generation_ids(model, eos=ids["<end_of_utterance>"], pad=ids["<|endoftext|>"], bos=ids["<|im_start|>"])
    tile = {"longest_edge": 32}
    image_processor = image_cls(size={"longest_edge": 64}, max_image_size=tile)
    # SmolVLM's video processor resizes each frame to a square of max_image_size: one untiled
    # tile. Its default max_image_size (364 px) would not fit this tower's 32 px images.
    videos = {"video_processor": tf.SmolVLMVideoProcessor(size=tile, max_image_size=tile)} if smolvlm else {}
    processor = processor_cls(
        image_processor=image_processor,
        tokenizer=tokenizer,
        image_seq_len=4,
        chat_template=IDEFICS3_CHAT_TEMPLATE,
        **videos,
    )
    return _save(model, processor, out_dir)


GEMMA3_SPECIALS = [
    "<pad>",
    "<eos>",
    "<bos>",
    "<start_of_turn>",
    "<end_of_turn>",
    "<start_of_image>",
    "<end_of_image>",
    "<image_soft_token>",
]
# Gemma 3's format: "<bos><start_of_turn>user\n<start_of_image>{text}<end_of_turn>\n<start_of_turn>model\n".
GEMMA3_CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "<start_of_turn>{{ 'model' if message['role'] == 'assistant' else message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}<start_of_image>{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<end_of_turn>\n{% endfor %}"
    "{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}"
)


def build_tiny_gemma3(
    out_dir: str | Path, *, seed: int = 0, words: list[str] | None = None, hidden: int = 64, pan_and_scan: bool = False
) -> Path:
    """Gemma 3: a SigLIP tower at 32 px (patch 8: 4x4 patches, average-pooled to 2x2 = 4 image
    tokens between <start_of_image> and <end_of_image>), ``token_type_ids`` marking the image
    tokens (bidirectional attention among them). Gemma 3 built from its config initialises the
    multi-modal projector's weight to zeros, so every image would reach the text model as zeros:
    it is re-initialised here with the text model's initializer range. ``pan_and_scan``: the saved
    image processor config turns it on (crops of at least 8 px, at most 4 an image), as a
    checkpoint's preprocessor config does."""
    raw = build_word_tokenizer(_words(words, ("model",)), GEMMA3_SPECIALS)
    ids = {t: raw.token_to_id(t) for t in GEMMA3_SPECIALS}
    tokenizer = _fast_tokenizer(
        raw,
        GEMMA3_CHAT_TEMPLATE,
        pad_token="<pad>",
        bos_token="<bos>",
        eos_token="<eos>",
        extra_special_tokens={
            "image_token": "<image_soft_token>",
            "boi_token": "<start_of_image>",
            "eoi_token": "<end_of_image>",
        },
    )
    config = Gemma3Config(
        text_config=dict(
            vocab_size=raw.get_vocab_size(),
            hidden_size=hidden,
            intermediate_size=2 * hidden,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            head_dim=16,
            query_pre_attn_scalar=16,
            sliding_window=64,
            max_position_embeddings=2048,
            bos_token_id=ids["<bos>"],
            eos_token_id=[ids["<eos>"], ids["<end_of_turn>"]],
            pad_token_id=ids["<pad>"],
        ),
        vision_config=dict(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            image_size=32,
            patch_size=8,
        ),
        mm_tokens_per_image=4,
        boi_token_index=ids["<start_of_image>"],
        eoi_token_index=ids["<end_of_image>"],
        image_token_index=ids["<image_soft_token>"],
    )
    torch.manual_seed(seed)
    model = Gemma3ForConditionalGeneration(config)
    projector = model.model.multi_modal_projector.mm_input_projection_weight
    with torch.no_grad():
        projector.normal_(0.0, config.text_config.initializer_range)
    _set_generation_ids(model, eos=[ids["<eos>"], ids["<end_of_turn>"]], pad=ids["<pad>"], bos=ids["<bos>"])
    crops = dict(do_pan_and_scan=True, pan_and_scan_min_crop_size=8, pan_and_scan_max_num_crops=4)
    image_processor = Gemma3ImageProcessor(size={"height": 32, "width": 32}, **(crops if pan_and_scan else {}))
    processor = Gemma3Processor(
        image_processor=image_processor, tokenizer=tokenizer, image_seq_length=4, chat_template=GEMMA3_CHAT_TEMPLATE
    )
    return _save(model, processor, out_dir)


def build_tiny_llava_next(
    out_dir: str | Path, *, seed: int = 0, words: list[str] | None = None, hidden: int = 64
) -> Path:
    """LLaVA-NeXT: LLaVA's tower at 28 px (patch 14: 2x2 patches) with "anyres": each image is
    resized to the closest of the grid pinpoints (28x28 up to 56x56), cut into 28 px tiles plus
    the whole image, and unpadded, so the number of image tokens depends on the image's size;
    ``pixel_values`` [B, tiles, 3, 28, 28] and ``image_sizes`` [B, 2]."""
    raw = build_word_tokenizer(_words(words, (":",)), LLAVA_SPECIALS)
    ids = {t: raw.token_to_id(t) for t in LLAVA_SPECIALS}
    tokenizer = _fast_tokenizer(
        raw,
        LLAVA_CHAT_TEMPLATE,
        pad_token="<pad>",
        bos_token="<s>",
        eos_token="</s>",
        extra_special_tokens={"image_token": "<image>"},
    )
    pinpoints = [[28, 28], [28, 56], [56, 28], [56, 56]]
    config = LlavaNextConfig(
        text_config=_llama_text(raw.get_vocab_size(), hidden, 2, eos=ids["</s>"], pad=ids["<pad>"], bos=ids["<s>"]),
        vision_config=dict(
            model_type="clip_vision_model",
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            image_size=28,
            patch_size=14,
            projection_dim=32,
        ),
        image_token_index=ids["<image>"],
        image_grid_pinpoints=pinpoints,
        vision_feature_layer=-2,
        vision_feature_select_strategy="default",
        image_seq_length=4,
    )
    torch.manual_seed(seed)
    model = LlavaNextForConditionalGeneration(config)
    _set_generation_ids(model, eos=ids["</s>"], pad=ids["<pad>"], bos=ids["<s>"])
    image_processor = LlavaNextImageProcessor(
        size={"shortest_edge": 28},
        crop_size={"height": 28, "width": 28},
        image_grid_pinpoints=pinpoints,
    )
    processor = LlavaNextProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=14,
        vision_feature_select_strategy="default",
        chat_template=LLAVA_CHAT_TEMPLATE,
        num_additional_image_tokens=1,
    )
    return _save(model, processor, out_dir)


PHI4_SPECIALS = ["<|endoftext|>", "<|user|>", "<|assistant|>", "<|end|>", "<|image|>", "<|audio|>"]
# Phi-4-multimodal's format: "<|user|><|image|>{text}<|end|><|assistant|>".
PHI4_CHAT_TEMPLATE = (
    "{% for message in messages %}<|{{ message['role'] }}|>"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}<|image|>{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<|end|>{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


def build_tiny_phi4_multimodal(
    out_dir: str | Path, *, seed: int = 0, words: list[str] | None = None, hidden: int = 64
) -> Path:
    """Phi-4-multimodal: a SigLIP-like tower on 448 px crops (patch 14: 32x32 patches, pooled
    2x2), with at most 2 crops per image plus the global view. The processor's token count is
    written for 448 px crops (256 tokens a view, plus separators), so the crops keep that size and
    a prompt holds some 400-650 image tokens; the tower itself is tiny. The model also carries a
    (tiny, unused) audio encoder: Phi-4-multimodal always builds one."""
    raw = build_word_tokenizer(_words(words), PHI4_SPECIALS)
    ids = {t: raw.token_to_id(t) for t in PHI4_SPECIALS}
    tokenizer = _fast_tokenizer(
        raw,
        PHI4_CHAT_TEMPLATE,
        pad_token="<|endoftext|>",
        eos_token="<|end|>",
        extra_special_tokens={"image_token": "<|image|>", "audio_token": "<|audio|>"},
    )
    config = Phi4MultimodalConfig(
        vocab_size=raw.get_vocab_size(),
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        original_max_position_embeddings=2048,
        bos_token_id=None,
        eos_token_id=[ids["<|end|>"]],
        pad_token_id=ids["<|endoftext|>"],
        vision_config=dict(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            image_size=448,
            patch_size=14,
            crop_size=448,
            image_token_id=ids["<|image|>"],
        ),
        audio_config=dict(
            hidden_size=32,
            intermediate_size=64,
            num_blocks=1,
            num_attention_heads=2,
            ext_pw_out_channel=32,
            depthwise_separable_out_channel=32,
            nemo_conv_channels=32,
            audio_token_id=ids["<|audio|>"],
        ),
    )
    torch.manual_seed(seed)
    model = Phi4MultimodalForCausalLM(config)
    _set_generation_ids(model, eos=[ids["<|end|>"]], pad=ids["<|endoftext|>"])
    processor = Phi4MultimodalProcessor(
        image_processor=Phi4MultimodalImageProcessor(dynamic_hd=2),
        audio_processor=Phi4MultimodalFeatureExtractor(),
        tokenizer=tokenizer,
        chat_template=PHI4_CHAT_TEMPLATE,
    )
    return _save(model, processor, out_dir)
