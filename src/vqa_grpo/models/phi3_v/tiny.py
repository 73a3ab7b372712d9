"""A tiny random Phi-3-vision (``vqa-grpo model tiny --family phi3_v``), in the official key layout.

The text model is a 2-layer Phi-3 with Phi-3-vision's RoPE ("su" scaling, 128k positions over
4k); the vision tower is a small CLIP on the real 336 px crops with 14 px patches, so each view
still makes 12 x 12 merged features and a prompt the real number of image tokens (757 for a
200 x 120 image at num_crops 4). The tokenizer is word-level over the synthetic vocabulary with
the official special tokens; each text chunk starts with ``<s>`` as the official tokenizer's do.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from safetensors.torch import save_file
from tokenizers import processors
from transformers import PreTrainedTokenizerFast

from vqa_grpo.models.phi3_v.configuration import Phi3VConfig
from vqa_grpo.models.phi3_v.modeling import Phi3VForCausalLM
from vqa_grpo.models.phi3_v.processing import CHAT_TEMPLATE, Phi3VImageProcessor, Phi3VProcessor
from vqa_grpo.models.tiny_parts import _save, _words, build_word_tokenizer

PHI3_V_SPECIALS = ["<|endoftext|>", "<s>", "<unk>", "<|system|>", "<|user|>", "<|assistant|>", "<|end|>", "<|image|>"]


TINY_VISION = dict(
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=2,
    image_size=336,
    patch_size=14,
    hidden_act="quick_gelu",
    projection_dim=32,
)


def tiny_phi3_v_config(
    vocab_size: int,
    *,
    hidden: int = 64,
    layers: int = 2,
    heads: int = 4,
    intermediate: int | None = None,
    vision: dict | None = None,
    eos: int,
    pad: int,
    bos: int,
):
    """A small Phi3VConfig; ``vision`` a CLIPVisionConfig dict (default: a 32-wide, 2-layer CLIP)."""
    half = hidden // heads // 2
    vision = dict(vision or TINY_VISION)
    return Phi3VConfig(
        vocab_size=vocab_size,
        hidden_size=hidden,
        intermediate_size=intermediate or 2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=heads,
        max_position_embeddings=131072,
        original_max_position_embeddings=4096,
        sliding_window=131072,
        bos_token_id=bos,
        eos_token_id=eos,
        pad_token_id=pad,
        architectures=["Phi3VForCausalLM"],
        rope_scaling={
            "type": "su",
            "short_factor": [1.0 + 0.1 * i for i in range(half)],
            "long_factor": [2.0 + 0.5 * i for i in range(half)],
        },
        img_processor={
            "name": "clip_vision_model",
            "model_name": "tiny-clip",
            "image_dim_out": vision["hidden_size"],
            "num_img_tokens": 144,
            "vision_config": vision,
        },
    )


def build_tiny_phi3_v(
    out_dir: str | Path,
    *,
    seed: int = 0,
    words: list[str] | None = None,
    hidden: int = 64,
    layers: int = 2,
    vision: dict | None = None,
    num_crops: int = 4,
    full_text: bool = False,
) -> Path:
    """The tiny Phi-3-vision; ``vision`` and ``hidden``/``layers`` size it (benchmarks/grpo_step.py
    builds a Phi-3-vision-shaped one: the real CLIP ViT-L/14-336, a reduced text model).
    ``full_text``: Phi-3-mini's text model instead (hidden 3072, 32 layers of 32 heads, MLP 8192,
    the official 32,064-entry embedding; the tokenizer stays word-level)."""
    raw = build_word_tokenizer(_words(words), PHI3_V_SPECIALS, unk="<unk>")
    ids = {t: raw.token_to_id(t) for t in PHI3_V_SPECIALS}
    raw.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", ids["<s>"])])
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=raw,
        bos_token="<s>",
        eos_token="<|endoftext|>",
        pad_token="<|endoftext|>",
        unk_token="<unk>",
        padding_side="left",
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    sizes = (
        dict(hidden=3072, layers=32, heads=32, intermediate=8192) if full_text else dict(hidden=hidden, layers=layers)
    )
    config = tiny_phi3_v_config(
        32064 if full_text else raw.get_vocab_size(),
        **sizes,
        vision=vision,
        eos=ids["<|endoftext|>"],
        pad=ids["<|endoftext|>"],
        bos=ids["<s>"],
    )
    torch.manual_seed(seed)
    model = Phi3VForCausalLM(config)
    model.generation_config.eos_token_id = [ids["<|endoftext|>"], ids["<|end|>"]]
    model.generation_config.pad_token_id = ids["<|endoftext|>"]
    model.generation_config.bos_token_id = ids["<s>"]
    processor = Phi3VProcessor(Phi3VImageProcessor(num_crops=num_crops), tokenizer, "PreTrainedTokenizerFast")
    return _save(model, processor, out_dir)


# The text model of a tiny copy of a hub checkpoint: 2 heads of 96 (the hub's head size, so the
# 48-entry "su" factor lists of its config.json stay valid), 2 layers, the real vocabulary.
HUB_TINY_TEXT = dict(
    hidden_size=192, num_attention_heads=2, num_key_value_heads=2, intermediate_size=256, num_hidden_layers=2
)
HUB_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "preprocessor_config.json")


def tiny_hub_config_dict(hub_dir: str | Path, vision: dict | None = None) -> dict:
    """The hub's config.json as a dict with only the sizes shrunk: every other key (the
    ``_attn_implementation`` and ``torch_dtype`` it was published with, ``auto_map``, RoPE) as it is."""
    config = json.loads((Path(hub_dir) / "config.json").read_text())
    vision = dict(vision or TINY_VISION)
    config.update(HUB_TINY_TEXT)
    config["img_processor"] = {
        **config["img_processor"],
        "image_dim_out": vision["hidden_size"],
        "vision_config": vision,
    }
    return config


def build_tiny_phi3_v_like(
    hub_dir: str | Path, out_dir: str | Path, *, seed: int = 0, vision: dict | None = None
) -> Path:
    """A tiny random Phi-3-vision laid out as the download in ``hub_dir`` is: its config.json with
    the sizes shrunk (``tiny_hub_config_dict``), its tokenizer and preprocessor files copied byte for
    byte, bfloat16 weights in the official names, sharded as the hub's model.safetensors.index.json
    shards them. The config is read from the hub's file and shrunk in memory, never edited on disk;
    the model is built with sdpa whatever the file asks for (flash-attn may be absent)."""
    hub_dir, out = Path(hub_dir), Path(out_dir)
    written = tiny_hub_config_dict(hub_dir, vision)
    config = Phi3VConfig.from_dict(dict(written))
    config._attn_implementation = "sdpa"
    torch.manual_seed(seed)
    model = Phi3VForCausalLM(config).to(torch.bfloat16)
    state = {k: v.contiguous() for k, v in model.state_dict().items() if ".wte." not in k}
    out.mkdir(parents=True, exist_ok=True)
    index_file = hub_dir / "model.safetensors.index.json"
    hub_map = json.loads(index_file.read_text())["weight_map"] if index_file.is_file() else {}
    weight_map = {k: hub_map.get(k, "model.safetensors") for k in state}  # each weight in the hub's shard
    for shard in sorted(set(weight_map.values())):
        save_file({k: state[k] for k, f in weight_map.items() if f == shard}, str(out / shard), {"format": "pt"})
    if len(set(weight_map.values())) > 1:
        total = sum(t.numel() * t.element_size() for t in state.values())
        index = {"metadata": {"total_size": total}, "weight_map": weight_map}
        (out / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
    (out / "config.json").write_text(json.dumps(written, indent=2) + "\n")
    for name in HUB_FILES:
        shutil.copyfile(hub_dir / name, out / name)
    return out
