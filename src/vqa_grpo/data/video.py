"""A question's video: where it lives, the cheap check made when the data loads, and the sampler.

A video cell is a video file (a path relative to the image root, its bytes, or a ``{"bytes",
"path"}`` mapping) or a list of frame images in time order (each as an image cell, images.py).
``resolve_video`` turns it into a source or a skip reason, ``check_video`` opens the container
and reads its header (no frame is decoded) or checks each frame's header, and
:class:`VideoLoader` samples the frames only when the trainer asks for them.

Sampling: frames at ``fps`` frames per second of the clip (data.video_fps), times 0, 1/fps,
2/fps, ... while inside the clip, each the frame on screen at that time; when that gives more
than ``max_frames`` (data.video_frames), ``max_frames`` times evenly spaced over the clip instead,
its first and last frames included (as qwen_vl_utils and lmms-eval sample), and the rate the
model is told is then ``(max_frames - 1) / duration``. Never more samples than the clip has
frames (as qwen_vl_utils caps them): when the rate asks for more than the clip's N frames and N is
at most ``max_frames``, each frame once, at the clip's own rate. A list of frames is taken to be a
clip at ``fps``: all of its frames, or ``max_frames`` evenly spaced ones, the first and last included.
Each sampled frame keeps its time in the clip (``Video.times``): the time sampled, a frame's own
time when each frame is taken or when a file holds fewer frames than its header says (a time past
its last frame shows that frame, at its own time: ``_frames_at``), index / ``fps`` for a list.
Rounded picks from a list need not be evenly spaced (9 frames to 8: 0, 1, 2, 3, 5, 6, 7, 8 s), so
the times, not k / rate, say when.
Files are read with PyAV (``pip install 'vqa-grpo[video]'``), imported only when a video file is met.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vqa_grpo.data.images import (
    ImageLoader,
    ImageSource,
    check_image,
    resolve_file,
    resolve_image,
    to_rgb,
)
from vqa_grpo.data.types import Video
from vqa_grpo.errors import UserError

VideoSource = Path | bytes | tuple[ImageSource, ...]
"""A video file (its path or bytes), or its frames as image sources."""
VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".gif")


def import_av() -> Any:
    """PyAV, or a one-line UserError naming the extra that installs it."""
    try:
        import av
    except ImportError:
        raise UserError("reading a video file needs PyAV; pip install 'vqa-grpo[video]'") from None
    return av


def frame_list(cell: Any) -> list | None:
    """The frames of a cell that is a list of images (a numpy array of them too), else None."""
    if getattr(getattr(cell, "dtype", None), "kind", "") == "O" and getattr(cell, "ndim", 0) == 1:
        cell = cell.tolist()  # an array of frames (paths, bytes cells) from pandas
    return list(cell) if isinstance(cell, (list, tuple)) else None


def resolve_video(value: Any, root: Path, allow_outside_root: bool) -> tuple[VideoSource | None, str, str]:
    """``(source, reason, detail)``: the source when usable, else a skip reason and what was seen.
    A bad frame of a list is named: "video frame 2 of 5: ..."."""
    frames = frame_list(value)
    if frames is not None:
        sources = []
        for i, frame in enumerate(frames):
            source, reason, detail = resolve_image(frame, root, allow_outside_root)
            if source is None:
                return None, reason, f"video frame {i + 1} of {len(frames)}: {detail}"
            sources.append(source)
        return tuple(sources), "", ""
    return resolve_file(value, root, allow_outside_root, "video")


def check_video(source: VideoSource) -> tuple[str, str]:
    """``(reason, detail)`` with reason "" when the video looks usable: a file's container opens
    and holds a video stream (its header only) and is not a still image, or each frame passes
    ``check_image``."""
    if isinstance(source, tuple):
        for i, frame in enumerate(source):
            reason, detail = check_image(frame)
            if reason:
                return reason, f"video frame {i + 1} of {len(source)}: {detail}"
        return "", ""
    if isinstance(source, Path):
        try:
            if not source.is_file():
                return "missing_video", f"{source} not found"
        except (OSError, ValueError):
            return "missing_video", f"{str(source)[:200]} is not a valid file name"
    where = str(source) if isinstance(source, Path) else f"embedded video ({len(source)} bytes)"
    av = import_av()
    try:
        with _open(av, source) as container:
            if not container.streams.video:
                return "corrupt_video", f"{where} holds no video stream"
            if _still_image(container):
                return (
                    "corrupt_video",
                    f"{where} is a still image ({container.format.name}), not a video: put it in the image column",
                )
    except (av.FFmpegError, OSError, ValueError) as e:
        return "corrupt_video", f"{where}: {getattr(e, 'strerror', None) or e}"
    return "", ""


def _still_image(container: Any) -> bool:
    """Whether FFmpeg read the file as a single picture (PNG, JPEG, ...: its ``image2`` demuxer or an
    ``*_pipe`` one), which PyAV would otherwise take for a one-frame video."""
    name = container.format.name
    return name == "image2" or name.endswith("_pipe")


def _open(av: Any, source: Path | bytes) -> Any:
    return av.open(str(source) if isinstance(source, Path) else io.BytesIO(source), "r")


SEEK_GAP = 3.0
"""Seconds ahead of the last decoded frame past which the sampler seeks rather than decodes on."""


def asked(duration: float, fps: float) -> int:
    """How many times ``k/fps`` fall inside a clip of ``duration`` seconds (at least one)."""
    return max(1, math.ceil(duration * fps - 1e-9))


def takes_every_frame(duration: float, fps: float, max_frames: int, count: int) -> bool:
    """Whether a clip of ``count`` frames is sampled as each of its frames once: the rate asks
    for more times than it has frames (``fps`` above the clip's own), which would show some
    frames twice, and its frames fit ``max_frames`` (else ``max_frames`` evenly spaced times,
    fewer than its frames, already take distinct ones)."""
    return 0 < count <= max_frames and asked(duration, fps) > count


def sample_times(duration: float, fps: float, max_frames: int) -> tuple[list[float], float]:
    """The times (seconds) to sample in a clip of ``duration`` and the rate they make: ``k/fps``
    while inside the clip (at least one), else ``max_frames`` times evenly spaced from 0 to the
    end, both ends included (the frame on screen at the end is the last one), at the rate
    ``(max_frames - 1) / duration``."""
    n = asked(duration, fps)
    if n <= max_frames:
        return [j / fps for j in range(n)], fps
    if max_frames == 1:
        return [0.0], 1 / duration
    step = duration / (max_frames - 1)
    return [j * step for j in range(max_frames)], (max_frames - 1) / duration


def sample_indices(count: int, fps: float, max_frames: int) -> tuple[list[int], float]:
    """The frames to take from a list of ``count`` frames shown at ``fps`` and the rate they make:
    all of them when they are at most ``max_frames``, else ``max_frames`` evenly spaced indices
    from the first to the last, ``round(linspace(0, count - 1, max_frames))`` (qwen_vl_utils' and
    lmms-eval's choice), at ``fps * (max_frames - 1) / (count - 1)``."""
    if count <= max_frames:
        return list(range(count)), fps
    if max_frames == 1:
        return [0], fps / count
    step = (count - 1) / (max_frames - 1)
    return [math.floor(j * step + 0.5) for j in range(max_frames)], fps / step


@dataclass(frozen=True)
class VideoLoader:
    """Samples one video on call (:class:`Video`: RGB frames of at most ``max_pixels`` pixels).

    Picklable (no closures), so data-loader workers can receive the examples.
    """

    source: VideoSource
    max_frames: int = 8
    fps: float = 1.0
    max_pixels: int = 0

    def __call__(self) -> Video:
        if isinstance(self.source, tuple):
            return self._from_frames(self.source)
        av = import_av()
        with _open(av, self.source) as container:
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            duration = _duration(container, stream)
            if duration is None:  # no duration in the header: count the frames' times first
                stamps = [_time(f, stream, i) for i, f in enumerate(container.decode(stream))]
                duration, count = max(stamps, default=0.0), len(stamps)
                container.seek(0)
            else:
                count = _frame_count(stream, duration)
            duration = max(duration, 1e-6)
            if takes_every_frame(duration, self.fps, self.max_frames, count):
                frames, times, rate = _every_frame(container, stream, duration, self.max_frames)
            else:
                wanted, rate = sample_times(duration, self.fps, self.max_frames)
                frames, times = _frames_at(container, stream, wanted)
        if not frames:
            raise ValueError("the video holds no frame that can be decoded")
        return Video([to_rgb(f, self.max_pixels) for f in frames], rate, tuple(times))

    def frames_sampled(self) -> int | None:
        """How many frames a call returns, from a list's length or a file's header (no frame is
        decoded); None when the header gives no duration or cannot be read."""
        if isinstance(self.source, tuple):
            return len(sample_indices(len(self.source), self.fps, self.max_frames)[0])
        av = import_av()
        try:
            with _open(av, self.source) as container:
                stream = container.streams.video[0]
                duration = _duration(container, stream)
                count = 0 if duration is None else _frame_count(stream, duration)
        except (av.FFmpegError, OSError, ValueError, IndexError):
            return None
        if duration is None:
            return None
        duration = max(duration, 1e-6)
        if takes_every_frame(duration, self.fps, self.max_frames, count):
            return count
        return len(sample_times(duration, self.fps, self.max_frames)[0])

    def _from_frames(self, sources: tuple[ImageSource, ...]) -> Video:
        picks, rate = sample_indices(len(sources), self.fps, self.max_frames)
        times = tuple(i / self.fps for i in picks)  # frame i of the list is at i / fps
        return Video([ImageLoader(sources[i], self.max_pixels)() for i in picks], rate, times)

    def describe(self) -> str:
        """A short human description of where the video comes from."""
        if isinstance(self.source, tuple):
            n = len(self.source)
            return f"a list of {n} frame image{'s' * (n != 1)}"
        return str(self.source) if isinstance(self.source, Path) else "video stored in the data file"


def _duration(container: Any, stream: Any) -> float | None:
    if stream.duration is not None and stream.time_base is not None:
        return float(stream.duration * stream.time_base)
    if container.duration is not None:
        return container.duration / 1_000_000  # av.time_base: microseconds
    if stream.frames and stream.average_rate:
        return stream.frames / float(stream.average_rate)
    return None


def _frame_count(stream: Any, duration: float) -> int:
    """The clip's frames: the header's count, else its duration times its mean rate (0: unknown)."""
    if stream.frames:
        return int(stream.frames)
    return round(duration * float(stream.average_rate)) if stream.average_rate else 0


def _every_frame(container: Any, stream: Any, duration: float, max_frames: int) -> tuple[list[Any], list[float], float]:
    """Each frame of the clip once, decoded from the start, as PIL images, their times from the
    clip's start, and the clip's rate (its mean rate, else frames / duration). Should the header
    have undercounted the frames, those past ``max_frames`` are thinned as a list's are
    (``sample_indices``)."""
    decoded = list(container.decode(stream))
    rate = float(stream.average_rate or 0) or len(decoded) / duration
    picks, rate = sample_indices(len(decoded), rate, max_frames)
    start = _start(stream)
    return [decoded[i].to_image() for i in picks], [_time(decoded[i], stream, i) - start for i in picks], rate


def _start(stream: Any) -> float:
    """The stream's first time, in seconds (0 when the header gives none)."""
    return float(stream.start_time * stream.time_base) if stream.start_time is not None else 0.0


def _time(frame: Any, stream: Any, index: int) -> float:
    if frame.time is not None:
        return float(frame.time)
    rate = float(stream.average_rate or 0) or 1.0
    return index / rate


def _frames_at(container: Any, stream: Any, times: list[float]) -> tuple[list[Any], list[float]]:
    """The frame on screen at each time (the last frame starting at or before it), as PIL images,
    and the time each shows: the time asked while it lies within the clip. When the decoder runs
    out of frames (a header longer than the frames the file holds, a file cut short), a time more
    than one frame's duration (1 / the stream's rate) past the start of the last frame it gave
    shows that frame at that frame's own time, not at the time asked (nor before the time shown
    ahead of it: times never go back). A seek that yields no frame counts as running out (the last
    frame decoded before it stands in); once out, no more seeks.

    Decodes forward from the start, seeking (to the key frame at or before the time) only when
    the next time is more than ``SEEK_GAP`` seconds past the last frame decoded: a few frames of
    an hour-long clip do not decode the hour."""
    start = _start(stream)
    frame_duration = 1 / (float(stream.average_rate or 0) or 1.0)
    out: list[Any] = []
    shown: list[float] = []
    frames = None  # (time from the clip's start, frame) from the last seek on
    current = ahead = None  # the last frame at or before the time; the first one past it
    latest = None  # the last frame the decoder gave
    exhausted = False
    for t in times:
        last = (ahead or current or (None, None))[0]
        if not exhausted and (frames is None or last is None or t - last > SEEK_GAP):
            container.seek(int((t + start) / stream.time_base), stream=stream, backward=True)
            frames = ((_time(f, stream, i) - start, f) for i, f in enumerate(container.decode(stream)))
            current = ahead = None
        while True:
            if ahead is None:
                ahead = next(frames, None)
                if ahead is None:
                    exhausted = True
                    break
                latest = ahead
            if ahead[0] > t + 1e-6:
                break
            current, ahead = ahead, None
        picked = current or ahead or latest
        if picked is None:  # not one frame decoded
            break
        out.append(picked[1].to_image())
        past_end = exhausted and t - picked[0] > frame_duration + 1e-6
        shown.append(max(picked[0], *shown[-1:]) if past_end else t)  # never before the time ahead of it
    return out, shown
