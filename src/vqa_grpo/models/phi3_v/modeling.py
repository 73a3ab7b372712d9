"""Phi-3-vision (microsoft/Phi-3-vision-128k-instruct, Phi-3.5-vision-instruct), written natively on
transformers' Phi-3 decoder and CLIP vision tower: no remote code is run.

How a prompt's image becomes token embeddings (checked against the official code, docs/models.md):

1. The processor's ``pixel_values`` [B, 1 + crops, 3, 336, 336] hold the global view, then the
   h x w crops of the HD-resized image (zero-padded); ``image_sizes`` [B, 2] the HD size.
2. CLIP ViT-L/14-336 encodes every view; the features are the second-to-last layer's output
   without the CLS token: 24 x 24 = 576 patches x 1024.
3. Each 2 x 2 block of patches is merged into one 4096-wide feature (12 x 12 per view); the crops
   are laid out as one (12 h) x (12 w) grid. ``sub_GN`` [1, 1, 1, 4096] is appended after every
   row of the crop grid and of the global view.
4. The image's sequence is: the crop grid (with its row ends), ``glb_GN`` [1, 1, 4096], the
   global view (with its row ends): (h w + 1) 144 + 1 + (h + 1) 12 features.
5. ``img_projection``: Linear 4096 -> hidden, GELU, Linear hidden -> hidden; the result replaces
   the embeddings of the image positions, the tokens with negative ids (-1 for image 1: the
   official processor's layout). Other ids go through ``embed_tokens`` (no in-place clamping).

The weights keep the official names: ``model.vision_embed_tokens.img_processor.vision_model.*``,
``glb_GN``, ``sub_GN``, ``img_projection.{0,2}``; the official ``vision_embed_tokens.wte`` is
``model.embed_tokens`` itself (one tensor, saved once).
"""

from __future__ import annotations

import inspect

import torch
from torch import nn
from transformers import CLIPVisionModel
from transformers import initialization as init
from transformers.modeling_outputs import CausalLMOutputWithPast
from transformers.models.clip.modeling_clip import CLIPPreTrainedModel
from transformers.models.phi3.modeling_phi3 import Phi3ForCausalLM, Phi3Model, Phi3PreTrainedModel

from vqa_grpo.models.phi3_v.configuration import Phi3VConfig

# transformers 5.20 renamed Phi-3's forward argument ``past_key_values`` to ``cache``. The cache is
# handed on under the name the installed Phi-3 reads: 5.19 (vLLM's pin) takes ``cache`` into its
# ``**kwargs`` and drops it without an error, so every token after a cached prompt ran without it.
_PARENT_CACHE = "cache" if "cache" in inspect.signature(Phi3ForCausalLM.forward).parameters else "past_key_values"


class _Tower(nn.Module):
    """Holds the CLIP vision model under ``vision_model``, the official checkpoints' key prefix."""

    def __init__(self, config):
        super().__init__()
        self.vision_model = CLIPVisionModel(config)


class Phi3VImageEmbedding(nn.Module):
    """CLIP features of every view, merged 2x2, laid out with separators and projected (steps 2-5)."""

    def __init__(self, config: Phi3VConfig):
        super().__init__()
        vision = config.vision_config  # with the implementation the model's init has just resolved
        self.img_processor = _Tower(vision)
        dim = config.image_dim_out
        if vision.hidden_size != dim:
            raise ValueError(f"img_processor.image_dim_out={dim} but the vision tower is {vision.hidden_size} wide")
        side = vision.image_size // vision.patch_size
        if side % 2:
            raise ValueError(f"the 2x2 merge needs an even patch grid; the tower's is {side} x {side}")
        self.side = side // 2  # merged features per crop side: 12 for ViT-L/14-336
        self.crop_size = vision.image_size
        self.layer_idx = config.vision_layer_idx
        tower = self.img_processor.vision_model
        n = len(tower.encoder.layers)
        self.used_layers = n + 1 + self.layer_idx if self.layer_idx < 0 else self.layer_idx  # hidden_states[idx]
        for unused in [*tower.encoder.layers[self.used_layers :], tower.post_layernorm]:  # never run: no gradient,
            unused.requires_grad_(False)  # which DDP would otherwise wait for (the weights stay in the layout)
        self.glb_GN = nn.Parameter(torch.zeros(1, 1, 4 * dim))
        self.sub_GN = nn.Parameter(torch.zeros(1, 1, 1, 4 * dim))
        self.img_projection = nn.Sequential(
            nn.Linear(4 * dim, config.hidden_size), nn.GELU(), nn.Linear(config.hidden_size, config.hidden_size)
        )

    def view_features(self, views: torch.Tensor) -> torch.Tensor:
        """[N, 3, S, S] -> [N, side * side, 4 * dim]: the patch features of hidden state ``layer_idx``
        (the later layers are not run), 2x2-merged in raster order."""
        tower = self.img_processor.vision_model
        h = tower.pre_layrnorm(tower.embeddings(views))
        for layer in tower.encoder.layers[: self.used_layers]:
            h = layer(h, None)
        patches = h[:, 1:]  # no CLS
        N, L, C = patches.shape
        s = self.side
        grid = patches.reshape(N, s, 2, s, 2, C).permute(0, 1, 3, 2, 4, 5)  # N, row, col, 2, 2, C
        return grid.reshape(N, s * s, 4 * C)

    def _with_row_ends(self, grid: torch.Tensor) -> torch.Tensor:
        """[rows, cols, D] -> [rows * (cols + 1), D]: ``sub_GN`` after every row."""
        rows = grid.shape[0]
        return torch.cat([grid, self.sub_GN[0].expand(rows, 1, -1).to(grid.dtype)], dim=1).reshape(-1, grid.shape[-1])

    def forward(self, pixel_values: torch.Tensor, image_sizes: torch.Tensor) -> torch.Tensor:
        """The projected image features of every image, concatenated: [sum of image tokens, hidden]."""
        B, V = pixel_values.shape[:2]
        # The tower's own dtype (the projection's weight may be a quantized integer type).
        dtype = self.img_processor.vision_model.embeddings.patch_embedding.weight.dtype
        s, S = self.side, self.crop_size
        crops = [(int(h) // S, int(w) // S) for h, w in image_sizes.tolist()]
        used = max(1 + h * w for h, w in crops)  # views past every image's crops are padding: not encoded
        feats = self.view_features(pixel_values[:, :used].flatten(0, 1).to(dtype)).unflatten(0, (B, used))
        sequences = []
        for i, (h, w) in enumerate(crops):
            glb = self._with_row_ends(feats[i, 0].reshape(s, s, -1))
            sub = feats[i, 1 : 1 + h * w].reshape(h, w, s, s, -1).permute(0, 2, 1, 3, 4).reshape(h * s, w * s, -1)
            sequences += [self._with_row_ends(sub), self.glb_GN[0].to(sub.dtype), glb]
        return self.img_projection(torch.cat(sequences, dim=0))


class Phi3VModel(Phi3Model):
    """Phi-3's decoder with the image embedding: ``vision_embed_tokens``."""

    config_class = Phi3VConfig

    def __init__(self, config: Phi3VConfig):
        super().__init__(config)
        self.vision_embed_tokens = Phi3VImageEmbedding(config)
        self.post_init()

    def embed(self, input_ids: torch.Tensor, pixel_values=None, image_sizes=None) -> torch.Tensor:
        """Token embeddings, the image features at the image positions (negative ids)."""
        image = input_ids < 0
        embeds = self.embed_tokens(input_ids.clamp(min=0))
        if pixel_values is None or not bool(image.any()):
            return embeds
        if image_sizes is None:
            raise ValueError("Phi-3-vision needs image_sizes with pixel_values")
        features = self.vision_embed_tokens(pixel_values, image_sizes)
        if features.shape[0] != int(image.sum()):
            raise ValueError(
                f"the prompts hold {int(image.sum())} image tokens but their images make {features.shape[0]} features "
                "(were input_ids and pixel_values made by the same processor and num_crops?)"
            )
        return embeds.masked_scatter(image.unsqueeze(-1), features.to(embeds.dtype))

    def forward(self, input_ids=None, pixel_values=None, image_sizes=None, inputs_embeds=None, **kwargs):
        if inputs_embeds is None and input_ids is not None:
            inputs_embeds = self.embed(input_ids, pixel_values, image_sizes)
        return super().forward(input_ids=None, inputs_embeds=inputs_embeds, **kwargs)


class Phi3VForCausalLM(Phi3ForCausalLM):
    """``AutoModelForCausalLM`` for model_type ``phi3_v`` (architectures ``Phi3VForCausalLM``)."""

    config_class = Phi3VConfig
    _no_split_modules = ["Phi3DecoderLayer", "CLIPEncoderLayer"]
    # The official checkpoints do not tie lm_head (tie_word_embeddings false); a tiny model may.
    _keys_to_ignore_on_load_unexpected = [r"model\.vision_embed_tokens\.wte\.weight"]

    def __init__(self, config: Phi3VConfig):
        Phi3PreTrainedModel.__init__(self, config)  # not Phi3ForCausalLM's: it would build a Phi3Model first
        self.model = Phi3VModel(config)
        self.vocab_size = config.vocab_size
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def _init_weights(self, module):
        super()._init_weights(module)
        if isinstance(module, Phi3VImageEmbedding):
            init.normal_(module.glb_GN, mean=0.0, std=self.config.initializer_range)
            init.normal_(module.sub_GN, mean=0.0, std=self.config.initializer_range)
        elif type(module).__module__.startswith("transformers.models.clip"):  # CLIP's modules: CLIP's init
            CLIPPreTrainedModel._init_weights(self.model.vision_embed_tokens.img_processor.vision_model, module)

    def forward(
        self,
        input_ids=None,
        pixel_values=None,
        image_sizes=None,
        attention_mask=None,
        position_ids=None,
        cache=None,
        inputs_embeds=None,
        labels=None,
        use_cache=None,
        logits_to_keep=0,
        **kwargs,
    ) -> CausalLMOutputWithPast:
        if "past_key_values" in kwargs:  # the name before transformers 5.20 (its generate uses it)
            cache = kwargs.pop("past_key_values")
        if inputs_embeds is None and input_ids is not None:
            inputs_embeds = self.model.embed(input_ids, pixel_values, image_sizes)
        return super().forward(
            attention_mask=attention_mask,
            position_ids=position_ids,
            inputs_embeds=inputs_embeds,
            labels=labels,
            use_cache=use_cache,
            logits_to_keep=logits_to_keep,
            **{_PARENT_CACHE: cache},
            **kwargs,
        )
