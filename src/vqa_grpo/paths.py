"""Checks of the paths a command will write, made before any work: a folder that is a file, or a
file where one of its folders would go, is one line up front rather than a traceback at the end."""

from __future__ import annotations

import dataclasses
import os
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


def absolute_inputs(cfg):
    """``cfg`` (a Config) with the local paths a run reads, model.name_or_path, data.path,
    data.eval_path and data.image_root, made absolute where they exist (a hub id or ``hf:NAME`` is
    left as it is): the run's config.yaml then names the same files from any directory, so a resume
    launched from another one finds them, and compares a path given again by where it points."""

    def absolute(value):
        if not isinstance(value, str) or not value or not Path(value).expanduser().exists():
            return value
        return os.path.abspath(os.path.expanduser(value))

    d = cfg.data
    data = dataclasses.replace(
        d, path=absolute(d.path), eval_path=absolute(d.eval_path), image_root=absolute(d.image_root)
    )
    model = dataclasses.replace(cfg.model, name_or_path=absolute(cfg.model.name_or_path))
    return dataclasses.replace(cfg, model=model, data=data)
