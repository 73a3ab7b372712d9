"""Idefics3 and SmolVLM show a video's frames untiled (models/idefics3_frames.py), checked against
their real processors on the tiny models of tests/models/test_several_images.py (its module
fixture and helpers): 32 px tiles of 4 image tokens, images resized to 64 px first, so a still
is 2 x 2 tiles and the whole (5 tiles) or 2 x 1 and the whole (3), and a frame one tile.
The tiny tokenizer reads digits as <|unk|>, so SmolVLM's frame times are checked on the text
before tokenizing (``written``).

Shapes: B prompts, G = 2 completions each, C = 3 completion tokens.
"""

from __future__ import annotations

import re

import av
import numpy as np
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
from vqa_grpo.data.video import VideoLoader
from vqa_grpo.errors import UserError
from vqa_grpo.models.idefics3_frames import encode_with_untiled_frames
from vqa_grpo.models.visuals import layout

FAMILIES = ["idefics3", "smolvlm"]
G = 2
FRAMES = [image(56, 40, (60 * i, 40, 40)) for i in range(3)]  # one clip: every frame the same size
TILES = ("pixel_values", "pixel_attention_mask")
FRAME = "<fake_token_around_image><global-img>" + "<image>" * 4 + "<fake_token_around_image>"  # one untiled


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
    assert written == video_text("three", "0:00:04", ["00:00", "00:02", "00:04"])


def video_text(count: str, duration: str, stamps: list[str]) -> str:
    """SmolVLM's text for a video of ``count`` frames at ``stamps`` (MM:SS) lasting ``duration``."""
    intro = f"You are provided the following series of {count} frames from a {duration} [H:MM:SS] video.\n"
    return intro + "".join(f"\nFrame from {t}:" + FRAME for t in stamps) + "\n\n"


def written(lm, clip: Video, monkeypatch) -> str:
    """The prompt's text as expanded for ``clip`` alone, before the tokenizer reads it."""
    seen = []
    real = type(lm.processor).get_text_with_replacements
    monkeypatch.setattr(
        lm.processor, "get_text_with_replacements", lambda *a: seen.append(real(lm.processor, *a)) or seen[-1]
    )
    lm.adapter.encode_prompts(lm.processor, [[clip]], ["What moves?"])
    return seen[0][0][0]


def test_smolvlm_writes_the_times_of_a_thinned_frame_list(models, tmp_path, monkeypatch):
    """9 frames at 1/s, at most 8: round(j * 8 / 7) picks frames 0, 1, 2, 3, 5, 6, 7, 8 (at those
    seconds), at the rate 7/8; k / rate (k * 8/7 s) would write 00:04, 00:05, 00:06 for frames 5, 6, 7."""
    paths = [tmp_path / f"{i}.png" for i in range(9)]
    for i, path in enumerate(paths):
        image(8, 8, (20 * i, 0, 0)).save(path)
    clip = VideoLoader(tuple(paths), max_frames=8, fps=1.0)()
    assert (clip.fps, clip.times) == (0.875, (0.0, 1.0, 2.0, 3.0, 5.0, 6.0, 7.0, 8.0))
    stamps = ["00:00", "00:01", "00:02", "00:03", "00:05", "00:06", "00:07", "00:08"]
    expected = f"<|im_start|>User:{video_text('eight', '0:00:08', stamps)}What moves?<end_of_utterance>\nAssistant:"
    assert written(models("smolvlm"), clip, monkeypatch) == expected


def test_smolvlm_writes_the_last_second_of_a_capped_file(models, tmp_path, monkeypatch):
    """A 25 s file (25 frames at 1/s), at most 8: times j * 25/7 s, the last 25.0 s, at the rate
    7/25. The processor truncates seconds with int(); 7 / (7/25) = 24.999999999999996, which k / fps
    gives for a Video without times, is rounded first, so both write 00:25 and a 0:00:25 clip."""
    with av.open(str(tmp_path / "clip.mp4"), "w") as container:
        stream = container.add_stream("mpeg4", rate=1)
        stream.width = stream.height = 16
        stream.pix_fmt = "yuv420p"
        for i in range(25):
            pixels = np.full((16, 16, 3), 10 * i, np.uint8)
            container.mux(stream.encode(av.VideoFrame.from_ndarray(pixels, format="rgb24")))
        container.mux(stream.encode())
    clip = VideoLoader(tmp_path / "clip.mp4", max_frames=8, fps=1.0)()
    assert clip.fps == 7 / 25 and clip.times == tuple(j * (25 / 7) for j in range(8))
    assert clip.times[-1] == 25.0 and Video(clip.frames, clip.fps).frame_times()[-1] == 24.999999999999996
    stamps = ["00:00", "00:03", "00:07", "00:10", "00:14", "00:17", "00:21", "00:25"]
    expected = f"<|im_start|>User:{video_text('eight', '0:00:25', stamps)}What moves?<end_of_utterance>\nAssistant:"
    lm = models("smolvlm")
    assert written(lm, clip, monkeypatch) == expected
    assert written(lm, Video(clip.frames, clip.fps), monkeypatch) == expected


@pytest.mark.parametrize("family", FAMILIES)
def test_a_video_without_frames_is_a_one_line_error(family, models):
    lm = models(family)
    with pytest.raises(UserError, match="^a video with no frames cannot be shown"):
        lm.adapter.encode_prompts(lm.processor, [[Video([], fps=1.0)], [SQUARE]], ["What moves?", "Red?"])


CLIP_A = Video([image(48, 48, (20, 60 * i, 40)) for i in range(3)], fps=1.0)  # frames at 0, 1, 2 s
CLIP_B = Video([image(64, 36, (200, 200, 60 * i)) for i in range(2)], fps=0.4, times=(0.0, 2.5))
MIXED = [[SQUARE, CLIP_A], [PORTRAIT, LANDSCAPE], [], [CLIP_B, LANDSCAPE]]
MIXED_QUESTIONS = [
    "Is <image> in <video>?",
    "Is <image> left of <image>?",
    "Is there a red circle?",
    "Does <video> show <image>?",
]


def alone(lm, family: str, kind: str, value) -> tuple[list[int], torch.Tensor, torch.Tensor]:
    """One still or one clip encoded by the real processor by itself: its placeholder's ids, its
    tiles [t, 3, h, w] and mask [t, h, w]. A still as the processor is configured; a clip on
    Idefics3 as images without splitting, on SmolVLM on its video path, at the clip's own times."""
    if kind == "image":
        out = lm.processor(text=["<image>"], images=[[value]], return_tensors="pt")
    elif family == "idefics3":
        text = "<image>" * len(value.frames)
        out = lm.processor(text=[text], images=[value.frames], do_image_splitting=False, return_tensors="pt")
    else:
        meta = VideoMetadata(len(value.frames), fps=1.0, frames_indices=list(value.frame_times()))
        out = lm.processor(
            text=["<video>"], videos=[value.frames], video_metadata=[meta], do_sample_frames=False, return_tensors="pt"
        )
    return out["input_ids"][0].tolist(), out["pixel_values"][0], out["pixel_attention_mask"][0]


def reference_prompt(lm, family: str, question: str, visuals: list) -> tuple[list[int], list, list]:
    """A prompt's ids, tiles and masks from each of its stills and clips encoded alone (``alone``),
    in prompt order, with the rendered text between them tokenized as it is."""
    items = [(kind, v) for kind, v in layout(question, visuals) if kind != "text"]
    ids, tiles, masks, skip = [], [], [], 0
    for piece in re.split(r"(<image>|<video>)", lm.adapter.prompt_text(lm.processor, question, visuals)):
        if piece not in ("<image>", "<video>"):
            ids += lm.processor.tokenizer(piece, add_special_tokens=False)["input_ids"]
        elif skip:  # an Idefics3 clip's other frames, encoded with its first
            skip -= 1
        else:
            kind, value = items.pop(0)
            piece_ids, p, m = alone(lm, family, kind, value)
            ids, tiles, masks = ids + piece_ids, tiles + [p], masks + [m]
            skip = len(value.frames) - 1 if kind == "video" and family == "idefics3" else 0
    assert not items
    return ids, tiles, masks


@pytest.mark.parametrize("family", FAMILIES)
def test_a_mixed_batch_tiles_each_still_and_shows_each_frame_once(family, models):
    """Stills of three sizes, two clips (the second before a still, at uneven times) and a
    text-only prompt: each prompt's ids and tiles are those of its stills and clips encoded alone
    by the real processor, in prompt order; and the shared prefix and the fused prefill give the
    plain path's log-probs and gradients on the assembled batch."""
    lm = models(family)
    batch = lm.adapter.encode_prompts(lm.processor, MIXED, MIXED_QUESTIONS)
    assert batch.images_per_prompt == (4, 2, 0, 3) and batch.videos_per_prompt == (0, 0, 0, 0)
    tiles = batch.extra["pixel_attention_mask"].flatten(2).any(-1)  # [B, T]: real tiles
    assert tiles.sum(1).tolist() == [5 + 3, 3 + 5, 0, 2 + 5]  # a still's tiles, then 1 a frame
    image_tokens = (batch.input_ids == lm.processor.image_token_id).sum(1)
    assert image_tokens.tolist() == [4 * 8, 4 * 8, 0, 4 * 7]  # 4 a tile
    pixels, mask = batch.extra["pixel_values"], batch.extra["pixel_attention_mask"]
    for b, (question, visuals) in enumerate(zip(MIXED_QUESTIONS, MIXED)):
        ids, tile_list, mask_list = reference_prompt(lm, family, question, visuals)
        assert batch.input_ids[b][batch.attention_mask[b].bool()].tolist() == ids, b
        expected = torch.zeros_like(pixels[b])
        expected_mask = torch.zeros_like(mask[b])
        t = 0
        for p, m in zip(tile_list, mask_list):  # each zero-padded at the bottom and right
            expected[t : t + len(p), :, : p.shape[-2], : p.shape[-1]] = p
            expected_mask[t : t + len(p), : p.shape[-2], : p.shape[-1]] = m
            t += len(p)
        assert torch.equal(pixels[b], expected) and torch.equal(mask[b], expected_mask), b

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
        lm.processor, [v for v in MIXED for _ in range(2)], [q for q in MIXED_QUESTIONS for _ in range(2)]
    )
    assert torch.equal(repeated.input_ids, direct.input_ids)
    for key in TILES:
        assert torch.equal(repeated.extra[key], direct.extra[key]), key
