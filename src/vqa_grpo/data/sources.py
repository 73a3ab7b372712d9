"""Reading rows from each data format, keyed by the user's own column names.

``open_source`` infers the format from the path (``data.format`` overrides it) and returns a
:class:`Source`: a lazy stream of rows plus the folder that relative image paths start from.
Turning rows into examples (column mapping, checks, skips) is the loader's job, not this module's.

Formats: jsonl, csv (also .tsv), json (a list of objects), parquet (one file or a folder of
shards), datasets (a ``Dataset.save_to_disk`` folder), imagefolder (a folder with
``metadata.jsonl`` or ``metadata.csv`` whose ``file_name`` column names the images, as in Hugging
Face's imagefolder) and vqa_v2 (the official questions + annotations pair, see ``vqa_v2.py``).
Hub datasets (``hf:NAME``) are read by ``hub.py``.
"""

from __future__ import annotations

import bisect
import csv
import json
import os
from collections.abc import Iterable, Iterator
from functools import lru_cache, partial
from pathlib import Path
from typing import Any

from vqa_grpo.config import DataConfig
from vqa_grpo.data.hub import hub_source, is_hub_path
from vqa_grpo.data.rows import DatasetImages, Row, Source, dataset_rows, image_column, only_image, undecoded
from vqa_grpo.data.vqa_v2 import looks_like_vqa_v2, vqa_v2_source
from vqa_grpo.errors import UserError

FORMATS = ("auto", "jsonl", "csv", "json", "parquet", "datasets", "imagefolder", "vqa_v2")
_SUFFIX_FORMATS = {
    ".jsonl": "jsonl", ".ndjson": "jsonl", ".csv": "csv", ".tsv": "csv",
    ".json": "json", ".parquet": "parquet", ".pq": "parquet",
}  # fmt: skip
_METADATA_FILES = ("metadata.jsonl", "metadata.csv")
_KNOWN = (
    "JSONL, CSV, JSON, Parquet, a datasets save_to_disk folder, an image folder with metadata.jsonl, or a VQA v2 pair"
)


def open_source(path: str | os.PathLike, cfg: DataConfig) -> Source:
    """The rows of ``path`` in ``cfg.format`` ("auto" infers it); UserError when it cannot be read.

    ``hf:NAME`` (a Hub dataset id, or a folder laid out as a Hub repository) is read by
    ``datasets.load_dataset``; see ``hub.py``. data.preset applies to those paths only.
    """
    if is_hub_path(path):
        return hub_source(str(path), cfg)
    if cfg.preset is not None and cfg.preset.strip().lower() != "none":
        raise UserError(
            f"data.preset={cfg.preset!r} applies to hf: paths; read {path} as data.path=hf:{path} (a folder laid out "
            "as a Hub dataset), or drop data.preset"
        )
    p = Path(path).expanduser()
    if not str(path).strip() or not p.exists():
        raise UserError(f"data path {str(path)!r} not found; set data.path to a file or folder ({_KNOWN})")
    fmt = cfg.format
    if fmt not in FORMATS:
        raise UserError(f"data.format={fmt!r} is not known; choose one of {', '.join(FORMATS)}")
    if fmt == "auto":
        fmt = _infer_format(p)
    if fmt == "vqa_v2":
        return vqa_v2_source(p, cfg)
    if fmt == "datasets":
        return _datasets_source(p, cfg)
    if fmt == "imagefolder":
        return _imagefolder_source(p, cfg)
    files = _data_files(p, fmt)
    base = files[0].parent
    name = f"{p} ({fmt})"
    image_at = None
    if fmt == "jsonl":
        rows: Iterable[Row] = _jsonl_rows(files[0])
    elif fmt == "csv":
        rows = _csv_rows(files[0])
    elif fmt == "json":
        rows = _json_rows(files[0])
    else:
        rows = _parquet_rows(files, cfg.columns.image)
        image_at = ParquetImages(tuple(str(f) for f in files), cfg.columns.image)
    return Source(name, base, rows, cfg.columns, files=files, image_at=image_at)


def memory_source(data: Any, cfg: DataConfig) -> Source:
    """Rows held in memory: a pandas DataFrame, a ``datasets.Dataset`` or a list of dicts (the
    Python API's ``data``). Relative image paths start at data.image_root, else the cwd; an image
    cell may also be a PIL image, bytes, or a datasets Image cell."""
    import pandas as pd

    if isinstance(data, pd.DataFrame):
        return Source("DataFrame", Path.cwd(), (Row(values) for values in data.to_dict("records")), cfg.columns)
    if isinstance(data, (list, tuple)):
        if not all(isinstance(r, dict) for r in data):
            bad = next(type(r).__name__ for r in data if not isinstance(r, dict))
            raise UserError(f"data as a list must hold one dict per row, got a {bad}")
        return Source("list of rows", Path.cwd(), (Row(dict(r)) for r in data), cfg.columns)
    try:
        import datasets
    except ImportError:  # pragma: no cover - datasets is a dependency
        datasets = None
    if datasets is not None and isinstance(data, datasets.DatasetDict):
        raise UserError(f"data is a DatasetDict with splits {', '.join(data)}; pass one split, e.g. data['train']")
    if datasets is not None and isinstance(data, datasets.Dataset):
        data = undecoded(data, cfg.columns.image, cfg.columns.video)  # cells become {"bytes", "path"}
        return Source("Dataset", Path.cwd(), dataset_rows(data, cfg.columns.image), cfg.columns)
    raise UserError(
        f"data must be a pandas DataFrame, a datasets.Dataset or a list of dicts, got {type(data).__name__}"
    )


# ----------------------------------------------------------------------------------------------
# Which format a path holds.


def _infer_format(p: Path) -> str:
    if p.is_file():
        if looks_like_vqa_v2(p):
            return "vqa_v2"
        if p.name in _METADATA_FILES:
            return "imagefolder"
        fmt = _SUFFIX_FORMATS.get(p.suffix.lower())
        if fmt is None:
            raise UserError(
                f"cannot tell the format of {p} from its suffix; set data.format to one of {', '.join(FORMATS[1:])}"
            )
        return fmt
    if (p / "dataset_dict.json").is_file() or (p / "state.json").is_file():
        return "datasets"
    if any((p / m).is_file() for m in _METADATA_FILES):
        return "imagefolder"
    if looks_like_vqa_v2(p):
        return "vqa_v2"
    if (p / "data.jsonl").is_file():
        return "jsonl"
    files = _candidate_files(p)
    formats = {_SUFFIX_FORMATS[f.suffix.lower()] for f in files}
    if len(formats) == 1 and (len(files) == 1 or formats == {"parquet"}):
        return formats.pop()
    if not files:
        raise UserError(f"folder {p} holds no data file; point data.path at {_KNOWN}")
    names = ", ".join(f.name for f in files[:5])
    raise UserError(f"folder {p} holds several data files ({names}); set data.path to one of them")


def _candidate_files(folder: Path) -> list[Path]:
    return sorted(f for f in folder.iterdir() if f.is_file() and f.suffix.lower() in _SUFFIX_FORMATS)


def _data_files(p: Path, fmt: str) -> list[Path]:
    """The file(s) to read for ``fmt``: ``p`` itself, or the matching file(s) in folder ``p``."""
    if p.is_file():
        return [p]
    if fmt == "jsonl" and (p / "data.jsonl").is_file():
        return [p / "data.jsonl"]
    files = [f for f in _candidate_files(p) if _SUFFIX_FORMATS[f.suffix.lower()] == fmt]
    if not files:
        raise UserError(f"folder {p} holds no {fmt} file; set data.path to the file itself")
    if len(files) > 1 and fmt != "parquet":
        raise UserError(
            f"folder {p} holds several {fmt} files ({', '.join(f.name for f in files[:5])}); set data.path to one"
        )
    return files


# ----------------------------------------------------------------------------------------------
# Text formats.


def _jsonl_rows(path: Path) -> Iterator[Row]:
    with _open_text(path) as f:
        for lineno, line in enumerate(_decoded(f, path), start=1):
            if not line.strip():
                continue
            try:
                value = json.loads(line)
            except (json.JSONDecodeError, RecursionError) as e:
                msg = e.msg if isinstance(e, json.JSONDecodeError) else "nested too deeply"
                raise UserError(f"{path} line {lineno} is not valid JSON ({msg}); fix or remove that line") from None
            if not isinstance(value, dict):
                raise UserError(
                    f"{path} line {lineno} is a JSON {type(value).__name__}, not an object of fields; fix or remove "
                    "that line"
                )
            yield Row(value)


def _csv_rows(path: Path) -> Iterator[Row]:
    delimiter = "\t" if path.suffix.lower() == ".tsv" else ","
    with _open_text(path) as f:
        reader = csv.DictReader(_decoded(f, path), delimiter=delimiter)
        try:
            for values in reader:
                values.pop(None, None)  # cells beyond the header (a ragged row) have no column
                yield Row(values)
        except csv.Error as e:
            raise UserError(f"{path} line {reader.line_num} is not valid CSV ({e}); fix that line") from None


def _json_rows(path: Path) -> Iterator[Row]:
    with _open_text(path) as f:
        try:
            data = json.loads("".join(_decoded(f, path)))
        except (json.JSONDecodeError, RecursionError) as e:
            where = f" at line {e.lineno}" if isinstance(e, json.JSONDecodeError) else ""
            raise UserError(f"{path} is not valid JSON{where}; fix it (or use JSONL, one object per line)") from None
    if isinstance(data, dict):
        lists = [v for v in data.values() if isinstance(v, list) and v and all(isinstance(x, dict) for x in v)]
        if len(lists) != 1:
            raise UserError(
                f"{path} must hold a list of objects (or an object with one such list); found an object with keys "
                f"{', '.join(list(data)[:8])}"
            )
        data = lists[0]
    if not isinstance(data, list):
        raise UserError(f"{path} must hold a list of objects, one per row; found a JSON {type(data).__name__}")
    for i, value in enumerate(data, start=1):
        if not isinstance(value, dict):
            raise UserError(
                f"{path}: item {i} is a JSON {type(value).__name__}, not an object of fields; fix or remove it"
            )
        yield Row(value)


def _open_text(path: Path):
    return open(path, encoding="utf-8-sig", newline="")


def _decoded(f: Iterable[str], path: Path) -> Iterator[str]:
    """The lines of ``f``, with a decoding error turned into a one-line UserError."""
    try:
        yield from f
    except UnicodeDecodeError as e:
        raise UserError(f"{path} is not UTF-8 text (byte {e.start}); save it as UTF-8") from None


# ----------------------------------------------------------------------------------------------
# Parquet: read one row group at a time; embedded image bytes are re-read on demand.


def _parquet_rows(files: list[Path], image_col: str) -> Iterator[Row]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    for path in files:
        try:
            pf = pq.ParquetFile(path)
        except (pa.ArrowException, OSError) as e:
            raise UserError(f"{path} is not a readable Parquet file ({e})") from None
        col = image_column(pf.schema_arrow.names, image_col)
        has_image = col in pf.schema_arrow.names
        for group in range(pf.num_row_groups):
            table = pf.read_row_group(group)
            images = table.column(col).to_pylist() if has_image else []
            others = table.drop_columns([col]) if has_image else table
            for i, values in enumerate(others.to_pylist()):
                reread = None
                if has_image:
                    values[col] = images[i]
                    reread = partial(_parquet_cell, str(path), group, i, col)
                yield Row(values, reread)


def _parquet_cell(path: str, group: int, index: int, column: str) -> Any:
    return only_image(_parquet_column(path, group, column)[index])


class ParquetImages:
    """Row i's (0-based, over all the files) image cell, read again from its row group."""

    def __init__(self, files: tuple[str, ...], image_col: str):
        self.files, self.image_col = files, image_col
        self._groups: list[tuple[int, str, int, str]] | None = None  # (first row, file, group, column)

    def __getstate__(self) -> dict[str, Any]:
        return {"files": self.files, "image_col": self.image_col, "_groups": None}

    def __call__(self, i: int) -> Any:
        import pyarrow.parquet as pq

        if self._groups is None:
            groups, start = [], 0
            for path in self.files:
                meta = pq.ParquetFile(path)
                col = image_column(meta.schema_arrow.names, self.image_col)
                for g in range(meta.num_row_groups):
                    groups.append((start, path, g, col))
                    start += meta.metadata.row_group(g).num_rows
            self._groups = groups
        first, path, group, col = self._groups[bisect.bisect_right([g[0] for g in self._groups], i) - 1]
        return _parquet_cell(path, group, i - first, col)


@lru_cache(maxsize=1)  # one row group's images at a time: sequential reads decompress each group once
def _parquet_column(path: str, group: int, column: str) -> list[Any]:
    import pyarrow.parquet as pq

    return pq.ParquetFile(path).read_row_group(group, columns=[column]).column(column).to_pylist()


# ----------------------------------------------------------------------------------------------
# datasets saved with save_to_disk: memory-mapped Arrow, images read without decoding.


def _datasets_source(p: Path, cfg: DataConfig) -> Source:
    import datasets

    if (p / "dataset_dict.json").is_file():
        splits = sorted(d.name for d in p.iterdir() if (d / "state.json").is_file())
        raise UserError(
            f"{p} holds a DatasetDict with splits {', '.join(splits)}; set data.path to one split, e.g. "
            f"{p / (splits[0] if splits else 'train')}"
        )
    try:
        ds = datasets.load_from_disk(str(p))
    except (FileNotFoundError, ValueError, OSError) as e:
        raise UserError(f"{p} is not a datasets folder written by save_to_disk ({e})") from None
    ds = undecoded(ds, cfg.columns.image, cfg.columns.video)  # cells become {"bytes", "path"}
    image_at = DatasetImages(ds, cfg.columns.image)
    files = [Path(f["filename"]) for f in ds.cache_files]
    return Source(
        f"{p} (datasets)", p, dataset_rows(ds, cfg.columns.image), cfg.columns, files=files, image_at=image_at
    )


# ----------------------------------------------------------------------------------------------
# Image folder with a metadata file (Hugging Face imagefolder layout).


def _imagefolder_source(p: Path, cfg: DataConfig) -> Source:
    meta = p if p.is_file() else next((p / m for m in _METADATA_FILES if (p / m).is_file()), None)
    if meta is None:
        raise UserError(f"folder {p} has no metadata.jsonl or metadata.csv; add one with a file_name column")
    rows = _jsonl_rows(meta) if meta.suffix == ".jsonl" else _csv_rows(meta)
    rows = _file_name_as_image(rows, cfg.columns.image)
    return Source(f"{meta} (imagefolder)", meta.parent, rows, cfg.columns, files=[meta])


def _file_name_as_image(rows: Iterable[Row], image_col: str) -> Iterator[Row]:
    for row in rows:
        if image_col not in row.values and "file_name" in row.values:
            row.values[image_col] = row.values.pop("file_name")
        yield row
