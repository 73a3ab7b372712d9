"""Where a prompt shows its visuals, and how per-image tensors follow their prompts.

A prompt's visuals arrive as one PIL image (a single-image question) or a list of Visual
(data/types.py: images and a Video) in prompt order. :func:`layout` places them: at the
question's ``<image>`` / ``<video>`` placeholders (data/prompts.py), in order, when it has any;
else all images first, in order, then the video, then the text. The family's adapter turns the
parts into its chat format and its processor's inputs; a family whose processor has no video
path shows a video as its frames, one image each, in the video's place (:func:`frames_as_images`).

:func:`repeat_blocks` repeats a tensor whose leading rows belong to the prompts in blocks of
different sizes (a prompt's images, or its images' patches), block after block.
"""

from __future__ import annotations

import re

import torch
from PIL import Image

from vqa_grpo.data.prompts import IMAGE_PLACEHOLDER, VIDEO_PLACEHOLDER
from vqa_grpo.data.types import Video, Visual
from vqa_grpo.errors import UserError

PLACEHOLDER = re.compile(f"({re.escape(IMAGE_PLACEHOLDER)}|{re.escape(VIDEO_PLACEHOLDER)})")

Part = tuple[str, object]
"""One piece of a user turn: ("image", PIL image), ("video", Video) or ("text", str)."""


def as_visuals(visuals) -> list[Visual]:
    """A prompt's visuals as a list: one image (or Video) becomes [it], None becomes []."""
    if visuals is None:
        return []
    if isinstance(visuals, (Image.Image, Video)):
        return [visuals]
    return list(visuals)


def has_placeholders(text: str) -> bool:
    """Whether ``text`` places its visuals itself (an ``<image>`` or ``<video>`` in it)."""
    return PLACEHOLDER.search(text) is not None


def layout(text: str, visuals: list) -> list[Part]:
    """The user turn's parts in prompt order: each visual at its placeholder, or (none in ``text``)
    the images, then the video, then the text. Empty text between placeholders is left out.
    Raises UserError when the placeholders do not match the visuals (the data layer skips such rows)."""
    images = [v for v in visuals if not isinstance(v, Video)]
    videos = [v for v in visuals if isinstance(v, Video)]
    pieces = PLACEHOLDER.split(text)  # text, placeholder, text, ...
    marked = pieces[1::2]
    if not marked:
        return [("image", im) for im in images] + [("video", v) for v in videos] + [("text", text)]
    want = (marked.count(IMAGE_PLACEHOLDER), marked.count(VIDEO_PLACEHOLDER))
    if want != (len(images), len(videos)):
        raise UserError(
            f"a question holds {want[0]} {IMAGE_PLACEHOLDER} and {want[1]} {VIDEO_PLACEHOLDER} for {len(images)} "
            f"image(s) and {len(videos)} video(s); write one placeholder per visual, or none"
        )
    queues = {IMAGE_PLACEHOLDER: iter(images), VIDEO_PLACEHOLDER: iter(videos)}
    parts: list[Part] = []
    for i, piece in enumerate(pieces):
        if i % 2:
            parts.append(("image" if piece == IMAGE_PLACEHOLDER else "video", next(queues[piece])))
        elif piece:
            parts.append(("text", piece))
    return parts


def frames_as_images(parts: list[Part]) -> list[Part]:
    """``parts`` with each video replaced by its frames, one ("image", frame) each, in its place."""
    out: list[Part] = []
    for kind, value in parts:
        out += [("image", f) for f in value.frames] if kind == "video" else [(kind, value)]
    return out


def of_kind(parts: list[Part], kind: str) -> list:
    """The values of ``parts`` of one kind ("image", "video" or "text"), in order."""
    return [value for k, value in parts if k == kind]


def repeat_blocks(t: torch.Tensor, sizes: list[int] | None, repeats: int) -> torch.Tensor:
    """Each prompt's block of leading rows ``repeats`` times in a row: ``sizes[b]`` rows belong to
    prompt b (0 for a prompt without any); None: one row each (``repeat_interleave``)."""
    if sizes is None:
        return t.repeat_interleave(repeats, dim=0)
    if sum(sizes) != t.shape[0]:
        raise ValueError(f"a tensor of {t.shape[0]} rows cannot be split into the prompts' {sizes}")
    return torch.cat([block for block in t.split(sizes, dim=0) for _ in range(repeats)], dim=0)
