"""What every reader of a data set yields: a :class:`Row` of raw values, and the :class:`Source`
that streams them; and the rows of a ``datasets.Dataset`` (a local save_to_disk folder, a Hub
dataset). The readers are in sources.py, hub.py and vqa_v2.py; loader.py turns rows into examples.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from vqa_grpo.config import ColumnsConfig


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


def dataset_rows(ds: Any, image_col: str) -> Iterator[Row]:
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
    return ds[index][column]
