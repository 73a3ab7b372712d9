"""What every reader of a data set yields: a :class:`Row` of raw values, and the :class:`Source`
that streams them; and the rows of a ``datasets.Dataset`` (a local save_to_disk folder, a Hub
dataset). The readers are in sources.py, hub.py and vqa_v2.py; loader.py turns rows into examples.
"""

from __future__ import annotations

import ast
import json
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from vqa_grpo.config import ColumnsConfig
from vqa_grpo.data.types import IMAGE_PLACEHOLDER, VIDEO_PLACEHOLDER


@dataclass
class Row:
    """One row of the user's data, before any mapping or check."""

    values: dict[str, Any]
    reread_image: Callable[[], Any] | None = None
    """Reads the image cell again from the file, so examples need not keep its bytes."""


@dataclass
class Source:
    """A lazy stream of rows from one file or folder."""

    name: str
    """What was read, for messages: the path and its format."""
    base_dir: Path
    """Where relative image paths start when ``data.image_root`` is unset."""
    rows: Iterable[Row]
    columns: ColumnsConfig = field(default_factory=ColumnsConfig)
    """The column mapping that applies to these rows."""
    about: dict[str, Any] = field(default_factory=dict)
    """What was mapped (Hub datasets: the preset, config, split and each field's column), for
    ``data inspect``; empty for local files."""
    files: list[Path] = field(default_factory=list)
    """The files read, whose paths, sizes and modification times key the loaded-examples index
    (cache.py); empty: not indexed (rows in memory, a stream)."""
    index_dir: Path | None = None
    """Where the index goes unless data.cache_dir says (None: beside the first of ``files``)."""
    image_at: Callable[[int], Any] | None = None
    """Row i's (0-based) image cell read again from the data, for images kept inside it (Parquet,
    Arrow, a stream's spill file): examples then hold this and i, not the bytes. Picklable."""


def dataset_rows(ds: Any, image_col: str) -> Iterator[Row]:
    image_col = image_column(ds.column_names, image_col)
    has_image = image_col in ds.column_names
    start = 0
    for batch in ds.iter(batch_size=256):
        columns = list(batch)
        n = len(batch[columns[0]]) if columns else 0
        for i in range(n):
            values = {c: batch[c][i] for c in columns}
            reread = partial(dataset_cell, ds, start + i, image_col) if has_image else None
            yield Row(values, reread)
        start += n


def dataset_cell(ds: Any, index: int, column: str) -> Any:
    return only_image(ds[index][column])


@dataclass(frozen=True)
class DatasetImages:
    """Row i's image cell of a ``datasets.Dataset`` (memory-mapped Arrow), read again on demand."""

    ds: Any
    image_col: str

    def __call__(self, i: int) -> Any:
        return dataset_cell(self.ds, i, image_column(self.ds.column_names, self.image_col))


# ----------------------------------------------------------------------------------------------
# TRL's layouts: a conversational ``prompt`` column holds the question, an ``images`` column the
# image (a list), and a reward function gets every other column by name (rewards/user.py).

PROMPT_COLUMN = "prompt"
"""TRL's prompt column: read as the question when data.columns.question is the default and absent."""
IMAGES_COLUMN = "images"
"""TRL's list of images: read as the image when data.columns.image is the default and absent."""
_FIELDS = ("id", "question", "answer", "answers", "answer_type", "question_type", "image", "video")


def image_column(names: Any, image_col: str) -> str:
    """The column holding the image: ``image_col``, or TRL's ``images`` when the default is absent."""
    names = set(names or ())
    if image_col == "image" and image_col not in names and IMAGES_COLUMN in names:
        return IMAGES_COLUMN
    return image_col


def fallback_columns(seen: set[str], columns: ColumnsConfig) -> set[str]:
    """The default field columns that TRL's ``prompt`` and ``images`` columns stand in for."""
    out = set()
    if columns.question == "question" and PROMPT_COLUMN in seen:
        out.add("question")
    if columns.image == "image" and IMAGES_COLUMN in seen:
        out.add("image")
    return out


def question_cell(values: dict[str, Any], columns: ColumnsConfig) -> Any:
    """The question's cell: the mapped column's, or TRL's ``prompt`` when the default ``question``
    is absent; a conversational cell (a list of {role, content} messages) gives the text of its
    last user turn: a string, or its list of parts joined by a space, each text part stripped and
    each {type: image} / {type: video} part written as IMAGE_PLACEHOLDER / VIDEO_PLACEHOLDER, so
    the images show where the parts are. Parts that all come first, the images then the video,
    are left out: the default placement (images first) shows them there anyway, and the question
    keeps its plain text. System and earlier turns are not used, as vqa-grpo writes the prompt."""
    content = _user_content(values, columns)
    if content is NO_COLUMN:
        return _question(values, columns)
    if not isinstance(content, (list, tuple)):
        return content
    parts = [_part(p) for p in content]
    visual = [p for p in parts if p in (IMAGE_PLACEHOLDER, VIDEO_PLACEHOLDER)]
    if parts[: len(visual)] == visual and visual == sorted(visual, key=lambda p: p == VIDEO_PLACEHOLDER):
        parts = parts[len(visual) :]  # all first, images before the video: the default placement
    return " ".join(p for p in parts if p)


def content_marks(values: dict[str, Any], columns: ColumnsConfig) -> tuple[int, int] | None:
    """How many image and video parts the last user turn of a conversational question holds, or
    None for a question that is not a list of parts (the loader checks them against the row's
    images and video, as it checks placeholders)."""
    content = _user_content(values, columns)
    if not isinstance(content, (list, tuple)):
        return None
    parts = [_part(p) for p in content]
    return parts.count(IMAGE_PLACEHOLDER), parts.count(VIDEO_PLACEHOLDER)


def _question(values: dict[str, Any], columns: ColumnsConfig) -> Any:
    cell = values.get(columns.question)
    if cell is None and columns.question == "question":
        cell = values.get(PROMPT_COLUMN)
    return cell


def _user_content(values: dict[str, Any], columns: ColumnsConfig) -> Any:
    """The content of a conversational question's last user turn (None without one), or NO_COLUMN
    when the question is not conversational."""
    cell = _question(values, columns)
    if isinstance(cell, (list, tuple)) and cell and all(isinstance(m, dict) and "role" in m for m in cell):
        users = [m for m in cell if m.get("role") == "user"]
        return users[-1].get("content") if users else None
    return NO_COLUMN


def _part(part: Any) -> str:
    """A user turn's part as text: a text part's stripped text, a placeholder for an image or a
    video part, "" for anything else."""
    kind = part.get("type") if isinstance(part, dict) else None
    if kind == "text":
        text = part.get("text")
        return text.strip() if isinstance(text, str) else ""
    return {"image": IMAGE_PLACEHOLDER, "video": VIDEO_PLACEHOLDER}.get(kind, "")


NO_COLUMN = object()
"""``image_cell``'s answer for a row without the image column (loader.py decides per data set
whether that is a text-only question)."""


def image_cell(values: dict[str, Any], columns: ColumnsConfig) -> Any:
    """The entries of the row's image cell, in order: ``[cell]`` for one image (a path, bytes, a
    {"bytes", "path"} mapping, a PIL image), the entries of a list cell ([] none; a CSV cell
    holding a JSON list is that list; an entry that is itself a list stays one entry, which the
    loader refuses), None for a null or empty cell (None, NaN, ""), NO_COLUMN when the row has no
    image column."""
    name = image_column(values, columns.image)
    if name not in values:
        return NO_COLUMN
    cell = values[name]
    if getattr(getattr(cell, "dtype", None), "kind", "") == "O" and getattr(cell, "ndim", 0) == 1:
        cell = cell.tolist()  # an array of images (paths, bytes cells) from pandas
    elif isinstance(cell, str) and cell.startswith("[") and cell.rstrip().endswith("]"):
        cell = parse_list(cell)  # CSV: a JSON list of paths
        if cell is None:
            return [values[name]]  # not a list after all: a path that starts with "["
    if isinstance(cell, (list, tuple)):
        return list(cell)
    return None if is_empty(cell) else [cell]


def is_empty(cell: Any) -> bool:
    """Whether a cell holds nothing: None, NaN (pandas' empty cell), pandas' NA, blank text."""
    if cell is None or type(cell).__name__ == "NAType":
        return True
    if isinstance(cell, float):
        return cell != cell
    return isinstance(cell, str) and not cell.strip()


@dataclass(frozen=True)
class ListEntry:
    """Entry ``index`` of the list cell that ``read`` gives (one image of several). Picklable."""

    read: Callable[[], Any]
    index: int

    def __call__(self) -> Any:
        cell = self.read()
        return list(cell)[self.index] if cell is not None else None


def undecoded(ds: Any, image_col: str, video_col: str = "video") -> Any:
    """``ds`` with its image column (or TRL's ``images`` list) and its video column left encoded:
    cells {"bytes", "path"}, lists of them for a list of images (several images, a video's frames)."""
    import datasets

    features = getattr(ds, "features", None) or {}
    for col in (image_column(list(features), image_col), video_col):
        feature = features.get(col)
        if isinstance(feature, datasets.Image):
            ds = ds.cast_column(col, datasets.Image(decode=False))
        elif isinstance(getattr(feature, "feature", None), datasets.Image):  # List(Image) / Sequence(Image)
            ds = ds.cast_column(col, datasets.List(datasets.Image(decode=False)))
        elif type(feature).__name__ == "Video" and hasattr(datasets, "Video"):  # a video file: its bytes or path
            ds = ds.cast_column(col, datasets.Video(decode=False))
    return ds


def only_image(cell: Any) -> Any:
    """The one image of a list cell of one (TRL's ``images``), else the cell (several: the list)."""
    return cell[0] if isinstance(cell, (list, tuple)) and len(cell) == 1 else cell


def row_fields(values: dict[str, Any], columns: ColumnsConfig, example: Any) -> dict[str, Any]:
    """The row's columns by name for reward functions (``VQAExample.fields``): each column not
    mapped to a field as it is (a numpy value as a list or scalar); a mapped column under its own
    name carries the field's value as read (``solution`` mapped to the answer: the answer text).
    Left out: the image and video columns, binary cells (bytes, images) and the columns named
    like a field, which reward functions get as that field."""
    mapped = {getattr(columns, f): f for f in _FIELDS}
    if columns.question == "question" and "question" not in values:
        mapped.setdefault(PROMPT_COLUMN, "question")
    out: dict[str, Any] = {}
    for name, value in values.items():
        if not isinstance(name, str) or name in _FIELDS or name == IMAGES_COLUMN:
            continue
        field_name = mapped.get(name)
        if field_name in ("image", "video"):
            continue
        if field_name is not None:
            out[name] = getattr(example, field_name)
        elif not _binary(value):
            out[name] = value.tolist() if hasattr(value, "tolist") and not isinstance(value, (str, bytes)) else value
    return out


# ----------------------------------------------------------------------------------------------
# Cell values written as text.


def parse_list(text: str) -> list | None:
    """A list written as JSON or as a Python literal (pandas writes list cells that way to CSV)."""
    for parse in (json.loads, ast.literal_eval):
        try:
            value = parse(text)
        except (ValueError, SyntaxError, TypeError, RecursionError):
            continue
        if isinstance(value, list):
            return value
    return None


def most_common(answers: list[str]) -> str:
    if not answers:
        return ""
    counts = Counter(answers)
    return max(counts, key=counts.__getitem__)  # ties: the first seen


def _binary(value: Any) -> bool:
    if isinstance(value, (bytes, bytearray, memoryview)) or (isinstance(value, dict) and "bytes" in value):
        return True
    return type(value).__module__.startswith("PIL.")
