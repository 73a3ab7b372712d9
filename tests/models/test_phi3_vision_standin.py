"""The Phi-3-vision adapter against a STAND-IN for microsoft/Phi-3-vision-128k-instruct.

The real model's processor and modelling code live on the Hugging Face Hub (``trust_remote_code``)
and cannot be downloaded here, so this file writes a small stand-in that follows the contract of
that remote code (processing_phi3_v.py, image_processing_phi3_v.py, modeling_phi3_v.py and
image_embedding_phi3_v.py), scaled down from 336 px crops of 12x12 = 144 tokens to 28 px crops of
2x2 = 4 tokens:

- the processor takes ONE text (a list raises) with ``<|image_1|>`` in it, and returns
  ``input_ids`` [1, L] holding the image as -1 repeated once per image token, ``attention_mask``,
  ``pixel_values`` [1, num_crops + 1, 3, S, S] (the global view, then the crops of the "HD"
  resized image, zero-padded to num_crops) and ``image_sizes`` [1, 2] (the resized height, width);
- an image of h x w crops has (h*w + 1)*T + 1 + (h + 1)*sqrt(T) tokens (the real formula with
  T = 144): the crops with a newline token after each row, a separator, the global view with
  its newlines;
- the model's forward takes ``pixel_values`` and ``image_sizes`` and has no ``logits_to_keep``;
  its embedding finds the negative ids, clamps ``input_ids`` to 0 IN PLACE, and writes the image
  features at those positions.

The language model is transformers' own Phi-3 (Phi-3-vision's text model is Phi-3-mini), tiny.
What this does not show: that the real remote code runs under transformers 5.24 (README, "Model
families").
"""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw
from torch import nn
from transformers import GenerationMixin, Phi3Config, PreTrainedModel
from transformers.modeling_outputs import CausalLMOutputWithPast
from transformers.models.phi3.modeling_phi3 import Phi3Model

from vqa_grpo.config import ModelConfig
from vqa_grpo.errors import UserError
from vqa_grpo.grpo.math import group_advantages, policy_loss
from vqa_grpo.models.adapters import ANSWER_INSTRUCTION, Phi3VisionAdapter, PromptBatch, adapter_for
from vqa_grpo.models.generation import decode, generate
from vqa_grpo.models.scoring import answer_tokens
from vqa_grpo.models.tiny import build_word_tokenizer, _fast_tokenizer, _words

# The stand-in's Phi-3 text model is called with past_key_values, as the remote code calls its own.
pytestmark = pytest.mark.filterwarnings("ignore:`past_key_values` is deprecated:FutureWarning")

S = 28  # crop side (the real processor: 336)
SIDE = 2  # image tokens per crop side (the real one: 12); T = SIDE**2 tokens per crop
SPECIALS = ["<|endoftext|>", "<s>", "<|user|>", "<|assistant|>", "<|end|>", "<|image|>"]
PAD, BOS, USER, ASSISTANT, END = 0, 1, 2, 3, 4


def num_image_tokens(h_crops: int, w_crops: int) -> int:
    return (h_crops * w_crops + 1) * SIDE**2 + 1 + (h_crops + 1) * SIDE


# ---- the stand-in processor ---------------------------------------------------------------------


class StandInImageProcessor:
    """HD transform: the longer side scaled to ``scale`` crops, the largest scale whose crop grid
    holds at most ``num_crops`` crops; the shorter side padded (centred) to whole crops."""

    def __init__(self, num_crops: int):
        self.num_crops = num_crops

    def hd_size(self, width: int, height: int) -> tuple[int, int]:
        transposed = width < height
        if transposed:
            width, height = height, width
        ratio = width / height
        scale = 1
        while scale * math.ceil(scale / ratio) <= self.num_crops:
            scale += 1
        scale -= 1
        new_w = scale * S
        new_h = math.ceil(int(new_w / ratio) / S) * S
        return (new_h, new_w) if transposed else (new_w, new_h)

    def __call__(self, images: list[Image.Image]) -> dict:
        views, sizes, tokens = [], [], []
        for im in images:
            w, h = self.hd_size(*im.size)
            hd = torch.zeros(3, h, w)
            small = im.convert("RGB").resize((w, min(h, round(w * im.size[1] / im.size[0]))))
            top = (h - small.size[1]) // 2
            hd[:, top : top + small.size[1]] = torch.from_numpy(np.asarray(small, dtype=np.float32)).permute(2, 0, 1) / 255
            crops = hd.reshape(3, h // S, S, w // S, S).permute(1, 3, 0, 2, 4).reshape(-1, 3, S, S)
            glob = nn.functional.interpolate(hd[None], size=(S, S), mode="bilinear", align_corners=False)
            padded = torch.zeros(self.num_crops + 1, 3, S, S)
            padded[: len(crops) + 1] = torch.cat([glob, crops])
            views.append(padded)
            sizes.append([h, w])
            tokens.append(num_image_tokens(h // S, w // S))
        return {"pixel_values": torch.stack(views), "image_sizes": torch.tensor(sizes), "num_img_tokens": tokens}


class StandInPhi3VProcessor:
    special_image_token = "<|image|>"

    def __init__(self, tokenizer, num_crops: int = 4):
        self.tokenizer = tokenizer
        self.image_processor = StandInImageProcessor(num_crops)

    def __call__(self, text, images=None, return_tensors="pt") -> dict:
        if not isinstance(text, str):
            raise TypeError("the Phi-3-vision processor takes one text at a time")
        image = self.image_processor(images)
        chunks = [[BOS] + self.tokenizer(c, add_special_tokens=False)["input_ids"] for c in re.split(r"<\|image_\d+\|>", text)]
        ids = chunks[0] + [-1] * image["num_img_tokens"][0] + chunks[1]
        input_ids = torch.tensor([ids])
        return {
            "input_ids": input_ids,
            "attention_mask": (input_ids > -1_000_000).long(),
            "pixel_values": image["pixel_values"],
            "image_sizes": image["image_sizes"],
        }


# ---- the stand-in model -----------------------------------------------------------------------------


class StandInPhi3VConfig(Phi3Config):
    model_type = "phi3_v_standin"


class StandInImageEmbedding(nn.Module):
    """Patch features of each crop, laid out as the remote embedding lays them out."""

    def __init__(self, config):
        super().__init__()
        self.vocab_size = config.vocab_size
        self.wte = nn.Embedding(config.vocab_size, config.hidden_size)
        patch = S // SIDE
        self.img_processor = nn.Linear(3 * patch * patch, config.hidden_size)
        self.img_projection = nn.Linear(config.hidden_size, config.hidden_size)
        self.sub_GN = nn.Parameter(torch.randn(config.hidden_size) * 0.02)  # newline after each row
        self.glb_GN = nn.Parameter(torch.randn(config.hidden_size) * 0.02)  # crops / global separator

    def crop_features(self, crops: torch.Tensor) -> torch.Tensor:  # [n, 3, S, S] -> [n, SIDE, SIDE, D]
        p = S // SIDE
        patches = crops.reshape(-1, 3, SIDE, p, SIDE, p).permute(0, 2, 4, 1, 3, 5).flatten(3)
        return self.img_projection(torch.tanh(self.img_processor(patches)))

    def with_newlines(self, grid: torch.Tensor) -> torch.Tensor:  # [rows, cols, D] -> [rows*(cols+1), D]
        newline = self.sub_GN.expand(grid.shape[0], 1, -1)
        return torch.cat([grid, newline], dim=1).reshape(-1, grid.shape[-1])

    def forward(self, input_ids, pixel_values, image_sizes) -> torch.Tensor:
        input_ids = input_ids.view(-1, input_ids.shape[-1])
        with torch.no_grad():
            positions = torch.nonzero(input_ids < 0, as_tuple=False)
            input_ids.clamp_min_(0).clamp_max_(self.vocab_size)  # in place, as the remote embedding does
        hidden = self.wte(input_ids)
        if pixel_values is None or len(positions) == 0:
            return hidden
        features = []
        for views, (h, w) in zip(pixel_values, image_sizes.tolist()):
            hc, wc = h // S, w // S
            f = self.crop_features(views[: hc * wc + 1])  # the global view, then the crops
            crops = f[1:].reshape(hc, wc, SIDE, SIDE, -1).permute(0, 2, 1, 3, 4).reshape(hc * SIDE, wc * SIDE, -1)
            features.append(torch.cat([self.with_newlines(crops), self.glb_GN[None], self.with_newlines(f[0])]))
        return hidden.index_put((positions[:, 0], positions[:, 1]), torch.cat(features).to(hidden.dtype))


class StandInPhi3VForCausalLM(PreTrainedModel, GenerationMixin):
    config_class = StandInPhi3VConfig
    base_model_prefix = "model"
    _tied_weights_keys: dict = {}

    def __init__(self, config):
        super().__init__(config)
        self.model = Phi3Model(config)
        self.model.vision_embed_tokens = StandInImageEmbedding(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def get_output_embeddings(self):
        return self.lm_head

    def forward(  # the remote signature: no logits_to_keep, no **kwargs
        self, input_ids=None, attention_mask=None, position_ids=None, past_key_values=None, inputs_embeds=None,
        pixel_values=None, image_sizes=None, labels=None, use_cache=None, output_attentions=None,
        output_hidden_states=None, return_dict=None,
    ):
        if inputs_embeds is None:
            inputs_embeds = self.model.vision_embed_tokens(input_ids, pixel_values, image_sizes)
        out = self.model(inputs_embeds=inputs_embeds, attention_mask=attention_mask, position_ids=position_ids,
                         past_key_values=past_key_values, use_cache=use_cache)
        return CausalLMOutputWithPast(logits=self.lm_head(out.last_hidden_state), past_key_values=out.past_key_values)

    def prepare_inputs_for_generation(self, input_ids, past_key_values=None, attention_mask=None, pixel_values=None,
                                      image_sizes=None, use_cache=True, **kwargs):
        past = past_key_values.get_seq_length() if past_key_values is not None else 0
        input_ids = input_ids[:, past:]
        position_ids = (attention_mask.long().cumsum(-1) - 1).masked_fill(attention_mask == 0, 1)[:, -input_ids.shape[1]:]
        return dict(input_ids=input_ids, position_ids=position_ids, past_key_values=past_key_values,
                    use_cache=use_cache, attention_mask=attention_mask, pixel_values=pixel_values, image_sizes=image_sizes)


# ---- fixtures -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def standin():
    raw = build_word_tokenizer(_words(None), SPECIALS)
    tok = _fast_tokenizer(raw, "", pad_token="<|endoftext|>", eos_token="<|endoftext|>", bos_token="<s>",
                          extra_special_tokens={"image_token": "<|image|>"})
    config = StandInPhi3VConfig(
        vocab_size=raw.get_vocab_size(), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024, bos_token_id=BOS,
        eos_token_id=[PAD, END], pad_token_id=PAD, tie_word_embeddings=False,
    )
    torch.manual_seed(0)
    model = StandInPhi3VForCausalLM(config)
    model.generation_config.eos_token_id = [PAD, END]
    model.generation_config.pad_token_id = PAD
    return model, StandInPhi3VProcessor(tok, num_crops=4), adapter_for(config.model_type, "phi3_v")


def image(width: int, height: int) -> Image.Image:
    im = Image.new("RGB", (width, height), (128, 128, 128))
    ImageDraw.Draw(im).ellipse([width // 4, height // 4, width // 2, height // 2], fill=(220, 40, 40))
    return im


# A 56 x 56 square and a 112 x 28 landscape strip: different crop grids, different token counts.
IMAGES = [image(56, 56), image(112, 28)]
QUESTIONS = ["Is there a red circle?", "How many?"]


# ---- the adapter ------------------------------------------------------------------------------------


def test_family_override_and_the_seed_prompt(standin):
    _, processor, adapter = standin
    assert isinstance(adapter, Phi3VisionAdapter)
    assert type(adapter_for("phi3_v")) is Phi3VisionAdapter  # detected from the real model_type
    assert adapter.prompt_text(processor, " Is there a red circle? ") == (
        "<|user|>\n<|image_1|>\nIs there a red circle? Answer with a single word or short phrase.<|end|>\n<|assistant|>\n"
    )
    assert ANSWER_INSTRUCTION == " Answer with a single word or short phrase."


def test_prompts_are_encoded_one_by_one_then_left_padded_with_the_image_as_negative_ids(standin):
    _, processor, adapter = standin
    with pytest.raises(TypeError):  # the contract: one text at a time
        processor([adapter.prompt_text(processor, q) for q in QUESTIONS], IMAGES)
    batch = adapter.encode_prompts(processor, IMAGES, QUESTIONS)
    # num_crops = 4. 56 x 56: ratio 1, scale 2 (2*2 = 4 crops <= 4; 3*3 > 4) -> 56 x 56, 2x2 crops:
    # (4 + 1)*4 + 1 + (2 + 1)*2 = 27 image tokens. 112 x 28: ratio 4, scale 4 (4*1 <= 4) ->
    # 112 x 28, 1x4 crops: (4 + 1)*4 + 1 + (1 + 1)*2 = 25.
    assert (batch.input_ids == -1).sum(1).tolist() == [27, 25]
    assert batch.extra["image_sizes"].tolist() == [[56, 56], [28, 112]]
    assert batch.extra["pixel_values"].shape == (2, 4 + 1, 3, S, S)  # [B, num_crops + 1, 3, S, S]
    # Question 1 is 3 tokens shorter ("is there a red circle" vs "how many"), image 1 has 2 more
    # tokens: row 2 gets 5 padding tokens at the left, row 1 none.
    assert batch.attention_mask.sum(1).tolist() == [batch.input_ids.shape[1], batch.input_ids.shape[1] - 5]
    assert batch.input_ids[1, :5].tolist() == [PAD] * 5 and batch.attention_mask[1, :5].tolist() == [0] * 5
    assert batch.input_ids[:, -2:].tolist() == [[END, ASSISTANT]] * 2
    # Never labels: padding and the image's negative ids are -100 in the prompt's labels.
    labels = adapter.prompt_labels(processor, batch)
    assert ((labels == -100) == ((batch.input_ids < 0) | (batch.attention_mask == 0))).all()
    assert (labels >= -100).all() and not ((labels < 0) & (labels != -100)).any()


def test_the_model_clamps_its_input_ids_in_place_so_the_batch_hands_it_a_copy(standin):
    model, processor, adapter = standin
    batch = adapter.encode_prompts(processor, IMAGES, QUESTIONS)
    negatives = int((batch.input_ids < 0).sum())
    with torch.no_grad():
        with_copy = model(**batch.model_inputs()).logits
        again = model(**batch.model_inputs()).logits
    assert int((batch.input_ids < 0).sum()) == negatives  # the batch still holds the image
    torch.testing.assert_close(again, with_copy)
    raw = batch.input_ids.clone()  # the contract, shown: handed directly, the tensor is changed
    with torch.no_grad():
        model(input_ids=raw, attention_mask=batch.attention_mask, **batch.extra)
    assert (raw < 0).sum() == 0
    with torch.no_grad():
        without_image = model(input_ids=raw, attention_mask=batch.attention_mask, **batch.extra).logits
    assert not torch.allclose(without_image, with_copy)


def test_generate_sft_grpo_and_save_reload_on_the_standin(standin, tmp_path):
    model, processor, adapter = standin
    prompts = adapter.encode_prompts(processor, IMAGES, QUESTIONS)
    suppressed = adapter.suppressed_token_ids(processor)
    assert suppressed == [5]  # <|image|>; the image's own ids are negative and cannot be sampled

    # Generation: G = 2 sampled completions per prompt, B = 2, one batched call.
    torch.manual_seed(0)
    comp = generate(model, adapter, processor, adapter.repeat(prompts, 2), max_new_tokens=3, do_sample=True)
    assert comp.ids.shape[0] == 4 and (comp.ids >= 0).all() and len(decode(processor, comp)) == 4
    assert (prompts.input_ids < 0).sum(1).tolist() == [27, 25]  # generate did not clamp the batch

    def logprobs(batch: PromptBatch, ids, mask):
        logits = adapter.forward_logits(model, adapter.append(batch, ids, mask), ids.shape[1] + 1)[:, :-1]
        return torch.log_softmax(logits.float(), -1).gather(-1, ids[..., None])[..., 0]

    # SFT: the answers' NLL; the gradient reaches the image embedding.
    model.train()
    ids, mask = answer_tokens(processor.tokenizer, ["yes", "two"], END)
    model.zero_grad()
    (-(logprobs(prompts, ids, mask) * mask).sum() / mask.sum()).backward()
    image_grad = model.model.vision_embed_tokens.img_processor.weight.grad
    assert image_grad is not None and image_grad.abs().sum() > 0

    # GRPO: the clipped objective on the rollout with rewards (1, 0) in each group.
    rows = adapter.repeat(prompts, 2)
    model.zero_grad()
    logp = logprobs(rows, comp.ids, comp.mask)
    adv = group_advantages(torch.tensor([1.0, 0.0, 1.0, 0.0]), 2)
    loss, _ = policy_loss(logp, logp.detach(), adv, comp.mask)
    loss.backward()
    assert torch.isfinite(loss) and model.model.vision_embed_tokens.img_processor.weight.grad.abs().sum() > 0

    # One step, save, reload: the same logits.
    torch.optim.SGD(model.parameters(), lr=0.1).step()
    model.eval()
    with torch.no_grad():
        before = model(**prompts.model_inputs()).logits
    model.save_pretrained(tmp_path / "saved")
    reloaded = StandInPhi3VForCausalLM.from_pretrained(tmp_path / "saved")
    with torch.no_grad():
        after = reloaded(**prompts.model_inputs()).logits
    torch.testing.assert_close(after, before)


def test_the_shared_scoring_path_runs_on_the_remote_forward(standin):
    from vqa_grpo.models.scoring import completion_logprobs

    model, processor, adapter = standin
    prompts = adapter.encode_prompts(processor, IMAGES, QUESTIONS)
    ids, mask = answer_tokens(processor.tokenizer, ["yes", "two"], END)
    logp, _ = completion_logprobs(model, adapter, prompts, ids, mask, with_entropy=False)
    # By hand: one full forward of prompt + answer, the log-softmax at the positions before each answer token.
    full = adapter.append(prompts, ids, mask)
    with torch.no_grad():
        logits = model(**full.model_inputs(), use_cache=False).logits[:, -ids.shape[1] - 1 : -1]
    expected = torch.log_softmax(logits.float(), dim=-1).gather(-1, ids[..., None])[..., 0]
    torch.testing.assert_close(logp * mask, expected * mask, rtol=1e-5, atol=1e-5)


def test_lora_targets_the_language_model_only(standin):
    from peft import LoraConfig, get_peft_model

    model, _, adapter = standin
    assert adapter.lora_targets() == ["qkv_proj", "o_proj", "gate_up_proj", "down_proj"]
    import copy

    peft_model = get_peft_model(copy.deepcopy(model), LoraConfig(r=2, lora_alpha=4, target_modules=adapter.lora_targets()))
    adapted = {n.rsplit(".lora_A", 1)[0] for n, _ in peft_model.named_parameters() if ".lora_A" in n}
    assert len(adapted) == 2 * 4  # 2 layers x 4 projections
    assert not any("vision_embed_tokens" in n for n in adapted)


def test_num_crops_goes_to_the_processor_and_only_for_phi3_vision():
    assert Phi3VisionAdapter().processor_kwargs(ModelConfig(num_crops=4)) == {"num_crops": 4}
    assert Phi3VisionAdapter().processor_kwargs(ModelConfig()) == {}
    with pytest.raises(UserError, match="model.num_crops applies to Phi-3/3.5-vision only"):
        adapter_for("llava").processor_kwargs(ModelConfig(num_crops=4))
