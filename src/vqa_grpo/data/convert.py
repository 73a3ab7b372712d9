"""One row of any format to an example, or to the reason it is skipped (loader.py's docstring
lists the reasons, in the order they are checked, and the field rules).

:class:`RowConverter` keeps what the rows of one load share: the ids seen, and each image or video
file checked once (VQA v2 shares one image among about five questions). The cell helpers below
read JSON, CSV text, pandas and Arrow values alike.
"""

from __future__ import annotations

import math
import numbers
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vqa_grpo.config import ColumnsConfig, DataConfig
from vqa_grpo.data.images import ImageLoader, StoredImage, check_image, resolve_image
from vqa_grpo.data.prompts import IMAGE_PLACEHOLDER, VIDEO_PLACEHOLDER
from vqa_grpo.data.qtypes import answer_type_of, question_type_of
from vqa_grpo.data.rows import (
    NO_COLUMN,
    ListEntry,
    Row,
    Source,
    content_marks,
    image_cell,
    image_column,
    is_empty,
    most_common,
    parse_list,
    question_cell,
    row_fields,
)
from vqa_grpo.data.types import ANSWER_TYPES, VQAExample
from vqa_grpo.data.video import VIDEO_SUFFIXES, VideoLoader, check_video, frame_list, resolve_video


def row_id(row: Row, cols: ColumnsConfig, index: int) -> str:
    return _text(row.values.get(cols.id)) or f"row{index}"


@dataclass
class Undecided:
    """A row with neither an image nor a video read before any row showed an image or video
    column: a text-only question if none ever does, else skipped (``RowConverter.absent``)."""

    example: VQAExample
    where: str


class RowConverter:
    """Turns rows into examples or (reason, detail) skips; remembers ids and checked images."""

    def __init__(self, cfg: DataConfig, source: Source, root: Path):
        self.cols = source.columns
        self.root = root
        self.allow_outside_root = cfg.allow_outside_root
        self.max_pixels = max(0, cfg.max_image_pixels)
        self.video_frames, self.video_fps = cfg.video_frames, cfg.video_fps
        self.seen_ids: set[str] = set()
        self.checked: dict[Path, tuple[str, str]] = {}  # VQA v2 shares one image among ~5 questions
        self.resolved: dict[str, tuple[Any, str, str]] = {}  # and so one path among ~5 rows
        self.videos: dict[Path, tuple[str, str]] = {}  # video files checked
        self.visual_like: dict[str, str] = {}  # text-only rows' columns that look like images or videos
        self.unnoted = 100  # how many more rows without an image or video column to look at
        self.image_column = self.video_column = False  # whether a row so far had the column (a key, a cell)

    def convert(self, row: Row, index: int) -> VQAExample | Undecided | tuple[str, str]:
        v, cols = row.values, self.cols
        if self.unnoted and cols.video not in v and image_column(v, cols.image) not in v:
            self.unnoted -= 1
            self._note_visual_columns(v)
        ex_id = row_id(row, cols, index)
        where = f"row {index} (id {ex_id[:40]})"
        if ex_id in self.seen_ids:
            return "duplicate_id", f"{where}: id seen in an earlier row"
        self.seen_ids.add(ex_id)
        raw_question = question_cell(v, cols)  # or TRL's conversational prompt (rows.py)
        question = _text(raw_question)
        if question and not isinstance(raw_question, str):
            return "question_not_text", f"{where}: question {raw_question!r}"
        if not question:
            return "empty_question", where
        if _has_flag(v.get(cols.answer)) or _has_flag(v.get(cols.answers)):
            return "answer_not_text", f"{where}: a true/false answer"
        answers = _answers(v.get(cols.answers))
        answer = _text(v.get(cols.answer)) or most_common(answers)
        if not answer:
            return "empty_answer", where
        answers = answers or [answer]
        entries = image_cell(v, cols)  # a list of image cells, None (an empty cell) or NO_COLUMN (rows.py)
        video_cell = _video_cell(v.get(cols.video))
        self.image_column = self.image_column or entries is not NO_COLUMN
        self.video_column = self.video_column or cols.video in v
        cells = entries if isinstance(entries, list) else []
        mismatch = _placeholders(question, len(cells), video_cell is not None)
        mismatch = mismatch or _parts(content_marks(v, cols), len(cells), video_cell is not None)
        if mismatch:
            return "placeholder_mismatch", f"{where}: {mismatch}"
        unseen = not cells and video_cell is None and entries != [] and not _empty_list(v.get(cols.video))
        if unseen and self.decided:
            return self.absent(where)
        sources = []
        for i, one in enumerate(cells):
            which = "" if len(cells) == 1 else f"image {i + 1} of {len(cells)}: "
            source, reason, detail = self._resolve(one)
            if source is None:
                return reason, f"{where}: {which}{detail}"
            reason, detail = self._check(source)
            if reason:
                return reason, f"{where}: {which}{detail}"
            if row.reread_image is not None and not isinstance(source, Path):  # keep a handle, not the bytes
                source = StoredImage(row.reread_image if len(cells) == 1 else ListEntry(row.reread_image, i))
            sources.append(source)
        video = None
        if video_cell is not None:
            video, reason, detail = self._video(video_cell)
            if video is None:
                return reason, f"{where}: {detail}"
        answer_type = _text(v.get(cols.answer_type)).lower()
        example = VQAExample(
            id=ex_id,
            question=question,
            answers=answers,
            answer=answer,
            answer_type=answer_type if answer_type in ANSWER_TYPES else answer_type_of(answers),
            question_type=_text(v.get(cols.question_type)) or question_type_of(_unmarked(question)),
            image_loader=ImageLoader(sources[0], self.max_pixels) if len(sources) == 1 else None,
            image_loaders=tuple(ImageLoader(s, self.max_pixels) for s in sources) if len(sources) > 1 else (),
            video_loader=None
            if video is None
            else VideoLoader(video, self.video_frames, self.video_fps, self.max_pixels),
        )
        example.fields = row_fields(v, cols, example)  # every column, for reward functions
        return Undecided(example, where) if unseen else example

    @property
    def decided(self) -> bool:
        """Whether the data set is known to have an image or a video column: a row with neither
        is then skipped (``absent``); until then it may be a text-only question (loader.py)."""
        return self.image_column or self.video_column

    def absent(self, where: str) -> tuple[str, str]:
        """The skip of a row with neither an image nor a video in a set with either column."""
        if self.image_column:
            return "missing_image", f"{where}: no image in the row; write [] for a question without one"
        return "missing_video", f"{where}: no video in the row; write [] for a question without one"

    def _resolve(self, cell: Any) -> tuple[Any, str, str]:
        if not isinstance(cell, str):
            return resolve_image(cell, self.root, self.allow_outside_root)
        if cell not in self.resolved:
            self.resolved[cell] = resolve_image(cell, self.root, self.allow_outside_root)
        return self.resolved[cell]

    def _check(self, source: Any) -> tuple[str, str]:
        if not isinstance(source, Path):
            return check_image(source)
        if source not in self.checked:
            self.checked[source] = check_image(source)
        return self.checked[source]

    def _video(self, cell: Any) -> tuple[Any, str, str]:
        """``(source, reason, detail)`` of a video cell: a file checked once per path, or frames
        each checked as an image."""
        source, reason, detail = resolve_video(cell, self.root, self.allow_outside_root)
        if source is None:
            return None, reason, detail
        if isinstance(source, tuple):
            for i, frame in enumerate(source):
                reason, detail = self._check(frame)
                if reason:
                    return None, reason, f"video frame {i + 1} of {len(source)}: {detail}"
            return source, "", ""
        if isinstance(source, Path):
            if source not in self.videos:
                self.videos[source] = check_video(source)
            reason, detail = self.videos[source]
        else:
            reason, detail = check_video(source)
        return (None, reason, detail) if reason else (source, "", "")

    def _note_visual_columns(self, values: dict[str, Any]) -> None:
        """Remember a column of this text-only row named like an image or video column whose cell
        looks like an image or a video file (a misnamed column; ``_check_columns``). Both must
        hold: a text-only set may well keep a file name in some other column."""
        for name, value in values.items():
            if isinstance(name, str) and name not in self.visual_like and _VISUAL_NAME.search(name):
                kind = _visual_kind(value, name)
                if kind:
                    self.visual_like[name] = kind


def _video_cell(value: Any) -> Any:
    """The video cell, or None for no video (absent, null, NaN, "" or an empty list)."""
    frames = frame_list(value)
    if frames is not None:
        return frames or None
    if isinstance(value, str) and value.strip().startswith("["):
        parsed = parse_list(value.strip())  # CSV: a JSON list of frames
        return parsed or None if parsed is not None else value
    return None if is_empty(value) else value


def _empty_list(value: Any) -> bool:
    """Whether a cell is an explicitly empty list ([], also as a CSV cell's text)."""
    frames = frame_list(value)
    if frames is not None:
        return not frames
    return isinstance(value, str) and value.strip().startswith("[") and parse_list(value.strip()) == []


def _placeholders(question: str, images: int, video: bool) -> str:
    """Why the question's placeholders do not fit the row's visuals, or "" (none, or they fit)."""
    marked_images, marked_videos = question.count(IMAGE_PLACEHOLDER), question.count(VIDEO_PLACEHOLDER)
    if not marked_images and not marked_videos:
        return ""
    if marked_images == images and marked_videos == int(video):
        return ""
    return (
        f"the question holds {marked_images} {IMAGE_PLACEHOLDER} and {marked_videos} {VIDEO_PLACEHOLDER} for "
        f"{images} image{'s' * (images != 1)} and {int(video)} video"
    )


def _parts(marks: tuple[int, int] | None, images: int, video: bool) -> str:
    """Why a conversational question's image and video parts do not fit the row's visuals, or ""
    (none, or they fit)."""
    if not marks or marks == (0, 0) or marks == (images, int(video)):
        return ""
    return (
        f"the prompt's user turn holds {marks[0]} image and {marks[1]} video parts for {images} "
        f"image{'s' * (images != 1)} and {int(video)} video"
    )


def _unmarked(question: str) -> str:
    """The question without its placeholders, whose first words VQA v2's question types read."""
    if "<" not in question:
        return question
    return " ".join(question.replace(IMAGE_PLACEHOLDER, " ").replace(VIDEO_PLACEHOLDER, " ").split())


_VISUAL_NAME = re.compile(r"(?i)image|img|photo|picture|pic|frame|video|clip|movie")
_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".gif", ".bmp", ".webp", ".tif", ".tiff")


_VIDEO_NAME = re.compile(r"(?i)frame|video|clip|movie")


def _visual_kind(value: Any, name: str = "") -> str:
    """ "image" or "video" when a cell looks like one (a file name, bytes, a list of them), else "";
    a list of images under a name like a video's (``frames``) is a video's frames."""
    if isinstance(value, (list, tuple)) and value:
        if not _visual_kind(value[0]):
            return ""
        return "video" if _VIDEO_NAME.search(name) else "image"
    if isinstance(value, str):
        name = value.strip().lower()
        return "video" if name.endswith(VIDEO_SUFFIXES[:-1]) else "image" if name.endswith(_IMAGE_SUFFIXES) else ""
    if isinstance(value, (bytes, bytearray)) or (isinstance(value, dict) and "bytes" in value):
        return "image"
    return "image" if type(value).__module__.startswith("PIL.") else ""


# ----------------------------------------------------------------------------------------------
# Cell values of any type (JSON, CSV strings, pandas, Arrow) to text.


def _text(value: Any) -> str:
    """Stripped text of a scalar cell; "" for missing, NaN or non-scalar values."""
    if isinstance(value, str):
        return value.strip()
    if isinstance(value, bool) or value is None:
        return str(value).lower() if isinstance(value, bool) else ""
    if isinstance(value, numbers.Integral):
        return str(int(value))
    if isinstance(value, numbers.Real):
        x = float(value)
        if math.isnan(x):
            return ""
        return str(int(x)) if x.is_integer() else repr(x)
    return ""


def _has_flag(value: Any) -> bool:
    """Whether an answer cell, or an entry of an answers cell, is a boolean (JSON true/false, an
    Arrow bool column): "true" is not an answer's text."""
    if isinstance(value, str) or value is None:  # the usual cell, first
        return False
    value = value.tolist() if hasattr(value, "tolist") else value  # numpy arrays and numpy bools
    if isinstance(value, dict):
        return _has_flag(value.get("answer"))
    if isinstance(value, (list, tuple)):
        return any(type(x) is not str and _has_flag(x) for x in value)
    return isinstance(value, bool)


def _answers(value: Any) -> list[str]:
    """Non-empty answer strings from a list, a JSON/Python list in a string, one string, or
    VQA-style entries (``{"answer": ...}`` items, or a datasets ``{"answer": [...]}`` mapping)."""
    if hasattr(value, "tolist") and not isinstance(value, (str, bytes)):
        value = value.tolist()  # numpy arrays from pandas / Arrow
    if isinstance(value, str):
        text = value.strip()
        parsed = parse_list(text) if text.startswith("[") else None
        return _answers(parsed) if parsed is not None else ([text] if text else [])
    if isinstance(value, dict):
        return _answers(value.get("answer"))
    if isinstance(value, (list, tuple)):
        if value and set(map(type, value)) == {str}:  # the usual cell: plain strings
            return [t for t in (x.strip() for x in value) if t]
        items = (_text(x.get("answer")) if isinstance(x, dict) else _text(x) for x in value)
        return [x for x in items if x]
    text = _text(value)
    return [text] if text else []
