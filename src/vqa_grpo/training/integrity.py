"""What a checkpoint must be to be resumed from, and what a full disk looks like.

Every checkpoint directory carries ``manifest.json``: each file's size in bytes and sha256, written
last, once every process has written its files. :func:`check` reads the files back against it; a
resume uses the newest checkpoint that passes (loop.py). :func:`is_no_space` recognises a write that
failed for lack of space, however the writer reported it (torch wraps the OSError in a
RuntimeError, safetensors in its own error with the OS message).
"""

from __future__ import annotations

import errno
import hashlib
import json
from pathlib import Path

MANIFEST = "manifest.json"
_CHUNK = 1 << 22


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def write_manifest(directory: Path) -> None:
    """``manifest.json`` over every file in ``directory`` (and below it), sorted by relative path."""
    files = sorted(p for p in directory.rglob("*") if p.is_file() and p.name != MANIFEST)
    entries = {p.relative_to(directory).as_posix(): {"size": p.stat().st_size, "sha256": sha256(p)} for p in files}
    with (directory / MANIFEST).open("w") as f:
        json.dump({"files": entries}, f, indent=1)
        f.flush()


def check(directory: Path) -> str | None:
    """None when every file of the manifest is there with its size and sha256; else what is wrong, as
    "<file>: <problem>". A checkpoint without a manifest (older vqa-grpo) passes unchecked."""
    path = directory / MANIFEST
    if not path.is_file():
        return None
    try:
        entries = json.loads(path.read_text())["files"]
    except (ValueError, KeyError, TypeError):
        return f"{MANIFEST}: not a manifest (truncated or altered)"
    for name, want in entries.items():
        f = directory / name
        if not f.is_file():
            return f"{name}: missing"
        size = f.stat().st_size
        if size != want["size"]:
            return f"{name}: {size} bytes, the manifest says {want['size']}"
        if sha256(f) != want["sha256"]:
            return f"{name}: its sha256 differs from the manifest's (altered)"
    return None


def has_manifest(directory: Path) -> bool:
    return (directory / MANIFEST).is_file()


_NO_SPACE = (errno.ENOSPC, errno.EDQUOT)


def is_no_space(exc: BaseException | None) -> bool:
    """Whether ``exc`` (or an exception it was raised from, or while handling) is a full disk or quota."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno in _NO_SPACE:
            return True
        text = str(exc)
        if "No space left on device" in text or "os error 28" in text or "Disk quota exceeded" in text:
            return True
        exc = exc.__cause__ or exc.__context__
    return False
