"""Idefics3 and SmolVLM: a video's frames shown untiled, beside the batch's stills tiled as the processor tiles them.

The processor splits every image it is given into tiles of ``max_image_size`` plus the whole image
downscaled (up to 17 tiles of ``image_seq_len`` tokens each), and its switch
(``do_image_splitting``) holds for a whole call. transformers' own video path for these models
(SmolVLM's video processor) shows each frame once, untiled, at ``max_image_size``: one tile, its
image tokens once, written as an image with rows = cols = 0. A batch with a video is therefore
assembled here, with the processor's own pieces:

- each still through ``processor.image_processor`` as configured (its tiles and rows/cols);
- each frame through SmolVLM's ``video_processor`` (its native path) or, for Idefics3, whose
  processor has none, through the image processor with ``do_image_splitting=False``;
- each prompt's tiles in prompt order into ``pixel_values`` [B, tiles, 3, H, W] and
  ``pixel_attention_mask`` [B, tiles, H, W], zero-padded to the batch's most tiles and largest
  H and W, as the processor pads them;
- each image placeholder of the rendered text expanded by ``processor.replace_image_token`` and,
  on SmolVLM, the video's placeholder by ``processor.replace_video_token`` (its intro with the
  frame count and duration, "Frame from MM:SS:" before each frame, its outro), through
  ``processor.get_text_with_replacements``; then the tokenizer, left-padded.

A frame's time is the Video's own (``Video.frame_times``: the time data/video.py sampled it at,
which a thinned clip need not space evenly; k / fps when it carries none); the duration written
is the last frame's time, the processor's own choice when it is given none. The processor reads
frame indices over a rate and truncates the seconds with ``int``, so it is given the times
themselves as indices at rate 1, rounded to a microsecond: a time computed as 24.999999999999996 s
(7 / (7 / 25)) is written 00:25, not 00:24. A batch without a video never comes here.
"""

from __future__ import annotations

import torch
from transformers.video_utils import VideoMetadata

from vqa_grpo.data.types import Video
from vqa_grpo.errors import UserError
from vqa_grpo.models.adapter_base import PromptBatch
from vqa_grpo.models.visuals import Part, frames_as_images

Tile = tuple[torch.Tensor, torch.Tensor]
"""One image's tiles [t, 3, h, w] and their pixel mask [t, h, w]."""


def writes_video_text(processor) -> bool:
    """Whether the processor writes a video in the prompt itself (SmolVLM's, with a video processor)."""
    return getattr(processor, "video_processor", None) is not None and bool(getattr(processor, "video_token", None))


def written_parts(processor, parts: list[Part]) -> list[Part]:
    """The user turn's parts as the chat template renders them: on SmolVLM each video as the
    processor's video token (expanded later, as its native path does); on Idefics3 as its frames."""
    if writes_video_text(processor):
        return [("text", processor.video_token) if kind == "video" else (kind, value) for kind, value in parts]
    return frames_as_images(parts)


def encode_with_untiled_frames(processor, layouts: list[list[Part]], texts: list[str]) -> PromptBatch:
    """B prompts (``layouts[b]``: prompt b's parts with its video kept whole; ``texts[b]``: its
    rendered text, :func:`written_parts`), left-padded, with stills tiled and frames untiled."""
    if any(kind == "video" and not v.frames for parts in layouts for kind, v in parts):
        raise UserError("a video with no frames cannot be shown: give each Video at least one frame")
    stills = iter(_stills(processor, [v for parts in layouts for kind, v in parts if kind == "image"]))
    frames = iter(
        _frames(processor, [f for parts in layouts for kind, v in parts if kind == "video" for f in v.frames])
    )
    untiled = processor.replace_image_token({"rows": [[0]], "cols": [[0]]}, 0)
    image_texts, video_texts, tiles = [], [], []
    for parts in layouts:
        mine: list[Tile] = []
        for kind, value in parts:
            if kind == "image":
                pixels, mask, rows, cols = next(stills)
                image_texts.append(processor.replace_image_token({"rows": [[rows]], "cols": [[cols]]}, 0))
                mine.append((pixels, mask))
            elif kind == "video":
                shown = [next(frames) for _ in value.frames]
                mine += shown
                if writes_video_text(processor):
                    video_texts.append(_video_text(processor, value, shown))
                else:
                    image_texts += [untiled] * len(shown)
        tiles.append(mine)
    expanded, _ = processor.get_text_with_replacements(list(texts), image_texts, video_texts)
    enc = processor.tokenizer(expanded, padding=True, padding_side="left", return_tensors="pt")
    pixel_values, pixel_mask = _padded(tiles)
    extra = {"pixel_values": pixel_values, "pixel_attention_mask": pixel_mask}
    counts = tuple(len(t) for t in tiles)  # stills and frames: the images each prompt shows
    return PromptBatch(enc["input_ids"], enc["attention_mask"], extra, counts, (0,) * len(layouts))


def _stills(processor, images: list) -> list[tuple[torch.Tensor, torch.Tensor, int, int]]:
    """Each still's tiles, mask, rows and cols, as the processor's image processor tiles it."""
    if not images:
        return []
    enc = processor.image_processor([[im] for im in images], return_row_col_info=True, return_tensors="pt")
    out = []
    for i, ((rows,), (cols,)) in enumerate(zip(enc["rows"], enc["cols"], strict=True)):
        n = rows * cols + 1 if rows or cols else 1  # the tiles and the whole image, or the image alone
        out.append((enc["pixel_values"][i, :n], enc["pixel_attention_mask"][i, :n], rows, cols))
    return out


def _frames(processor, frames: list) -> list[Tile]:
    """Each frame as one untiled image at ``max_image_size``: SmolVLM's video processor, else the
    image processor without splitting. One frame a call's entry: frames of one clip may differ in size."""
    if not frames:
        return []
    if getattr(processor, "video_processor", None) is not None:
        enc = processor.video_processor([[f] for f in frames], do_sample_frames=False, return_tensors="pt")
    else:
        enc = processor.image_processor([[f] for f in frames], do_image_splitting=False, return_tensors="pt")
    return [(enc["pixel_values"][i, :1], enc["pixel_attention_mask"][i, :1]) for i in range(len(frames))]


def _video_text(processor, video: Video, shown: list[Tile]) -> str:
    """SmolVLM's prompt text for ``video``'s frames, each at its time (``Video.frame_times``)."""
    times = [round(t, 6) for t in video.frame_times()]  # 24.999999999999996 s is 25 s, not 24
    meta = VideoMetadata(total_num_frames=len(times), fps=1.0, frames_indices=times)  # index / 1.0 = time
    pixels = torch.cat([pixels for pixels, _ in shown])[None]  # [1, frames, 3, H, W]: the count it reads
    return processor.replace_video_token({"pixel_values": pixels, "video_metadata": [meta]}, 0)


def _padded(tiles: list[list[Tile]]) -> tuple[torch.Tensor, torch.Tensor]:
    """``pixel_values`` [B, T, 3, H, W] and ``pixel_attention_mask`` [B, T, H, W]: each prompt's
    tiles in order, zero-padded to the most tiles T and the largest H, W (padding at the bottom
    and right, as the image processor pads)."""
    every = [p for prompt in tiles for p, _ in prompt]
    height, width = max(p.shape[-2] for p in every), max(p.shape[-1] for p in every)
    most = max(sum(p.shape[0] for p, _ in prompt) for prompt in tiles)
    pixels = torch.zeros(len(tiles), most, every[0].shape[1], height, width, dtype=every[0].dtype)
    mask = torch.zeros(len(tiles), most, height, width, dtype=torch.int64)
    for b, prompt in enumerate(tiles):
        t = 0
        for p, m in prompt:
            n, _, h, w = p.shape
            pixels[b, t : t + n, :, :h, :w] = p
            mask[b, t : t + n, :h, :w] = m
            t += n
    return pixels, mask
