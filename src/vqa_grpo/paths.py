"""Checks of the paths a command will write, made before any work: a folder that is a file, or a
file where one of its folders would go, is one line up front rather than a traceback at the end."""

from __future__ import annotations

from pathlib import Path

from vqa_grpo.errors import UserError


def check_folder(path: str | Path, what: str) -> None:
    """Refuse ``path`` as a folder to write into when it is a file or sits below one.

    ``what`` names it for the user, e.g. ``--out`` or ``train.output_dir``."""
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise UserError(f"{what} {p} is a file, not a folder; give a folder to write into (or another path)")
    _check_parents(p, what)


def check_file(path: str | Path, what: str) -> None:
    """Refuse ``path`` as a file to write when it is a folder or sits below a file."""
    p = Path(path)
    if p.is_dir():
        raise UserError(f"{what} {p} is a folder; give the path of the file to write")
    _check_parents(p, what)


def _check_parents(p: Path, what: str) -> None:
    for parent in p.parents:  # the nearest one that exists must be a folder
        if parent.exists():
            if not parent.is_dir():
                raise UserError(f"{what} {p}: {parent} is a file, not a folder; choose another path")
            return
