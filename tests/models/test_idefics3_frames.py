"""Idefics3 and SmolVLM show a video's frames untiled (models/idefics3_frames.py), checked against
their real processors on the tiny models of tests/models/test_several_images.py (its module
fixture and helpers): 32 px tiles of 4 image tokens, images resized to 64 px first, so a still
is 2 x 2 tiles and the whole (5 tiles) or 2 x 1 and the whole (3), and a frame one tile.

Shapes: B prompts, G = 2 completions each, C = 3 completion tokens.
"""

from __future__ import annotations

import pytest
import torch
from test_prefix import assert_grads_close
from test_several_images import (  # noqa: F401 (models: a fixture)
    LANDSCAPE,
    PORTRAIT,
    QUESTIONS,
    SQUARE,
    VISUALS,
    completions,
    image,
    logprobs_and_grads,
    models,
)
from transformers.video_utils import VideoMetadata

from vqa_grpo.data.types import Video
from vqa_grpo.models.idefics3_frames import encode_with_untiled_frames
from vqa_grpo.models.visuals import layout

FAMILIES = ["idefics3", "smolvlm"]
G = 2
FRAMES = [image(56, 40, (60 * i, 40, 40)) for i in range(3)]  # one clip: every frame the same size
TILES = ("pixel_values", "pixel_attention_mask")


def processor_call(processor, texts: list[str], **inputs) -> dict:
    """The processor's own encoding of rendered ``texts``, as the adapter calls it."""
    return processor(text=texts, **inputs, return_tensors="pt", padding=True, padding_side="left")


def assert_same(batch, reference: dict) -> None:
    assert torch.equal(batch.input_ids, reference["input_ids"])
    assert torch.equal(batch.attention_mask, reference["attention_mask"])
    assert batch.extra.keys() == set(TILES)
    for key in TILES:
        assert torch.equal(batch.extra[key], reference[key]), key


@pytest.mark.parametrize("family", FAMILIES)
def test_a_batch_without_video_is_the_processors_own(family, models):
    """No video: the processor's call, as before; and the frames' assembly, given the same stills,
    tiles, pads and expands them as the processor does (its merge checked where they must agree)."""
    lm = models(family)
    batch = lm.adapter.encode_prompts(lm.processor, VISUALS, QUESTIONS)
    texts = [lm.adapter.prompt_text(lm.processor, q, v) for q, v in zip(QUESTIONS, VISUALS)]
    reference = processor_call(lm.processor, texts, images=VISUALS)
    assert_same(batch, reference)
    assert reference["pixel_values"].shape == (4, 13, 3, 32, 32)  # 3 images: 5 + 3 + 5 tiles
    layouts = [layout(q, v) for q, v in zip(QUESTIONS, VISUALS)]
    assert_same(encode_with_untiled_frames(lm.processor, layouts, texts), reference)


def test_idefics3_shows_a_videos_frames_as_the_processor_does_without_splitting(models):
    lm = models("idefics3")
    clip = Video(FRAMES, fps=0.5)
    text = lm.adapter.prompt_text(lm.processor, "What moves?", [clip])
    assert text == "<|im_start|>User:<image><image><image>What moves?<end_of_utterance>\nAssistant:"
    batch = lm.adapter.encode_prompts(lm.processor, [[clip]], ["What moves?"])
    reference = processor_call(lm.processor, [text], images=[FRAMES], do_image_splitting=False)
    assert_same(batch, reference)
    assert batch.extra["pixel_values"].shape == (1, 3, 3, 32, 32)  # one tile a frame
    assert batch.images_per_prompt == (3,) and batch.videos_per_prompt == (0,)
    assert lm.adapter.image_token_mask(lm.processor, batch.input_ids).sum() == 3 * (4 + 3)  # tokens, tags


def test_smolvlm_writes_a_video_as_its_native_video_path_does(models):
    """SmolVLM's processor with the clip on its video path (frames already sampled, at 0.5 fps:
    frames at 0, 2 and 4 s) is the reference: its video text, frames and pixel values."""
    lm = models("smolvlm")
    clip = Video(FRAMES, fps=0.5)
    text = lm.adapter.prompt_text(lm.processor, "What moves?", [clip])
    assert text == "<|im_start|>User:<video>What moves?<end_of_utterance>\nAssistant:"
    batch = lm.adapter.encode_prompts(lm.processor, [[clip]], ["What moves?"])
    meta = VideoMetadata(total_num_frames=3, fps=0.5, frames_indices=[0, 1, 2])
    reference = processor_call(lm.processor, [text], videos=[FRAMES], video_metadata=[meta], do_sample_frames=False)
    assert_same(batch, reference)
    assert batch.extra["pixel_values"].shape == (1, 3, 3, 32, 32)
    written = lm.processor.replace_video_token({"pixel_values": reference["pixel_values"], "video_metadata": [meta]}, 0)
    frame = "<fake_token_around_image><global-img>" + "<image>" * 4 + "<fake_token_around_image>"
    assert written == (
        "You are provided the following series of three frames from a 0:00:04 [H:MM:SS] video.\n"
        + "".join(f"\nFrame from 00:0{t}:" + frame for t in (0, 2, 4))
        + "\n\n"
    )


@pytest.mark.parametrize("family", FAMILIES)
def test_a_mixed_batch_tiles_each_still_and_shows_each_frame_once(family, models):
    """Stills of three sizes, a video and a text-only prompt: each still's tiles are the ones the
    processor gives it alone, each frame is one tile, and the shared prefix and the fused prefill
    give the plain path's log-probs and gradients on the assembled batch."""
    lm = models(family)
    clip = Video([image(48, 48, (20, 60 * i, 40)) for i in range(2)] + [image(64, 36, (200, 200, 0))], fps=1.0)
    visuals = [[SQUARE, clip], [PORTRAIT, LANDSCAPE], [], [clip]]
    questions = ["Is <image> in <video>?", "Is <image> left of <image>?", "Is there a red circle?", "What moves?"]
    batch = lm.adapter.encode_prompts(lm.processor, visuals, questions)
    assert batch.images_per_prompt == (4, 2, 0, 3) and batch.videos_per_prompt == (0, 0, 0, 0)
    tiles = batch.extra["pixel_attention_mask"].flatten(2).any(-1)  # [B, T]: real tiles
    assert tiles.sum(1).tolist() == [5 + 3, 3 + 5, 0, 3]  # a still's tiles, then 1 a frame
    for b, still, at in [(0, SQUARE, 0), (1, PORTRAIT, 0), (1, LANDSCAPE, 3)]:
        alone = lm.processor.image_processor([[still]], return_tensors="pt")["pixel_values"][0]
        assert torch.equal(batch.extra["pixel_values"][b, at : at + len(alone)], alone)
    image_tokens = (batch.input_ids == lm.processor.image_token_id).sum(1)
    assert image_tokens.tolist() == [4 * 8, 4 * 8, 0, 4 * 3]  # 4 a tile

    ids, mask = completions(lm, 4 * G, seed=5)
    weights = torch.linspace(-1.0, 1.0, ids.numel()).view_as(ids)
    plain_logp, plain_grads = logprobs_and_grads(lm, batch, ids, mask, "plain", weights)
    assert (plain_logp.abs() > 0.1).sum() == mask.sum()
    for path in ("shared prefix", "fused prefill"):
        logp, grads = logprobs_and_grads(lm, batch, ids, mask, path, weights)
        assert (logp - plain_logp).abs().max() < 1e-5, path
        assert_grads_close(plain_grads, grads)
    repeated = lm.adapter.repeat(batch, 2)
    direct = lm.adapter.encode_prompts(
        lm.processor, [v for v in visuals for _ in range(2)], [q for q in questions for _ in range(2)]
    )
    assert torch.equal(repeated.input_ids, direct.input_ids)
    for key in TILES:
        assert torch.equal(repeated.extra[key], direct.extra[key]), key
