"""A synthetic video VQA set: short clips of ``synthetic.py``'s objects sliding in and out of view.

A clip is ``frames`` images (8 by default) of one scene in which 1-3 objects each move in a straight
horizontal line at a steady speed, one of three ways:

    enter  wholly out of view in the first frame (past the left or right border), wholly in the last
    leave  wholly in view in the first frame, wholly out in the last
    stay   wholly in view in every frame, still or drifting

No two objects come closer than ``synthetic.py``'s gap in any frame, so every frame shows each
object in view whole, or partly at a border. Each clip has one question, of four kinds in equal
shares:

    kind       answer type  question                                 answers
    enter      yes/no       "Does a red circle enter the scene?"     yes, no
    leave      other        "Which object leaves the scene?"         "red circle", ... (the 18 kinds)
    count_end  number       "How many objects are there at the end?" 0-3
    direction  other        "Does the red circle move left or right?" left, right

"leave" has one leaving object; "direction" asks about an object that is alone of its kind and
moves at least its own width; a "no" to "enter" shows the asked object staying or leaving about half
the time, so that seeing it is not enough. Answers are drawn first and balanced
within each kind, as in ``synthetic.py``.

Output of ``synthesize_video(out_dir, n, seed, frames=8)``::

    out_dir/data.jsonl               keys in this order: id, video, question, answer, answers,
                                     question_type, answer_type, scene
    out_dir/images/<id>/<t>.png      frame t (0-based, two digits); ``video`` lists these paths

With ``video_format="mp4"`` each clip is ``out_dir/videos/<id>.mp4`` instead (H.264, ``MP4_FPS``
frames a second) and ``video`` is that path. ``scene`` lists the objects as {"shape", "color",
"size", "motion", "boxes"}: ``boxes[t]`` is the object's [x0, y0, x1, y1] in frame t (x1, y1
exclusive; past the image where it is out of view). Same arguments, byte-identical files.
"""

from __future__ import annotations

import os
import random
from fractions import Fraction
from pathlib import Path

from PIL import Image

from vqa_grpo.data.qtypes import question_type_of
from vqa_grpo.data.synthetic import ALL_KINDS, COLORS, SHAPES, SIZES, draw_scene
from vqa_grpo.data.synthetic_common import (
    apportion,
    balanced,
    check_arguments,
    overlaps,
    side_px,
    write_rows,
)
from vqa_grpo.data.video import import_av
from vqa_grpo.errors import UserError

KIND_ANSWER_TYPES: dict[str, str] = {"enter": "yes/no", "leave": "other", "count_end": "number", "direction": "other"}
"""The question kinds, in equal shares, and their VQA v2 answer types."""
MOTIONS = ("enter", "leave", "stay")
MAX_OBJECTS = 3
DEFAULT_FRAMES = 8
MIN_FRAMES = 4
VIDEO_FORMATS = ("frames", "mp4")
MP4_FPS = 1.0
"""Frames a second of an MP4 clip: the rate data.video_fps (default 1.0) takes a list of frames at."""
_SCENE_TRIES = 200
_OBJECT_TRIES = 100

VOCABULARY: tuple[str, ...] = tuple(
    sorted(
        set("does a the enter scene which object leaves how many objects are there at end move left or right ?".split())
        | {"yes", "no"}
        | set(COLORS)
        | set(SHAPES)
        | {str(k) for k in range(MAX_OBJECTS + 1)}
    )
)
"""Every word of every question and answer (lower-cased, split on ``\\w+|[^\\w\\s]``)."""

_Object = tuple[tuple[str, str], str, str | None]
"""((colour, shape), motion, direction "left"/"right" or None for any)."""


def _answers(kind: str) -> tuple[str, ...]:
    return {
        "enter": ("yes", "no"),
        "leave": tuple(f"{c} {s}" for c, s in ALL_KINDS),
        "count_end": tuple(str(k) for k in range(MAX_OBJECTS + 1)),
        "direction": ("left", "right"),
    }[kind]


def _schedule(rng: random.Random, n: int) -> list[tuple[str, str]]:
    schedule = []
    for kind, count in apportion(n, {k: 1 / len(KIND_ANSWER_TYPES) for k in KIND_ANSWER_TYPES}).items():
        schedule += [(kind, a) for a in balanced(rng, _answers(kind), count)]
    rng.shuffle(schedule)
    return schedule


def _others(rng: random.Random, count: int, not_kind: tuple[str, str] | None, motions=MOTIONS) -> list[_Object]:
    pool = [k for k in ALL_KINDS if k != not_kind]
    return [(rng.choice(pool), rng.choice(motions), None) for _ in range(count)]


def _enter(rng: random.Random, answer: str) -> tuple[str, list[_Object]]:
    kind = rng.choice(ALL_KINDS)
    if answer == "yes":
        asked = [(kind, "enter", None)]
    else:  # half the time the object is there but does not enter
        asked = [(kind, rng.choice(("stay", "leave")), None)] if rng.random() < 0.5 else []
    total = rng.randint(max(len(asked), 1), MAX_OBJECTS)
    return f"Does a {kind[0]} {kind[1]} enter the scene?", asked + _others(rng, total - len(asked), kind)


def _leave(rng: random.Random, answer: str) -> tuple[str, list[_Object]]:
    kind = tuple(answer.split())
    others = _others(rng, rng.randint(0, MAX_OBJECTS - 1), kind, motions=("enter", "stay"))
    return "Which object leaves the scene?", [(kind, "leave", None)] + others


def _count_end(rng: random.Random, answer: str) -> tuple[str, list[_Object]]:
    k = int(answer)
    total = rng.randint(max(k, 1), MAX_OBJECTS)
    objects = _others(rng, k, None, motions=("enter", "stay")) + _others(rng, total - k, None, motions=("leave",))
    return "How many objects are there at the end?", objects


def _direction(rng: random.Random, answer: str) -> tuple[str, list[_Object]]:
    kind = rng.choice(ALL_KINDS)
    others = _others(rng, rng.randint(0, MAX_OBJECTS - 1), kind)
    return f"Does the {kind[0]} {kind[1]} move left or right?", [(kind, rng.choice(MOTIONS), answer)] + others


KINDS = {"enter": _enter, "leave": _leave, "count_end": _count_end, "direction": _direction}


def _track(rng: random.Random, motion: str, direction: str | None, side: int, size: int, gap: int) -> tuple[int, int]:
    """The first and last frames' x0 of an object ``side`` px wide moving as ``motion`` says; with a
    ``direction``, a staying object drifts that way by its width or more, else anywhere in view."""
    inside = lambda: rng.randint(gap, size - gap - side)  # noqa: E731
    out_left = lambda: rng.randint(-2 * side, -side)  # noqa: E731
    out_right = lambda: rng.randint(size, size + side)  # noqa: E731
    if motion == "stay" and direction is None:
        return inside(), inside()
    direction = direction or rng.choice(("left", "right"))
    if motion == "enter":
        return (out_left() if direction == "right" else out_right()), inside()
    if motion == "leave":
        return inside(), (out_right() if direction == "right" else out_left())
    while True:  # a drift of at least its width the asked way (redrawn a few times at most)
        start, end = inside(), inside()
        if abs(end - start) >= side and (end > start) == (direction == "right"):
            return start, end


def place_tracks(rng: random.Random, objects: list[_Object], image_size: int, frames: int) -> list[dict]:
    """Sizes, rows and tracks for ``objects`` by rejection sampling: no two boxes closer than the gap
    in any frame. A failed object restarts the scene with new sizes, as ``place_objects`` does."""
    gap = max(1, image_size // 50)
    for _ in range(_SCENE_TRIES):
        placed: list[dict] = []
        for (color, shape), motion, direction in objects:
            size = rng.choice(tuple(SIZES))
            side = side_px(size, image_size)
            for _ in range(_OBJECT_TRIES):
                y0 = rng.randint(gap, image_size - gap - side)
                start, end = _track(rng, motion, direction, side, image_size, gap)
                xs = [round(start + (end - start) * t / (frames - 1)) for t in range(frames)]
                boxes = [[x, y0, x + side, y0 + side] for x in xs]
                if not any(overlaps(a, b, gap) for other in placed for a, b in zip(boxes, other["boxes"])):
                    break
            else:
                break
            placed.append({"shape": shape, "color": color, "size": size, "motion": motion, "boxes": boxes})
        else:
            rng.shuffle(placed)  # the order of the list must not give the answer away
            return placed
    raise RuntimeError(f"could not place {len(objects)} moving objects in {image_size} px")


def write_mp4(path: Path, frames: list[Image.Image], fps: float = MP4_FPS) -> None:
    """``frames`` as an H.264 MP4 (yuv420p, so even sides) at ``fps``, one encoder thread so that
    the bytes do not depend on the machine's cores; a temporary file renamed into place."""
    av = import_av()
    tmp = path.with_name(path.name + ".tmp")
    try:
        with av.open(str(tmp), "w", format="mp4") as container:
            stream = container.add_stream("libx264", rate=Fraction(fps).limit_denominator(1000))
            stream.width, stream.height = frames[0].size
            stream.pix_fmt = "yuv420p"
            stream.options = {"crf": "12", "threads": "1"}
            for frame in frames:
                container.mux(stream.encode(av.VideoFrame.from_image(frame)))
            container.mux(stream.encode())
    except BaseException:
        tmp.unlink(missing_ok=True)  # nothing half-written left beside the videos
        raise
    os.replace(tmp, path)


def synthesize_video(
    out_dir: str | os.PathLike,
    n: int = 1000,
    seed: int = 0,
    image_size: int = 112,
    frames: int = DEFAULT_FRAMES,
    video_format: str = "frames",
) -> Path:
    """Write ``n`` clips of ``frames`` frames with a question each under ``out_dir`` as the module
    docstring says; return the path of data.jsonl. Frames of an earlier run are not removed.

    ``video_format="mp4"`` writes each clip as videos/<id>.mp4 instead (``MP4_FPS`` frames a
    second; PyAV, an even ``image_size``), and ``video`` is that path."""
    check_arguments(n, image_size)
    if frames < MIN_FRAMES:
        raise UserError(f"frames must be at least {MIN_FRAMES} per clip (--frames), got {frames}")
    if video_format not in VIDEO_FORMATS:
        raise UserError(
            f"video_format must be one of {', '.join(VIDEO_FORMATS)} (--video-format), got {video_format!r}"
        )
    if video_format == "mp4":
        if image_size % 2:
            raise UserError(
                f"image_size must be even for MP4 clips (yuv420p; --image-size), e.g. 112; got {image_size}"
            )
        import_av()
    out_dir = Path(out_dir)
    (out_dir / ("videos" if video_format == "mp4" else "images")).mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    width = max(6, len(str(n - 1)))
    rows = []
    for index, (kind, answer) in enumerate(_schedule(rng, n)):
        question, objects = KINDS[kind](rng, answer)
        scene = place_tracks(rng, objects, image_size, frames)
        example_id = f"{index:0{width}d}"
        images = [draw_scene([{**o, "box": o["boxes"][t]} for o in scene], image_size) for t in range(frames)]
        if video_format == "mp4":
            video: str | list[str] = f"videos/{example_id}.mp4"
            write_mp4(out_dir / video, images)
        else:
            (out_dir / "images" / example_id).mkdir(exist_ok=True)
            video = [f"images/{example_id}/{t:02d}.png" for t in range(frames)]
            for path, image in zip(video, images):
                image.save(out_dir / path, format="PNG")
        rows.append(
            {
                "id": example_id,
                "video": video,
                "question": question,
                "answer": answer,
                "answers": [answer],
                "question_type": question_type_of(question),
                "answer_type": KIND_ANSWER_TYPES[kind],
                "scene": scene,
            }
        )
    return write_rows(out_dir, rows)
