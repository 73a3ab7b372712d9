"""``vqa-grpo data synth``: which generator a task names, and the options it refuses, checked
before anything is written (the CLI only parses and calls :func:`synthesize_task`)."""

from __future__ import annotations

import os
from pathlib import Path

from vqa_grpo.data.synthetic import synthesize
from vqa_grpo.data.synthetic_multi import synthesize_multi
from vqa_grpo.data.synthetic_shift import synthesize_shifted
from vqa_grpo.data.synthetic_video import DEFAULT_FRAMES, synthesize_video
from vqa_grpo.errors import UserError

TASKS = ("single", "multi-image", "video")
"""``--task``: the single-image set (synthetic.py), several images (synthetic_multi.py), a clip
(synthetic_video.py)."""


def synthesize_task(
    task: str,
    out_dir: str | os.PathLike,
    n: int,
    seed: int = 0,
    image_size: int = 112,
    unanswerable: float = 0.0,
    ood: bool = False,
    frames: int | None = None,
    video_format: str | None = None,
) -> Path:
    """The set of ``task`` (TASKS) under ``out_dir``, its data.jsonl's path returned; ``ood``: the
    single-image set's out-of-distribution shift; ``frames`` and ``video_format`` are the video
    task's. UserError (one line naming the option) for a combination no generator takes."""
    if task not in TASKS:
        raise UserError(f"--task {task!r} is not one of {', '.join(TASKS)}")
    if ood and unanswerable:
        raise UserError("--ood takes no --unanswerable: the out-of-distribution set asks answerable questions")
    if task != "single" and (ood or unanswerable):
        raise UserError(f"--task {task} takes no --ood or --unanswerable: they shift the single-image set")
    if task != "video" and (frames is not None or video_format is not None):
        raise UserError(f"--frames and --video-format are for --task video, not --task {task}")
    if task == "multi-image":
        return synthesize_multi(out_dir, n=n, seed=seed, image_size=image_size)
    if task == "video":
        frames = DEFAULT_FRAMES if frames is None else frames
        return synthesize_video(out_dir, n, seed, image_size, frames, video_format or "frames")
    if ood:
        return synthesize_shifted(out_dir, n=n, seed=seed, image_size=image_size)
    return synthesize(out_dir, n=n, seed=seed, image_size=image_size, unanswerable=unanswerable)
