"""Phi-3-vision's config (model_type ``phi3_v``), read and written in the official checkpoints' layout.

The text model is transformers' Phi-3 (Phi-3-mini), so the config is ``Phi3Config`` with two
more fields, as in microsoft/Phi-3-vision-128k-instruct's and Phi-3.5-vision-instruct's
config.json:

- ``img_processor``: the vision tower: ``{"name": "clip_vision_model", "model_name":
  "openai/clip-vit-large-patch14-336", "image_dim_out": 1024, "num_img_tokens": 144}``; the
  tower is CLIP ViT-L/14 at 336 px (``CLIP_VIT_L14_336``). A ``vision_config`` entry (a
  CLIPVisionConfig dict) replaces it: the tiny models of the tests carry a small tower that way.
- ``embd_layer``: how image features become token embeddings (HD transform, learnable
  separators, ``sub_glb`` order, 2-layer MLP projection).

The official files name RoPE ``rope_scaling`` with ``type`` "su" (Phi-3-vision) or "longrope"
(Phi-3.5-vision) and ``rope_theta`` at the top; transformers 5 calls it ``rope_parameters``.
Both spellings are read, and ``to_dict`` writes the official one back, so a saved config.json
reads in the official code too.
"""

from __future__ import annotations

import copy

from huggingface_hub.dataclasses import strict
from transformers import CLIPVisionConfig, Phi3Config

# openai/clip-vit-large-patch14-336's vision tower (Phi-3-vision's), as a CLIPVisionConfig.
CLIP_VIT_L14_336 = dict(
    hidden_size=1024,
    intermediate_size=4096,
    num_hidden_layers=24,
    num_attention_heads=16,
    num_channels=3,
    image_size=336,
    patch_size=14,
    hidden_act="quick_gelu",
    layer_norm_eps=1e-5,
    projection_dim=768,
)
OFFICIAL_IMG_PROCESSOR = {
    "image_dim_out": 1024,
    "model_name": "openai/clip-vit-large-patch14-336",
    "name": "clip_vision_model",
    "num_img_tokens": 144,
}
OFFICIAL_EMBD_LAYER = {
    "embedding_cls": "image",
    "hd_transform_order": "sub_glb",
    "projection_cls": "mlp",
    "use_hd_transform": True,
    "with_learnable_separator": True,
}


@strict
class Phi3VConfig(Phi3Config):
    """Phi3Config plus the vision fields of the official ``phi3_v`` config.json."""

    model_type = "phi3_v"

    img_processor: dict | None = None
    embd_layer: dict | None = None

    def __post_init__(self, **kwargs):
        if self.img_processor is None:
            self.img_processor = dict(OFFICIAL_IMG_PROCESSOR)
        if self.embd_layer is None:
            self.embd_layer = dict(OFFICIAL_EMBD_LAYER)
        super().__post_init__(**kwargs)

    def convert_rope_params_to_dict(
        self, default_theta: int | float = 10_000.0, ignore_keys: set | None = None, **kwargs
    ):
        scaling = kwargs.get("rope_scaling")
        if isinstance(scaling, dict) and "type" in scaling:  # the official spelling: {"type": "su", ...}
            scaling = dict(scaling)
            self._official_rope_type = scaling.pop("type")
            scaling["rope_type"] = (
                "longrope" if self._official_rope_type in ("su", "longrope") else self._official_rope_type
            )
            scaling.setdefault("original_max_position_embeddings", self.original_max_position_embeddings)
            # The factor the official code derives (max / original positions), stated: the same
            # inverse frequencies and attention factor, without transformers' warning.
            scaling.setdefault("factor", self.max_position_embeddings / scaling["original_max_position_embeddings"])
            kwargs["rope_scaling"] = scaling
        return super().convert_rope_params_to_dict(default_theta=default_theta, ignore_keys=ignore_keys, **kwargs)

    # ---- the vision tower ----

    @property
    def vision_config(self) -> CLIPVisionConfig:
        """The CLIP tower's config: ViT-L/14-336 unless ``img_processor`` carries a ``vision_config``.

        One object per config (the tower's own ``config``), with this config's attention
        implementation and dtype: the model's are the tower's, however they were set (from
        ``from_pretrained``'s arguments, or ``set_attn_implementation`` later, which reaches the
        tower as a submodel)."""
        spec = (self.img_processor or {}).get("vision_config") or CLIP_VIT_L14_336
        cached = self.__dict__.get("_vision_config")
        if cached is None or cached[0] != spec:
            cached = (copy.deepcopy(spec), CLIPVisionConfig(**spec))
            self.__dict__["_vision_config"] = cached
        vision = cached[1]
        if self._attn_implementation is not None:
            vision._attn_implementation_internal = self._attn_implementation
        vision.dtype = self.dtype
        return vision

    @property
    def image_dim_out(self) -> int:
        return int((self.img_processor or {}).get("image_dim_out", self.vision_config.hidden_size))

    @property
    def vision_layer_idx(self) -> int:
        """Which hidden state of the tower is used: -2 (the second-to-last layer's output)."""
        return int((self.img_processor or {}).get("layer_idx", -2))

    # ---- writing ----

    def to_dict(self) -> dict:
        """The official layout: ``rope_scaling`` with its ``type`` and ``rope_theta``, no ``rope_parameters``."""
        out = super().to_dict()
        out.pop("_official_rope_type", None)
        out.pop("_vision_config", None)
        if "dtype" in out:  # the official code (transformers 4.x) reads torch_dtype
            out["torch_dtype"] = out["dtype"]
        rope = copy.deepcopy(out.pop("rope_parameters", None) or {})
        out["rope_theta"] = rope.pop("rope_theta", 10_000.0)
        kind = rope.pop("rope_type", "default")
        if kind == "default":
            out["rope_scaling"] = None
        else:
            official = getattr(self, "_official_rope_type", None) or ("su" if kind == "longrope" else kind)
            out["rope_scaling"] = {
                "type": official,
                "long_factor": rope.get("long_factor"),
                "short_factor": rope.get("short_factor"),
            }
        return out
