"""Gemma 3 with pan-and-scan on, as a checkpoint's image processor config turns it on: each image
is one row of ``pixel_values`` and one more per crop, each row with its own ``<start_of_image>``
block in the text; the rows of each prompt move as a block (repeat, the shared prefix, the fused
prefill, micro-batches). The tiny Gemma 3 with its real processor, fp32 on the CPU; the helpers and
the comparison's tolerances are tests/models/test_several_images.py's.

The tiny processor's crops (images of 32 px, crops of at least 8 px, at most 4, an image cropped
when one side is at least 1.2 times the other): 96 x 32 is cut into 3 crops (4 rows), 20 x 90
into 4 (5 rows), 50 x 70 into 2 (3 rows); 60 x 60 is square and 6 x 18's crops would be under
8 px: 1 row each.

Shapes: B = 4 prompts, G = 2 completions each, R = 8 rows, C = 3 completion tokens.
"""

from __future__ import annotations

import json

import pytest
import torch
from test_prefix import assert_grads_close
from test_several_images import PATHS, G, completions, image, logprobs_and_grads, models  # noqa: F401 (fixture)
from transformers import AutoProcessor

from vqa_grpo.models.tiny_families import build_tiny_gemma3

WIDE, TALL, MILD = image(96, 32, (220, 40, 40)), image(20, 90, (40, 80, 230)), image(50, 70, (40, 200, 40))
SQUARE, SMALL = image(60, 60, (200, 200, 40)), image(6, 18, (200, 40, 200))
VISUALS = [[], [WIDE], [TALL, SQUARE], [SMALL, MILD, WIDE]]  # 0, 1, 2, 3 images
ROWS = [0, 4, 5 + 1, 1 + 3 + 4]  # rows of pixel_values: each image and its crops
QUESTIONS = ["Is there a red circle?", "How many objects are there?", "Is <image> left of <image>?", "What color?"]


@pytest.fixture(scope="module")
def family_dirs(tmp_path_factory):
    """Overrides conftest's for this module: the tiny Gemma 3 saved with pan-and-scan on."""
    out = build_tiny_gemma3(tmp_path_factory.mktemp("gemma3_pan_and_scan") / "model", seed=0, pan_and_scan=True)

    def get(family):
        assert family == "gemma3"
        return out

    return get


def encode(lm, indices):
    return lm.adapter.encode_prompts(lm.processor, [VISUALS[b] for b in indices], [QUESTIONS[b] for b in indices])


def test_the_checkpoints_config_turns_pan_and_scan_on_and_rows_are_counted_per_prompt(models, family_dirs):
    config = json.loads((family_dirs("gemma3") / "processor_config.json").read_text())["image_processor"]
    assert (config["do_pan_and_scan"], config["pan_and_scan_min_crop_size"], config["pan_and_scan_max_num_crops"]) == (
        True,
        8,
        4,
    )
    lm = models("gemma3")  # loaded as a run loads it: the saved settings reach every processor call
    assert {k: v for k, v in lm.processor.images_kwargs.items() if "pan_and_scan" in k} == {
        "do_pan_and_scan": True,
        "pan_and_scan_min_crop_size": 8,
        "pan_and_scan_max_num_crops": 4,
        "pan_and_scan_min_ratio_to_activate": 1.2,  # the processor's default: the config leaves it unset
    }
    batch = encode(lm, range(4))
    assert batch.extra["pixel_values"].shape == (18, 3, 32, 32)
    assert batch.images_per_prompt == (0, 1, 2, 3)
    assert lm.adapter.rows_per_prompt(batch, "pixel_values") == ROWS
    boi = lm.processor.tokenizer.boi_token_id
    assert (batch.input_ids == boi).sum(1).tolist() == ROWS  # one <start_of_image> block per row
    assert lm.adapter.rows_per_prompt(batch, "token_type_ids") is None
    # Pan-and-scan off (the processor's default): one row per image, counted as before.
    plain = AutoProcessor.from_pretrained(family_dirs("gemma3"), do_pan_and_scan=False)
    off = lm.adapter.encode_prompts(plain, VISUALS, QUESTIONS)
    assert off.extra["pixel_values"].shape == (6, 3, 32, 32)
    assert lm.adapter.rows_per_prompt(off, "pixel_values") == [0, 1, 2, 3]


def test_repeat_equals_encoding_the_repeated_prompts(models):
    lm = models("gemma3")
    batch = encode(lm, range(4))
    repeated = lm.adapter.repeat(batch, 3)
    direct = encode(lm, [b for b in range(4) for _ in range(3)])
    assert repeated.images_per_prompt == direct.images_per_prompt == (0,) * 3 + (1,) * 3 + (2,) * 3 + (3,) * 3
    assert torch.equal(repeated.input_ids, direct.input_ids)
    assert torch.equal(repeated.attention_mask, direct.attention_mask)
    assert repeated.extra.keys() == direct.extra.keys() == {"pixel_values", "token_type_ids"}
    for key, value in direct.extra.items():
        assert torch.equal(repeated.extra[key], value), key
    assert repeated.extra["pixel_values"].shape[0] == 3 * 18
    again = lm.adapter.repeat(repeated, 2)  # a repeated batch repeats again (generate's plain path does)
    assert lm.adapter.rows_per_prompt(again, "pixel_values") == [n for n in ROWS for _ in range(6)]


@pytest.mark.parametrize("lora", [False, True], ids=["full", "LoRA"])
def test_shared_prefix_and_fused_prefill_equal_the_plain_path(lora, models):
    lm = models("gemma3", lora)
    prompts = encode(lm, range(4))
    assert prompts.extra["pixel_values"].shape[0] == sum(ROWS)  # the crops are there
    ids, mask = completions(lm, 4 * G, seed=int(lora))
    weights = torch.linspace(-1.0, 1.0, ids.numel()).view_as(ids)
    plain_logp, plain_grads = logprobs_and_grads(lm, prompts, ids, mask, "plain", weights)
    assert (plain_logp.abs() > 0.1).sum() == mask.sum()  # real log-probs, not zeros compared with zeros
    assert all("lora" in n for n in plain_grads) if lora else any("vision" in n for n in plain_grads)
    for path in PATHS:
        logp, grads = logprobs_and_grads(lm, prompts, ids, mask, path, weights)
        assert (logp - plain_logp).abs().max() < 1e-5, path
        assert_grads_close(plain_grads, grads)


def test_two_micro_batches_of_other_mixes_add_up_to_the_plain_whole_batch(models):
    """Prompts {0, 2 images} (0 and 6 rows) then {1, 3 images} (4 and 8 rows), each encoded on its
    own, on the plain path (repeat), the shared prefix and the fused prefill."""
    lm = models("gemma3")
    ids, mask = completions(lm, 4 * G, seed=2)
    weights = torch.linspace(-1.0, 1.0, ids.numel()).view_as(ids)
    _, one = logprobs_and_grads(lm, encode(lm, range(4)), ids, mask, "plain", weights)
    for path in ["plain", *PATHS]:
        total: dict[str, torch.Tensor] = {}
        for micro, rows in (([0, 2], [0, 6]), ([1, 3], [4, 8])):
            prompts = encode(lm, micro)
            assert lm.adapter.rows_per_prompt(prompts, "pixel_values") == rows
            picked = torch.tensor([b * G + g for b in micro for g in range(G)])
            _, grads = logprobs_and_grads(lm, prompts, ids[picked], mask[picked], path, weights[picked])
            for name, g in grads.items():
                total[name] = total.get(name, 0) + g
        assert_grads_close(one, total)
