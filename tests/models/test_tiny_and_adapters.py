"""The offline tiny Qwen2-VL, the family adapter's tensors, and generation helpers.

Real components only: the tiny model of tests/conftest.py, its real processor, images drawn here.
Token ids are those of the word-level vocabulary that ``build_word_tokenizer`` lays out: the 7
Qwen2-VL special tokens (ids 0-6), ``<|unk|>`` (7), then the sorted words:

    0 <|endoftext|> (pad)   2 <|im_end|> (eos)   5 <|image_pad|>   7 <|unk|>
    8 ","  9 "."  10-19 "0"-"9"  20 "?"  21 "a"  25 "blue"  26 "circle"  32 "is"  35 "no"
    42 "red"  51 "there"  59 "yes"

Shapes: B prompts, P prompt tokens, C completion tokens, R rows.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
from PIL import Image, ImageDraw
from safetensors.torch import load_file

from vqa_grpo.config import DataConfig, ModelConfig
from vqa_grpo.data.loader import load_vqa
from vqa_grpo.data.prompts import user_text
from vqa_grpo.data.synthetic import VOCABULARY
from vqa_grpo.models.adapters import FamilyAdapter, PromptBatch, Qwen2VLAdapter
from vqa_grpo.models.generation import completion_mask, decode, generate, predict_answers
from vqa_grpo.models.loading import load_model
from vqa_grpo.models.plan import PLAIN
from vqa_grpo.models.scoring import answer_ids
from vqa_grpo.models.tiny import PROMPT_WORDS, TINY_FAMILIES, build_tiny

CPU = torch.device("cpu")
PAD, EOS, IMAGE_PAD, UNK = 0, 2, 5, 7


@pytest.fixture(scope="module")
def lm(tiny_model_dir):
    """The tiny model, processor and adapter (read-only here: no test trains it)."""
    return load_model(ModelConfig(name_or_path=str(tiny_model_dir)), CPU, trainable=False)


@pytest.fixture(scope="module")
def tok(lm):
    return lm.processor.tokenizer


def image(size: int, colour=(220, 40, 40)) -> Image.Image:
    """A grey square with one coloured disc, ``size`` px a side."""
    im = Image.new("RGB", (size, size), (128, 128, 128))
    ImageDraw.Draw(im).ellipse([size // 4, size // 4, size // 2, size // 2], fill=colour)
    return im


# ---- the tiny model ----------------------------------------------------------------------------


def test_tiny_model_loads_with_the_auto_classes_and_is_1_to_5M_parameters(tiny_model_dir):
    from transformers import AutoModelForImageTextToText, AutoProcessor

    model = AutoModelForImageTextToText.from_pretrained(tiny_model_dir)
    processor = AutoProcessor.from_pretrained(tiny_model_dir)
    assert type(model).__name__ == "Qwen2VLForConditionalGeneration"
    assert type(processor).__name__ == "Qwen2VLProcessor"
    assert type(processor.image_processor).__name__ == "Qwen2VLImageProcessor"
    assert type(processor.video_processor).__name__ == "Qwen2VLVideoProcessor"
    assert 1_000_000 <= sum(p.numel() for p in model.parameters()) <= 5_000_000
    # The generation config stops on <|im_end|> and pads with <|endoftext|>.
    assert model.generation_config.eos_token_id == EOS and model.generation_config.pad_token_id == PAD
    assert processor.tokenizer.eos_token_id == EOS and processor.tokenizer.pad_token_id == PAD


def test_every_vocabulary_word_is_one_token_in_either_case(tok):
    for word in [*VOCABULARY, *PROMPT_WORDS]:
        ids = tok(word, add_special_tokens=False)["input_ids"]
        assert len(ids) == 1 and ids[0] != UNK, word
        assert tok(word.upper(), add_special_tokens=False)["input_ids"] == ids, word  # lower-cased input
        assert tok.decode(ids) == word
    # Whitespace and punctuation split, by hand from the table in the module docstring.
    assert tok("Is there a red circle?", add_special_tokens=False)["input_ids"] == [32, 51, 21, 42, 26, 20]
    assert tok("zebra", add_special_tokens=False)["input_ids"] == [UNK]


@pytest.mark.parametrize("size, visual_tokens", [(112, 16), (168, 36)])
def test_chat_template_holds_exactly_the_image_tokens_the_processor_expects(lm, size, visual_tokens):
    # Patches of 14 px merged 2x2: a 112 px image is an 8x8 patch grid -> 64 / 4 = 16 tokens;
    # 168 px is 12x12 -> 144 / 4 = 36.
    text = lm.adapter.prompt_text(lm.processor, user_text("Is there a red circle?"))  # the default template
    assert text == (
        "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>"
        "Is there a red circle? Answer with a single word or short phrase.<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    batch = lm.adapter.encode_prompts(lm.processor, [image(size)], [user_text("Is there a red circle?")])
    grid = batch.extra["image_grid_thw"]  # [1, 3] = (t, h, w) in patches
    assert grid.tolist() == [[1, size // 14, size // 14]]
    assert int((batch.input_ids == IMAGE_PAD).sum()) == int(grid.prod()) // 4 == visual_tokens
    assert batch.extra["pixel_values"].shape[0] == int(grid.prod())  # one row per patch
    # The model accepts them (it raises when the image-token count and the features differ).
    with torch.no_grad():
        assert torch.isfinite(lm.model(**batch.model_inputs()).logits).all()


def test_model_tiny_help_names_every_family_it_builds():
    from vqa_grpo.cli_parser import build_parser

    tiny = build_parser()._subparsers._group_actions[0].choices["model"]
    help_text = " ".join(tiny._subparsers._group_actions[0].choices["tiny"].format_help().split())
    assert [f for f in TINY_FAMILIES if f not in help_text] == []


def test_same_seed_same_weights_other_seed_other_weights(tiny_model_dir, tmp_path):
    first = load_file(tiny_model_dir / "model.safetensors")  # seed 0
    again = load_file(build_tiny("qwen2_vl", tmp_path / "s0", seed=0) / "model.safetensors")
    other = load_file(build_tiny("qwen2_vl", tmp_path / "s1", seed=1) / "model.safetensors")
    assert first.keys() == again.keys() == other.keys()
    assert all(torch.equal(first[k], again[k]) for k in first)
    # Norm weights start at ones and biases at zeros whatever the seed; every randomly
    # initialised matrix differs.
    random_init = [k for k in first if first[k].ndim >= 2]
    assert len(random_init) > 20
    assert [k for k in random_init if torch.equal(first[k], other[k])] == []


# ---- the adapter ----------------------------------------------------------------------------------


def test_qwen2_vl_repeat_equals_encoding_the_repeated_prompts(lm):
    # Two prompts whose images differ in size (64 and 144 patches) and whose questions differ in
    # length (so the left padding differs too). Each prompt 3 times in a row.
    adapter = lm.adapter
    assert isinstance(adapter, Qwen2VLAdapter)
    images = [image(112), image(168, (40, 80, 230))]
    questions = ["Is there a red circle?", "What color is the circle left of the blue square?"]
    batch = adapter.encode_prompts(lm.processor, images, questions)
    assert set(batch.extra) == {"pixel_values", "image_grid_thw", "mm_token_type_ids"}

    repeated = adapter.repeat(batch, 3)
    direct = adapter.encode_prompts(
        lm.processor, [im for im in images for _ in range(3)], [q for q in questions for _ in range(3)]
    )
    assert torch.equal(repeated.input_ids, direct.input_ids)  # [6, P]
    assert torch.equal(repeated.attention_mask, direct.attention_mask)
    assert repeated.extra.keys() == direct.extra.keys()
    for key in direct.extra:
        assert repeated.extra[key].shape == direct.extra[key].shape, key
        assert torch.equal(repeated.extra[key], direct.extra[key]), key
    assert repeated.extra["pixel_values"].shape[0] == 3 * 64 + 3 * 144
    assert repeated.extra["image_grid_thw"].tolist() == [[1, 8, 8]] * 3 + [[1, 12, 12]] * 3

    # The generic row-wise repeat would interleave single patches across the flattened images,
    # which is why Qwen2-VL overrides it.
    generic = FamilyAdapter().repeat(batch, 3)
    assert not torch.equal(generic.extra["pixel_values"], direct.extra["pixel_values"])


def test_append_extends_per_token_keys_with_zeros_and_keeps_image_tensors():
    # B = 2 prompts of P = 4 tokens, C = 2 completion tokens.
    prompts = PromptBatch(
        input_ids=torch.tensor([[0, 1, 5, 9], [1, 5, 9, 9]]),
        attention_mask=torch.tensor([[0, 1, 1, 1], [1, 1, 1, 1]]),
        extra={
            "mm_token_type_ids": torch.tensor([[0, 0, 1, 0], [0, 1, 0, 0]]),
            "image_grid_thw": torch.tensor([[1, 2, 2], [1, 2, 2]]),
            "pixel_values": torch.arange(8.0).view(8, 1),
        },
    )
    ids = torch.tensor([[59, 2], [35, 0]])
    mask = torch.tensor([[1, 1], [1, 0]])
    out = Qwen2VLAdapter().append(prompts, ids, mask)
    assert out.input_ids.tolist() == [[0, 1, 5, 9, 59, 2], [1, 5, 9, 9, 35, 0]]
    assert out.attention_mask.tolist() == [[0, 1, 1, 1, 1, 1], [1, 1, 1, 1, 1, 0]]
    assert out.extra["mm_token_type_ids"].tolist() == [[0, 0, 1, 0, 0, 0], [0, 1, 0, 0, 0, 0]]
    assert out.extra["mm_token_type_ids"].dtype == torch.long
    assert out.extra["image_grid_thw"] is prompts.extra["image_grid_thw"]
    assert out.extra["pixel_values"] is prompts.extra["pixel_values"]
    assert prompts.input_ids.shape == (2, 4)  # the input batch is left as it was


# ---- completion masks and answer tokens -----------------------------------------------------------


def test_completion_mask_keeps_up_to_the_first_stop_token():
    ids = torch.tensor(
        [
            [40, 2, 41, 2],  # stop at 1: keep 2 tokens
            [40, 41, 42, 43],  # no stop: truncated, all kept
            [2, 40, 2, 40],  # stop at 0: keep the stop token only
            [40, 41, 42, 9],  # the second stop id, last position: all kept, not truncated
        ]
    )
    mask, truncated = completion_mask(ids, [2, 9])
    assert mask.tolist() == [[1, 1, 0, 0], [1, 1, 1, 1], [1, 0, 0, 0], [1, 1, 1, 1]]
    assert mask.dtype == torch.long
    assert truncated.tolist() == [False, True, False, False]


def test_answer_ids_are_the_answer_then_the_stop_token_right_padded(tok):
    ids, mask = answer_ids(tok, ["yes", "Blue circle", "3"], stop_id=EOS)
    assert ids.tolist() == [[59, EOS, PAD], [25, 26, EOS], [13, EOS, PAD]]
    assert mask.tolist() == [[1, 1, 0], [1, 1, 1], [1, 1, 0]]


# ---- generation -----------------------------------------------------------------------------------


def test_predict_answers_gives_none_only_for_examples_whose_image_fails(lm, synth_dir, tmp_path):
    good = load_vqa(DataConfig(path=str(synth_dir), eval_fraction=0), seed=0).train[:3]
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n not an image")

    def bad(i):
        return dataclasses.replace(good[0], id=f"bad{i}", image_loader=lambda: Image.open(broken).convert("RGB"))

    # batch_size 2: [good, good], [bad, bad] (a batch with no image at all), [good, bad].
    examples = [good[0], good[1], bad(0), bad(1), good[2], bad(2)]
    out = predict_answers(
        lm.model, lm.adapter, lm.processor, examples, batch_size=2, max_new_tokens=3, device=CPU, plan=PLAIN
    )
    assert [x is None for x in out] == [False, False, True, True, False, True]
    assert all(isinstance(x, str) for x in out if x is not None)


def test_generate_never_emits_suppressed_tokens_even_when_they_are_the_argmax(lm):
    # A hook on the output layer adds 1e4 to the image/video/vision-delimiter logits, so greedy
    # decoding would pick one of them at every step unless generate suppresses them.
    suppressed = lm.adapter.suppressed_token_ids(lm.processor)
    assert {3, 4, 5, 6} <= set(suppressed)  # vision_start, vision_end, image_pad, video_pad

    def boost(module, args, output):
        output = output.clone()
        output[..., suppressed] += 1e4
        return output

    questions = ["Is there a red circle?", "How many objects are there?"]
    prompts = lm.adapter.encode_prompts(lm.processor, [image(112), image(168)], questions)
    handle = lm.model.lm_head.register_forward_hook(boost)
    try:
        # Control: plain greedy decoding does emit them.
        with torch.no_grad():
            raw = lm.model.generate(
                **prompts.model_inputs(), max_new_tokens=4, do_sample=False, eos_token_id=EOS, pad_token_id=PAD
            )
        assert torch.isin(raw[:, prompts.input_ids.shape[1] :], torch.tensor(suppressed)).all()
        comp = generate(lm.model, lm.adapter, lm.processor, prompts, PLAIN, max_new_tokens=4)
    finally:
        handle.remove()
    assert comp.ids.shape == (2, 4) and comp.mask.sum() > 0
    assert not torch.isin(comp.ids, torch.tensor(suppressed)).any()
    assert len(decode(lm.processor, comp)) == 2
