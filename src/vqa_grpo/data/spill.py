"""The images of a streamed Hub dataset (``data.streaming``), kept on disk rather than in memory.

A stream cannot be read twice, so its examples cannot re-read an image from the data as a
memory-mapped Arrow file's can; held as bytes, the kept images would grow the process by their
full size (1.75 times it at 50,000 rows). Each row's image bytes (each image's, for a list of
several) are appended to one temporary file as the row streams past, and the row's example keeps
only its place there (row i -> its entries' offsets and lengths): no image bytes stay in memory
beyond the row being read. The file is removed when the process exits.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import tempfile
from array import array
from collections.abc import Iterable, Iterator
from functools import partial
from typing import Any

from vqa_grpo.data.images import cell_bytes
from vqa_grpo.data.rows import Row, image_column, only_image


class StreamSpill:
    """Image bytes by row (0-based, in stream order); ``spill(i)`` gives row i's cell back: one
    ``{"bytes", "path"}`` cell, or a list of them for a row of several images."""

    def __init__(self) -> None:
        fd, self.path = tempfile.mkstemp(prefix="vqa_grpo_stream_", suffix=".images")
        os.close(fd)
        self.offsets, self.lengths = array("q"), array("q")
        """Each entry's place in the file (offset -1: no bytes)."""
        self.first, self.count = array("q"), array("q")
        """Each row's first entry and its number of entries (-1: one image, not a list)."""
        self._end = 0
        self._owner = os.getpid()
        atexit.register(self._remove)

    def __getstate__(self) -> dict[str, Any]:
        state = {k: getattr(self, k) for k in ("path", "offsets", "lengths", "first", "count", "_end")}
        return {**state, "_owner": -1}

    def add(self, data: bytes | None | list[bytes | None]) -> int:
        """Row ``len(self)``'s image bytes (None: no bytes; a list: several images); returns the
        row's number."""
        row = len(self.first)
        entries = data if isinstance(data, list) else [data]
        self.first.append(len(self.offsets))
        self.count.append(len(entries) if isinstance(data, list) else -1)
        with open(self.path, "ab") as f:
            for entry in entries:
                if entry:
                    f.write(entry)
                    self.offsets.append(self._end)
                    self.lengths.append(len(entry))
                    self._end += len(entry)
                else:
                    self.offsets.append(-1)
                    self.lengths.append(0)
        return row

    def __len__(self) -> int:
        return len(self.first)

    def __call__(self, i: int) -> dict[str, Any] | list[dict[str, Any]]:
        first, count = self.first[i], self.count[i]
        with open(self.path, "rb") as f:
            cells = [self._entry(f, k) for k in range(first, first + max(count, 1))]
        return cells[0] if count < 0 else cells

    def _entry(self, f: Any, k: int) -> dict[str, Any]:
        offset, length = self.offsets[k], self.lengths[k]
        if offset < 0:
            return {"bytes": None, "path": None}
        f.seek(offset)
        return {"bytes": f.read(length), "path": None}

    def _remove(self) -> None:
        if self._owner == os.getpid():
            with contextlib.suppress(OSError):
                os.unlink(self.path)


def spilled_rows(values: Iterable[dict[str, Any]], image_col: str, spill: StreamSpill) -> Iterator[Row]:
    """Rows of a stream whose image bytes (one image, or each of several) also go to ``spill``:
    the row's example re-reads them from there (``Row.reread_image``), so the bytes leave memory
    with the row."""
    for v in values:
        v = dict(v)
        cell = only_image(_listed(v.get(image_column(v, image_col))))
        data = [cell_bytes(c) for c in cell] if isinstance(cell, list) else cell_bytes(cell)
        row = spill.add(data)
        yield Row(v, partial(spill, row) if (any(data) if isinstance(data, list) else data) else None)


def _listed(cell: Any) -> Any:
    if hasattr(cell, "tolist") and not isinstance(cell, (str, bytes)):
        cell = cell.tolist()
    return list(cell) if isinstance(cell, tuple) else cell
