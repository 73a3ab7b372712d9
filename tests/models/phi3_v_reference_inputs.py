"""Shared inputs for comparing the native Phi-3-vision code with Microsoft's remote code.

This module is imported both by the project's tests (project venv, current
transformers) and by ``scripts/phi3_v_reference.py`` running in a separate
reference venv with transformers 4.40.2 and the original remote code.  It must
therefore stay free of ``vqa_grpo`` imports and of anything version specific:
it only uses torch, numpy, PIL, json, zlib and pathlib.

Everything here is deterministic: the images, the prompt, the reduced model
config and the weight values (which depend only on each parameter's name and
shape, never on any init code), so both sides build bit-identical inputs.
"""

from __future__ import annotations

import json
import zlib
from pathlib import Path

import numpy as np
import torch
from PIL import Image

# /work/main/tests/models/<this file> -> parents[3] == /work; the shared folder lies beside the repo.
SHARED = Path(__file__).resolve().parents[3] / "shared" / "models" / "phi-3-vision-128k-instruct"

# (width, height) pairs: landscape, portrait, exact crop size, 4:3, very wide,
# tiny, 16:9 large and very tall/narrow with odd sizes.
IMAGE_SIZES: list[tuple[int, int]] = [
    (200, 120),
    (120, 200),
    (336, 336),
    (500, 375),
    (1000, 200),
    (64, 64),
    (1280, 720),
    (37, 411),
]

QUESTION = "What color is the circle?"
PROMPT = "<|user|>\n<|image_1|>\n" + QUESTION + " Answer with a single word or short phrase.<|end|>\n<|assistant|>\n"

# Text model reduction used by reference_config(). head_dim stays 192 / 2 = 96, so
# the 48-entry su/longrope factor lists in config.json remain valid.
REDUCED_TEXT = {
    "hidden_size": 192,
    "num_attention_heads": 2,
    "num_key_value_heads": 2,
    "intermediate_size": 256,
    "num_hidden_layers": 2,
}

_NORM_SUFFIXES = (
    "norm.weight",
    "layernorm.weight",
    "layrnorm.weight",
    "layer_norm1.weight",
    "layer_norm2.weight",
)


def make_image(width: int, height: int, seed: int = 0) -> Image.Image:
    """RGB uint8 noise image of the given size, deterministic in (width, height, seed)."""
    rng = np.random.RandomState(seed + width * 7919 + height)
    arr = rng.randint(0, 256, (height, width, 3)).astype(np.uint8)
    return Image.fromarray(arr).convert("RGB")


def reference_config(vision_layers: int | None = None) -> dict:
    """The real checkpoint's config.json as a dict, with the text model reduced.

    Vision settings ("img_processor", "embd_layer"), rope_scaling, vocab size and
    everything else are kept as in the file; "_attn_implementation" is removed
    (callers choose eager attention themselves).  ``vision_layers`` is accepted
    for symmetry with the callers but is *not* put in the dict: in the remote
    code the CLIP depth is the constant CLIP_VIT_LARGE_PATCH14_336_CONFIG, not a
    config field.
    """
    del vision_layers  # see docstring
    with open(SHARED / "config.json", encoding="utf-8") as fh:
        cfg = json.load(fh)
    cfg.update(REDUCED_TEXT)
    cfg.pop("_attn_implementation", None)
    return cfg


def _is_norm_weight(name: str) -> bool:
    return name.endswith(_NORM_SUFFIXES)


def fill_weights(named_tensors: dict[str, torch.Tensor], seed: int = 0) -> dict[str, torch.Tensor]:
    """Deterministic float32 values for every name, depending only on (name, shape, seed).

    norm weights -> 1 + 0.1 * x; glb_GN / sub_GN -> 0.5 * x; lm_head.weight -> 0.2 * x;
    everything else -> 0.02 * x, with x ~ N(0, 1) from a generator seeded by the name.
    """
    out: dict[str, torch.Tensor] = {}
    for name, tensor in named_tensors.items():
        g = torch.Generator().manual_seed(seed * 1_000_003 + zlib.crc32(name.encode()))
        x = torch.randn(tuple(tensor.shape), generator=g, dtype=torch.float32)
        leaf = name.rsplit(".", 1)[-1]
        if _is_norm_weight(name):
            value = 1.0 + 0.1 * x
        elif leaf in ("glb_GN", "sub_GN"):
            value = 0.5 * x
        elif name == "lm_head.weight" or name.endswith(".lm_head.weight"):
            value = 0.2 * x
        else:
            value = 0.02 * x
        out[name] = value
    return out


def reference_labels(input_ids: torch.Tensor) -> torch.Tensor:
    """Labels for the loss: input_ids with every image placeholder (id < 0) set to -100."""
    labels = input_ids.clone()
    labels[labels < 0] = -100
    return labels
