"""The images of a streamed Hub dataset (``data.streaming``), kept on disk rather than in memory.

A stream cannot be read twice, so its examples cannot re-read an image from the data as a
memory-mapped Arrow file's can; held as bytes, the kept images would grow the process by their
full size (1.75 times it at 50,000 rows). Each row's image bytes are appended to one temporary
file as the row streams past, and the row's example keeps only its place there (row i ->
offset, length): no image bytes stay in memory beyond the row being read. The file is removed
when the process exits.
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
    """Image bytes by row (0-based, in stream order); ``spill(i)`` gives row i's cell back."""

    def __init__(self) -> None:
        fd, self.path = tempfile.mkstemp(prefix="vqa_grpo_stream_", suffix=".images")
        os.close(fd)
        self.offsets, self.lengths = array("q"), array("q")
        self._end = 0
        self._owner = os.getpid()
        atexit.register(self._remove)

    def __getstate__(self) -> dict[str, Any]:
        return {"path": self.path, "offsets": self.offsets, "lengths": self.lengths, "_end": self._end, "_owner": -1}

    def add(self, data: bytes | None) -> int:
        """Row ``len(self)``'s image bytes (None: no bytes); returns the row's number."""
        row = len(self.offsets)
        if data:
            with open(self.path, "ab") as f:
                f.write(data)
            self.offsets.append(self._end)
            self.lengths.append(len(data))
            self._end += len(data)
        else:
            self.offsets.append(-1)
            self.lengths.append(0)
        return row

    def __len__(self) -> int:
        return len(self.offsets)

    def __call__(self, i: int) -> dict[str, Any]:
        offset, length = self.offsets[i], self.lengths[i]
        if offset < 0:
            return {"bytes": None, "path": None}
        with open(self.path, "rb") as f:
            f.seek(offset)
            return {"bytes": f.read(length), "path": None}

    def _remove(self) -> None:
        if self._owner == os.getpid():
            with contextlib.suppress(OSError):
                os.unlink(self.path)


def spilled_rows(values: Iterable[dict[str, Any]], image_col: str, spill: StreamSpill) -> Iterator[Row]:
    """Rows of a stream whose one image (bytes) also goes to ``spill``: the row's example re-reads it
    from there (``Row.reread_image``), so the bytes leave memory with the row."""
    for v in values:
        v = dict(v)
        cell = v.get(image_column(v, image_col))
        data = cell_bytes(only_image(cell.tolist() if hasattr(cell, "tolist") else cell))
        row = spill.add(data)
        yield Row(v, partial(spill, row) if data else None)
