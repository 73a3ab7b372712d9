"""The loaded examples as columns: one Arrow table, each :class:`VQAExample` made when asked for.

A data set of VQA v2's size (443,757 questions, ten answers each) as Python objects holds some
2-3 GB that the process cannot give back; as Arrow columns (strings in contiguous buffers) it is
a fraction of that, and read from the loaded-examples index (cache.py) it is a memory map that
every process of a run shares. An :class:`ExampleTable` is a sequence of examples like the list it
replaces: ``table[i]`` builds example i (its image still opened lazily), iteration builds them a
chunk at a time, slices and ``take`` give lists or views; the splits use its answer-type column.

Images: a path (the image file), or a reference into the data file (``Source.image_at``: a Parquet
or Arrow cell read again on demand, a streamed image's place in the spill file). A row of several
images holds their list (``images``: each a path, or null for entry k of the row's cell read
again); a row with neither is a text-only question. A video is its file's path (``video``) or its
frames' paths (``video_frames``), sampled by data.video_frames and data.video_fps when it is made.
The row's other columns (``VQAExample.fields``) are JSON text. Anything else (a PIL image in
memory, a video's bytes, a field JSON cannot give back as it was, such as a date) stays inline, in
memory, and such a table is not written to the cache: the index holds plain data only, never
pickles. The columns of several images and of videos are read only when some row has them.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from vqa_grpo.data.images import ImageLoader, StoredImage
from vqa_grpo.data.rows import ListEntry
from vqa_grpo.data.types import VQAExample
from vqa_grpo.data.video import VideoLoader

_CHUNK = 4096
SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("question", pa.string()),
        ("answers", pa.list_(pa.string())),
        ("answer", pa.string()),
        ("answer_type", pa.dictionary(pa.int8(), pa.string())),
        ("question_type", pa.dictionary(pa.int32(), pa.string())),
        ("image", pa.dictionary(pa.int32(), pa.string())),
        ("image_ref", pa.int64()),
        ("fields", pa.string()),
        ("images", pa.list_(pa.string())),
        ("video", pa.string()),
        ("video_frames", pa.list_(pa.string())),
    ]
)
_VISUALS = ("images", "video", "video_frames")
"""The columns of several images and of videos: all null in a set of one image per question."""


class TableBuilder:
    """Collects converted examples as columns; ``table()`` gives the Arrow table."""

    def __init__(self, image_at: Callable[[int], Any] | None):
        self.image_at = image_at
        self.columns: dict[str, list] = {name: [] for name in SCHEMA.names}
        self.image_folders: dict[str, int | None] = {}
        """The folders of the image files the rows named, with their modification times (cache.py)."""
        self.inline: dict[int, dict[str, Any]] = {}
        """Row -> what stays in memory: its "image" source (neither a path nor a reference into
        the file), its "fields" (not plain JSON)."""

    def add(self, example: VQAExample, index: int) -> None:
        """``example`` converted from the source's row ``index`` (1-based)."""
        c = self.columns
        inline = self.inline.setdefault(len(c["id"]), {})
        path, ref, paths = None, -1, None
        if example.image_loader is not None:
            source = example.image_loader.source if isinstance(example.image_loader, ImageLoader) else None
            if isinstance(source, Path):
                path = str(source)
            elif isinstance(source, StoredImage) and self.image_at is not None:
                ref = index - 1
            else:
                inline["image"] = source
        elif example.image_loaders:
            sources = [loader.source for loader in example.image_loaders]
            paths = [str(s) if isinstance(s, Path) else None for s in sources]
            stored = [isinstance(s, StoredImage) for s in sources]
            if any(stored) and self.image_at is not None and all(p is not None or t for p, t in zip(paths, stored)):
                ref = index - 1
            elif not all(p is not None for p in paths):
                inline["images"], paths = tuple(sources), None
        video, frames = None, None
        if example.video_loader is not None:
            source = example.video_loader.source
            if isinstance(source, Path):
                video = str(source)
            elif isinstance(source, tuple) and all(isinstance(f, Path) for f in source):
                frames = [str(f) for f in source]
            else:
                inline["video"] = source
        text = _json(example.fields) if example.fields else None
        if example.fields and text is None:
            inline["fields"] = example.fields
        if not inline:
            del self.inline[len(c["id"])]
        c["id"].append(example.id)
        c["question"].append(example.question)
        c["answers"].append(example.answers)
        c["answer"].append(example.answer)
        c["answer_type"].append(example.answer_type)
        c["question_type"].append(example.question_type)
        c["image"].append(path)
        c["image_ref"].append(ref)
        c["fields"].append(text)
        c["images"].append(paths)
        c["video"].append(video)
        c["video_frames"].append(frames)

    def table(self) -> pa.Table:
        arrays = []
        for f in SCHEMA:
            values = self.columns.pop(f.name)
            if pa.types.is_dictionary(f.type):
                arrays.append(pa.array(values, pa.string()).dictionary_encode().cast(f.type))
            else:
                arrays.append(pa.array(values, f.type))
        return pa.Table.from_arrays(arrays, schema=SCHEMA)


class ExampleTable(Sequence[VQAExample]):
    """A sequence of examples read from Arrow columns (``rows``: a view's positions in them)."""

    def __init__(
        self,
        table: pa.Table,
        image_at: Callable[[int], Any] | None = None,
        max_pixels: int = 0,
        *,
        inline: dict[int, dict[str, Any]] | None = None,
        rows: np.ndarray | None = None,
        mapper: Callable[[VQAExample], VQAExample] | None = None,
        video: tuple[int, float] = (8, 1.0),
    ):
        self.table = table.combine_chunks() if any(c.num_chunks > 1 for c in table.columns) else table
        self.image_at, self.max_pixels = image_at, max_pixels
        self.inline = inline or {}
        self.rows = rows
        self.mapper = mapper
        self.video = video
        """data.video_frames and data.video_fps, which sample each video when it is made."""
        self._columns = {name: self.table.column(name).chunk(0) for name in SCHEMA.names} if len(table) else {}
        self._read = [
            n
            for n in SCHEMA.names
            if n not in _VISUALS or n in self._columns and self._columns[n].null_count < len(self.table)
        ]
        """The columns examples are made from: those of several images and videos only when used."""
        self._visuals = any(n in _VISUALS for n in self._read) or any(
            k in v for v in self.inline.values() for k in ("images", "video")
        )

    def __len__(self) -> int:
        return len(self.table) if self.rows is None else len(self.rows)

    def _position(self, i: int) -> int:
        n = len(self)
        if i < 0:
            i += n
        if not 0 <= i < n:
            raise IndexError(f"example index {i} out of range ({n} examples)")
        return i if self.rows is None else int(self.rows[i])

    def __getitem__(self, i):  # type: ignore[override]
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        return self._examples([self._position(int(i))])[0]

    def __iter__(self) -> Iterator[VQAExample]:
        n = len(self)
        for start in range(0, n, _CHUNK):
            positions = range(start, min(n, start + _CHUNK))
            yield from self._examples(positions if self.rows is None else self.rows[start : start + _CHUNK].tolist())

    def __eq__(self, other: object) -> bool:
        if isinstance(other, (list, tuple, ExampleTable)):
            return len(self) == len(other) and all(a == b for a, b in zip(self, other))
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]

    def __add__(self, other: Any) -> Any:
        if isinstance(other, ExampleTable) and other.table is self.table and other.mapper is self.mapper:
            return self.take(np.arange(len(self)), extra=other._all_positions())
        if isinstance(other, (list, tuple, ExampleTable)):
            return [*self, *other]
        return NotImplemented

    def __radd__(self, other: Any) -> Any:
        if isinstance(other, (list, tuple)):
            return [*other, *self]
        return NotImplemented

    def __repr__(self) -> str:
        return f"ExampleTable({len(self)} examples)"

    def _all_positions(self) -> np.ndarray:
        return np.arange(len(self.table), dtype=np.int64) if self.rows is None else self.rows

    def take(self, indices: Sequence[int] | np.ndarray, *, extra: np.ndarray | None = None) -> ExampleTable:
        """A view of the examples at ``indices`` (in that order), sharing the columns."""
        rows = self._all_positions()[np.asarray(indices, dtype=np.int64)]
        if extra is not None:
            rows = np.concatenate([rows, extra])
        return ExampleTable(
            self.table,
            self.image_at,
            self.max_pixels,
            inline=self.inline,
            rows=rows,
            mapper=self.mapper,
            video=self.video,
        )

    def mapped(self, mapper: Callable[[VQAExample], VQAExample]) -> ExampleTable:
        """This view, each example passed through ``mapper`` when it is made."""
        return ExampleTable(
            self.table,
            self.image_at,
            self.max_pixels,
            inline=self.inline,
            rows=self.rows,
            mapper=mapper,
            video=self.video,
        )

    def column(self, name: str) -> list:
        """One field of every example, in order (``answer_type``, ``id``, ``answers``, ...)."""
        values = self._columns[name] if len(self.table) else pa.array([], SCHEMA.field(name).type)
        if self.rows is not None:
            values = values.take(pa.array(self.rows))
        if pa.types.is_dictionary(values.type):
            names = values.dictionary.to_pylist()
            return [names[c] for c in values.indices.to_numpy(zero_copy_only=False).tolist()]
        return values.to_pylist()

    def _examples(self, positions: Sequence[int]) -> list[VQAExample]:
        cols = self._columns
        if len(positions) == 1:  # one example: scalar reads, no gather
            p = positions[0]
            values = {name: [cols[name][p].as_py()] for name in self._read}
        else:
            idx = pa.array(positions, pa.int64())
            values = {name: cols[name].take(idx).to_pylist() for name in self._read}
        out = []
        for k, p in enumerate(positions):
            ex = VQAExample(
                id=values["id"][k],
                question=values["question"][k],
                answers=values["answers"][k],
                answer=values["answer"][k],
                answer_type=values["answer_type"][k],
                question_type=values["question_type"][k],
            )
            if self._visuals:
                self._add_visuals(ex, p, {name: values[name][k] for name in values})
            else:  # one image per question: the loaders of earlier versions, unchanged
                ex.image_loader = self._image_loader(p, values["image"][k], values["image_ref"][k])
            text = values["fields"][k]
            ex.fields = json.loads(text) if text is not None else self.inline.get(p, {}).get("fields", {})
            out.append(self.mapper(ex) if self.mapper is not None else ex)
        return out

    def _image_loader(self, position: int, path: str | None, ref: int) -> ImageLoader | None:
        if path is not None:
            return ImageLoader(Path(path), self.max_pixels)
        if ref >= 0 and self.image_at is not None:
            return ImageLoader(StoredImage(partial(self.image_at, ref)), self.max_pixels)
        source = self.inline.get(position, {}).get("image")
        return None if source is None else ImageLoader(source, self.max_pixels)

    def _add_visuals(self, ex: VQAExample, position: int, values: dict[str, Any]) -> None:
        """The image loaders (none, one or several) and the video loader of the row at ``position``."""
        inline, ref = self.inline.get(position, {}), values["image_ref"]
        paths = values.get("images")
        if paths is not None:
            read = partial(self.image_at, ref) if ref >= 0 and self.image_at is not None else None
            sources = [Path(q) if q is not None else StoredImage(ListEntry(read, i)) for i, q in enumerate(paths)]
        else:
            sources = list(inline.get("images", ()))
        if sources:
            ex.image_loaders = tuple(ImageLoader(s, self.max_pixels) for s in sources)
        else:
            ex.image_loader = self._image_loader(position, values["image"], ref)
        video = values.get("video")
        frames = values.get("video_frames")
        source = Path(video) if video is not None else tuple(map(Path, frames)) if frames else inline.get("video")
        if source is not None:
            ex.video_loader = VideoLoader(source, self.video[0], self.video[1], self.max_pixels)


def _json(fields: dict[str, Any]) -> str | None:
    """``fields`` as JSON text when JSON gives them back equal (same types), else None."""
    try:
        text = json.dumps(fields, ensure_ascii=False)
    except (TypeError, ValueError):
        return None
    return text if _same(json.loads(text), fields) else None


def _same(a: Any, b: Any) -> bool:
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return a == b


def answer_types(examples: Sequence[VQAExample]) -> list[str]:
    """Every example's answer type, from the column when ``examples`` is a table."""
    if isinstance(examples, ExampleTable):
        return examples.column("answer_type")
    return [ex.answer_type for ex in examples]


def pick(examples: Sequence[VQAExample], indices: list[int]) -> Sequence[VQAExample]:
    """The examples at ``indices`` (ascending): a view of a table, else a list."""
    if isinstance(examples, ExampleTable):
        return examples.take(indices)
    return [examples[i] for i in indices]


class _AnswerLists(Sequence[list[str]]):
    """Every example's answers over several sequences of examples, read as they are asked for."""

    def __init__(self, parts: tuple[Sequence[VQAExample], ...]):
        self.parts = parts

    def __len__(self) -> int:
        return sum(len(p) for p in self.parts)

    def __getitem__(self, i):  # type: ignore[override]
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        i = i + len(self) if i < 0 else i
        for part in self.parts:
            if i < len(part):
                return part[i].answers
            i -= len(part)
        raise IndexError("answers index out of range")

    def __iter__(self) -> Iterator[list[str]]:
        for part in self.parts:
            if isinstance(part, ExampleTable):
                for start in range(0, len(part), _CHUNK):  # the column only: no example is made
                    yield from part.take(np.arange(start, min(len(part), start + _CHUNK))).column("answers")
            else:
                yield from (ex.answers for ex in part)


def answer_lists(*parts: Sequence[VQAExample]) -> Sequence[list[str]]:
    """The answers of every example of ``parts``, in order, without making the examples."""
    return _AnswerLists(parts)
