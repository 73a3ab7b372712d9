"""Where a LoRA adapter's base model is: recorded absolute when saved, found again when loaded.

PEFT records ``base_model_name_or_path`` as the path was typed; a relative one ("models/tiny")
only works from the directory the run was launched from, so evaluate and merge elsewhere would
fail. Adapters vqa-grpo saves record the absolute path of a local base (a hub id stays an id);
an adapter that records a relative path is resolved against the current directory, the
adapter's directory, and the directory its run was launched from (known from the run's
config.yaml: its train.output_dir, relative to that directory, ends in the run directory).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import yaml

from vqa_grpo.errors import UserError


def record_base(model, base_path: str) -> None:
    """Set the absolute path of a local base model on ``model``'s adapter configs (saved with them)."""
    local = Path(base_path).expanduser()
    if local.is_dir():
        for config in model.peft_config.values():
            config.base_model_name_or_path = os.path.abspath(local)


def adapter_base(adapter_dir: Path) -> str:
    """The base model the adapter in ``adapter_dir`` names: a hub id as it is, a local directory
    as an absolute path; one line when a relative path is found nowhere."""
    file = adapter_dir / "adapter_config.json"
    try:
        base = json.loads(file.read_text()).get("base_model_name_or_path")
    except (ValueError, AttributeError) as e:  # not JSON, or not an object
        raise UserError(f"{file} is not a valid adapter config ({e}); save the adapter again") from None
    if not base:
        raise UserError(f"{file} names no base model; set base_model_name_or_path in it to the base model's path")
    relative = Path(base).expanduser()
    if relative.is_absolute():
        return str(relative)
    for start in (Path.cwd(), adapter_dir, *_launch_dirs(adapter_dir)):
        if (start / relative).is_dir():
            return os.path.abspath(start / relative)
    if not base.startswith((".", "~")) and base.count("/") <= 1:
        return base  # a hub id (or a name transformers reports as not found)
    raise UserError(
        f"the LoRA adapter {adapter_dir} names its base model by the relative path {base!r}, which is not "
        f"there from the current directory nor from the adapter's; set base_model_name_or_path in {file} "
        "to the base model's absolute path"
    )


def _launch_dirs(adapter_dir: Path) -> list[Path]:
    """The directory the run holding ``adapter_dir`` (final/, best/, or a checkpoint of it) was
    launched from, when its config.yaml says so."""
    out = []
    for run_dir in (adapter_dir, adapter_dir.parent):
        try:
            output_dir = yaml.safe_load((run_dir / "config.yaml").read_text())["train"]["output_dir"]
        except (OSError, yaml.YAMLError, KeyError, TypeError):
            continue
        parts = Path(os.path.normpath(str(output_dir))).parts
        here = Path(os.path.abspath(run_dir))
        if parts and ".." not in parts and not Path(output_dir).is_absolute() and here.parts[-len(parts) :] == parts:
            out.append(Path(*here.parts[: -len(parts)]))
    return out
