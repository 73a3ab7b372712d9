"""The loaded-examples index: the examples and load report of a data file, written once as an
Arrow file and memory-mapped by every later load.

Reading VQA v2 train (443,757 questions) row by row costs tens of seconds and, as Python objects,
gigabytes that every process of a run would hold again. The first load writes the converted
columns (table.py) and its report to ``<key>.arrow``; later loads, and the other processes of the
same machine, map that file: the pages are shared and nothing is parsed. As with ``datasets``'
cache, the key is the source files' paths, sizes and modification times and the settings that
change the conversion; a changed file writes a new index and removes the old one. The index also
records the modification times of the folders its images are in (checked or found missing): an
image added or removed there builds it again. One process writes while the others wait on a
lock, then map what it wrote.

Where: data.cache_dir, else ``.vqa_grpo_cache`` beside the data file, else (a folder that cannot
be written) ``$XDG_CACHE_HOME/vqa_grpo/data``; ``data.cache_dir=none`` reads the data every time.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import re
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import pyarrow as pa
from PIL import Image

from vqa_grpo.config import DataConfig
from vqa_grpo.data.cache_paths import FOLDER, user_cache
from vqa_grpo.data.report import LoadReport
from vqa_grpo.data.rows import Source
from vqa_grpo.data.table import ExampleTable, TableBuilder
from vqa_grpo.errors import UserError

VERSION = 3
"""Bumped when the conversion or the columns change: older indexes are then not read."""
_REPORT = b"vqa_grpo.report"
_SOURCE = b"vqa_grpo.source"
_FOLDERS = b"vqa_grpo.image_folders"

Build = Callable[[TableBuilder], LoadReport]


def cached_table(source: Source, cfg: DataConfig, build: Build) -> tuple[ExampleTable, LoadReport]:
    """The examples of ``source``: from its index when there is one and the image folders it
    saw are unchanged, else ``build`` them (and write the index when the source can be keyed and
    every image and field is plain data)."""
    path = index_path(source, cfg)
    if path is None:
        return _built(source, cfg, build)[:2]
    found = _read(path, source, cfg)
    if found is not None:
        return found
    with _locked(path):
        found = _read(path, source, cfg)  # another process wrote it while this one waited
        if found is not None:
            return found
        table, report, builder = _built(source, cfg, build)
        if not builder.inline:
            _write(path, table.table, report, source.name, builder.image_folders)
        return table, report


def _built(source: Source, cfg: DataConfig, build: Build) -> tuple[ExampleTable, LoadReport, TableBuilder]:
    builder = TableBuilder(source.image_at)
    report = build(builder)
    table = ExampleTable(
        builder.table(), source.image_at, max(0, cfg.max_image_pixels), inline=builder.inline, video=_video(cfg)
    )
    return table, report, builder


def index_path(source: Source, cfg: DataConfig) -> Path | None:
    """Where the index of ``source`` lives, or None when it is not to be cached."""
    folder_setting = (cfg.cache_dir or "").strip()
    if not source.files or folder_setting.lower() == "none":
        return None
    files = [Path(f) for f in source.files]
    try:
        stats = [(str(f.resolve()), f.stat().st_size, f.stat().st_mtime_ns) for f in files]
    except OSError:
        return None
    if folder_setting:
        folder = Path(folder_setting).expanduser()
        if not _writable(folder):
            raise UserError(
                f"data.cache_dir={folder_setting!r} cannot be written; set it to a folder you can write, or to "
                "none to read the data without an index"
            )
    else:
        folder = source.index_dir or files[0].parent / FOLDER
        if not _writable(folder):
            folder = user_cache()
    # (the folder first: making it changes the modification time of the folder it is in)
    settings = {
        k: v
        for k, v in dataclasses.asdict(cfg).items()
        if k not in ("eval_path", "eval_fraction", "max_train_samples", "max_eval_samples", "max_skip_fraction")
        and k not in ("max_image_pixels", "cache_dir", "prompt_template", "path", "eval_split")
        and k not in ("video_frames", "video_fps")  # how a video is sampled when it is opened
    }
    key = json.dumps([VERSION, source.name, stats, settings, Image.MAX_IMAGE_PIXELS], default=str).encode()
    digest = hashlib.sha256(key).hexdigest()[:20]
    stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", files[0].name)[:60]
    return folder / f"{stem}-{digest}.arrow"


def folder_times(folders: Iterable[str]) -> dict[str, int | None]:
    """Each folder's modification time (None: absent). An image added to or removed from a folder
    changes its time, and the skips depend on which images exist: an index whose folders' times
    changed is built again."""
    times: dict[str, int | None] = {}
    for folder in sorted(folders):
        try:
            times[folder] = os.stat(folder).st_mtime_ns
        except OSError:
            times[folder] = None
    return times


def _writable(folder: Path) -> bool:
    try:
        folder.mkdir(parents=True, exist_ok=True)
        return os.access(folder, os.W_OK)
    except OSError:
        return False


@contextlib.contextmanager
def _locked(path: Path):
    """An exclusive lock on ``<path>.lock`` (the processes of a run build one index, once)."""
    import fcntl  # here: Unix only, and only building an index needs it

    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(path.name + ".lock"), "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _write(path: Path, table: pa.Table, report: LoadReport, source_name: str, folders: dict[str, int | None]) -> None:
    """Write the index atomically (a temporary file renamed), then drop older indexes of the same source."""
    meta = {
        _REPORT: json.dumps(_report_state(report)).encode(),
        _SOURCE: source_name.encode(),
        _FOLDERS: json.dumps(folders).encode(),
    }
    table = table.replace_schema_metadata(meta)
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
        with os.fdopen(fd, "wb") as f, pa.ipc.new_file(f, table.schema) as writer:
            writer.write_table(table)
        mask = os.umask(0)
        os.umask(mask)
        os.chmod(tmp, 0o666 & ~mask)  # as a plain file would be (mkstemp makes it private)
        os.replace(tmp, path)
    except OSError:  # a full disk, a read-only folder: the load goes on without an index
        with contextlib.suppress(OSError, UnboundLocalError):
            os.unlink(tmp)
        return
    stem = path.name.rsplit("-", 1)[0]
    for other in path.parent.glob(f"{stem}-*.arrow"):
        if other != path and _source_of(other) == source_name:
            with contextlib.suppress(OSError):
                other.unlink()
                other.with_name(other.name + ".lock").unlink(missing_ok=True)


def _source_of(path: Path) -> str | None:
    try:
        with pa.memory_map(str(path)) as f:
            meta = pa.ipc.open_file(f).schema.metadata or {}
        return meta.get(_SOURCE, b"").decode()
    except (OSError, pa.ArrowException):
        return None


def _read(path: Path, source: Source, cfg: DataConfig) -> tuple[ExampleTable, LoadReport] | None:
    """The index at ``path``; None when there is none, it cannot be read, or its image folders changed."""
    try:
        table = pa.ipc.open_file(pa.memory_map(str(path))).read_all()  # zero-copy: the pages stay in the file
        meta = table.schema.metadata or {}
        folders = json.loads(meta[_FOLDERS])
        report = _report_from(json.loads(meta[_REPORT]))
    except (OSError, KeyError, ValueError, TypeError, pa.ArrowException):
        return None
    if folder_times(folders) != folders:
        return None
    return ExampleTable(table, source.image_at, max(0, cfg.max_image_pixels), video=_video(cfg)), report


def _video(cfg: DataConfig) -> tuple[int, float]:
    return cfg.video_frames, cfg.video_fps


def _report_state(report: LoadReport) -> dict[str, Any]:
    return {f.name: getattr(report, f.name) for f in dataclasses.fields(LoadReport)}


def _report_from(state: dict[str, Any]) -> LoadReport:
    return LoadReport(**state)
