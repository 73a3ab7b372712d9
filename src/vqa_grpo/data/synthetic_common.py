"""What the synthetic sets share: the argument checks, the seeded splits and answer cycles, the
boxes' sizes and gaps, and writing data.jsonl whole.

The generators are ``synthetic.py`` (one image a question, its ``--ood`` shift in
``synthetic_shift.py``), ``synthetic_multi.py`` (two or three images) and ``synthetic_video.py``
(a clip). Each checks its arguments here before anything is written; ``synthetic_task.py`` picks
one for ``vqa-grpo data synth``.
"""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

from vqa_grpo.errors import UserError

MIN_IMAGE_SIZE = 32
SIZES: dict[str, float] = {"small": 0.18, "large": 0.30}
"""Size name -> side of the object's bounding box as a fraction of the image side
(20 and 34 px at 112 px)."""


def check_arguments(n: int, image_size: int, unanswerable: float = 0.0) -> None:
    """UserError for a count, an image size or a share of unanswerable questions that cannot
    be drawn, before anything is written."""
    if n < 1:
        raise UserError(f"n must be a positive number of examples (--n), got {n}")
    if not 0 <= unanswerable <= 1:
        raise UserError(f"unanswerable must be a share in [0, 1] (--unanswerable), e.g. 0.1; got {unanswerable}")
    if image_size < MIN_IMAGE_SIZE:
        raise UserError(f"image_size must be at least {MIN_IMAGE_SIZE} px (--image-size), got {image_size}")


def apportion(n: int, shares: dict) -> dict:
    """``n`` split by ``shares`` (summing to 1) with largest-remainder rounding; ties go to the first key."""
    exact = {k: s * n for k, s in shares.items()}
    counts = {k: int(x) for k, x in exact.items()}
    for k in sorted(shares, key=lambda k: counts[k] - exact[k])[: n - sum(counts.values())]:
        counts[k] += 1
    return counts


def balanced(rng: random.Random, answers: tuple[str, ...], count: int) -> list[str]:
    """``count`` answers cycling through ``answers`` in a seeded order (each equally often, up to
    one; which answers get the leftover ones varies with the seed)."""
    order = list(answers)
    rng.shuffle(order)
    return [order[i % len(order)] for i in range(count)]


def side_px(size: str, image_size: int) -> int:
    """Bounding-box side in pixels, even so that the box has an integer centre."""
    return max(2, 2 * round(SIZES[size] * image_size / 2))


def overlaps(a: tuple[int, ...] | list[int], b: tuple[int, ...] | list[int], gap: int) -> bool:
    """Whether boxes ``a`` and ``b`` (x1, y1 exclusive) come closer than ``gap`` pixels."""
    return not (a[2] + gap <= b[0] or b[2] + gap <= a[0] or a[3] + gap <= b[1] or b[3] + gap <= a[1])


def write_rows(out_dir: Path, rows: list[dict]) -> Path:
    """data.jsonl, one JSON row a line, replaced whole: written to a temporary file, then renamed."""
    path, tmp = out_dir / "data.jsonl", out_dir / "data.jsonl.tmp"
    tmp.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    os.replace(tmp, path)
    return path
