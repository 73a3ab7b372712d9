"""Hugging Face Hub datasets: ``data.path=hf:NAME``, read through ``datasets.load_dataset``.

``NAME`` is a Hub dataset id (``lmms-lab/VQAv2``) or a local folder laid out as a Hub dataset
repository (parquet shards, optionally a README.md with YAML ``configs:``); both go through the same
``load_dataset(NAME, data.config_name, split=data.split, streaming=data.streaming)`` call. The rows
are then mapped exactly like local data (``loader.py``): the same column mapping, skip reasons and
answer-type rules. Images stay encoded (``Image(decode=False)``); without streaming each example
re-reads its image from the memory-mapped Arrow cache; with streaming (a stream cannot be read
twice) from a spill file the bytes are written to as they stream past (spill.py).

PRESETS maps the VQA datasets users name most to their columns, so ``data.path=hf:<id>
data.split=validation`` needs no column flags. A preset applies when NAME is its id; ``data.preset``
names one for a local copy, or ``none`` to turn it off. A preset whose videos are not in its parquet
files (Video-MME: zip archives) names each row's file under data.image_root. Column keys the user set
(``data.columns.*`` other than the default) win over the preset's. Each preset (hub_presets.py)
records where its schema was read; docs/data_hub.md has the table.

Bad input is one UserError line: an unknown preset, a Hub name that cannot be reached (offline,
misspelled, gated), a config that is missing or unknown, a split that does not exist. The split and
config are checked with ``load_dataset_builder`` before ``load_dataset``, so a wrong one downloads
and writes nothing.
"""

from __future__ import annotations

import ast
import os
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import fields, replace
from functools import partial
from pathlib import Path
from typing import Any

from vqa_grpo.config import ColumnsConfig, DataConfig
from vqa_grpo.data.cache_paths import FOLDER, user_cache
from vqa_grpo.data.hub_presets import _SCRIPT_SUCCESSORS, PRESETS, Preset
from vqa_grpo.data.rows import DatasetImages, Row, Source, dataset_cell, dataset_rows, undecoded
from vqa_grpo.data.spill import StreamSpill, spilled_rows
from vqa_grpo.errors import UserError

PREFIX = "hf:"


def is_hub_path(path: Any) -> bool:
    return isinstance(path, str) and path.startswith(PREFIX)


def hub_name(path: str) -> str:
    """NAME of ``hf:NAME`` (``hf://datasets/NAME`` too); a local folder keeps its path."""
    name = path[len(PREFIX) :].strip()
    if name.startswith("//datasets/"):
        name = name[len("//datasets/") :]
    if name.startswith("~"):
        name = os.path.expanduser(name)
    if not name:
        raise UserError(f"data path {path!r} names no dataset; write hf:NAME, e.g. hf:lmms-lab/VQAv2")
    return name


def find_preset(key: str | None, name: str) -> Preset | None:
    """The preset ``data.preset`` asks for; None (the default) picks it from the name."""
    if key is not None and key.strip().lower() == "none":
        return None
    wanted = (name if key is None else key.strip()).lower()
    for hub_id, preset in PRESETS.items():
        if wanted in (i.lower() for i in (hub_id, *preset.aliases)):
            return preset
    if key is None:
        return None
    raise UserError(f"data.preset={key!r} is not a known preset; choose one of {', '.join(PRESETS)}, or none")


def preset_benchmark(cfg: DataConfig, name: str) -> str | None:
    """The benchmark of the preset that ``hf:NAME`` reads (by data.preset and data.config_name), or None."""
    preset = find_preset(cfg.preset, name)
    if preset is None:
        return None
    config = cfg.config_name or preset.default_config
    return preset.config_benchmarks.get(config, preset.benchmark) if config else preset.benchmark


def _in_form(preset: Preset | None, benchmark: str | None) -> Preset | None:
    """The preset reading the form of the data that ``benchmark`` asks for (its columns, made by
    its transform), or the preset itself."""
    form = preset.forms.get((benchmark or "").strip().lower()) if preset is not None else None
    if not form:
        return preset
    return replace(
        preset,
        columns={**preset.columns, **{k: column for k, (column, _) in form.items()}},
        derived={**preset.derived, **{k: how for k, (_, how) in form.items()}},
    )


def check_preset_key(key: str | None) -> str | None:
    """A one-line complaint about ``data.preset``, else None (config validation)."""
    try:
        find_preset(key, "")
    except UserError as e:
        return str(e)
    return None


def merged_columns(preset: Preset | None, user: ColumnsConfig) -> ColumnsConfig:
    """The preset's columns, except where the user set data.columns.* away from the default."""
    if preset is None:
        return user
    default = ColumnsConfig()
    values = {}
    for f in fields(ColumnsConfig):
        mine = getattr(user, f.name)
        values[f.name] = mine if mine != getattr(default, f.name) else preset.columns.get(f.name, mine)
    return ColumnsConfig(**values)


# ----------------------------------------------------------------------------------------------
# Opening a Hub dataset.


def hub_source(path: str, cfg: DataConfig) -> Source:
    """The rows of ``hf:NAME`` in ``cfg.split`` (and ``cfg.config_name``), mapped by the preset."""
    name = hub_name(path)
    if cfg.format not in ("auto", ""):
        raise UserError(
            f"data.format={cfg.format!r} does not apply to {path}: hf: paths are read by datasets.load_dataset; drop "
            "data.format"
        )
    preset = _in_form(find_preset(cfg.preset, name), cfg.benchmark)
    base, slice_ = re.fullmatch(r"([^\[]*)(.*)", cfg.split.strip()).groups()  # "validation[:100]"
    if preset is not None:
        base = preset.split_alias.get(base, base)
    split = base + slice_
    config_name = cfg.config_name
    if config_name is None and preset is not None:
        config_name = preset.config_per_split.format(split=base) if preset.config_per_split else preset.default_config
    if preset is not None and preset.images_config and cfg.streaming:
        raise UserError(
            f"{preset.title} ({preset.hub_id}) keeps its images in a separate config, which a stream cannot join; "
            "set data.streaming=false"
        )
    if preset is not None and preset.videos_outside and cfg.image_root is None and not Path(name).is_dir():
        raise UserError(
            f"{preset.title} ({preset.hub_id}) keeps its videos in {preset.videos_outside}, not in its parquet "
            "files; download and unzip them into a folder and set data.image_root to that folder"
        )
    _check_split(name, config_name, split, cfg.split, preset)
    ds = _load(name, config_name, split, cfg.streaming, cfg.split, preset)
    columns = merged_columns(preset, cfg.columns)
    ds = undecoded(ds, columns.image, columns.video)  # cells {"bytes", "path"}
    present = _column_names(ds)
    image_at: Callable[[int], Any] | None
    if cfg.streaming:  # each image goes to a spill file as it streams past (spill.py)
        image_at = StreamSpill()
        rows: Iterable[Row] = spilled_rows(ds, columns.image, image_at)
    else:
        rows, image_at = dataset_rows(ds, columns.image), DatasetImages(ds, columns.image)
    if preset is not None and preset.images_config:
        images_config = config_name.replace(*preset.images_config)
        _check_split(name, images_config, split, cfg.split, preset)
        images = undecoded(_load(name, images_config, split, False, cfg.split, preset), "image")
        rows = _joined_images(rows, images, preset.join_key, columns.image)
        image_at = None  # the image is found by the row's key: examples keep their reread handle
        present = None if present is None else present | {columns.image}
    if preset is not None and preset.transform is not None:
        rows = _transformed(rows, preset.transform)
        present = None if present is None else present | {preset.columns[k] for k in preset.derived}
    if preset is not None and preset.video_suffixes:
        root = Path(cfg.image_root).expanduser() if cfg.image_root else Path(name)
        rows = _found_videos(rows, root, columns.video, preset.video_suffixes)
    where = ", ".join(
        x
        for x in (
            f"config {config_name}" if config_name else "",
            f"split {split}",
            "streaming" if cfg.streaming else "",
        )
        if x
    )
    local = Path(name).is_dir()
    about = _about(name, config_name, split, cfg, preset, columns, present)
    files = [] if cfg.streaming else [Path(f["filename"]) for f in ds.cache_files]  # datasets' Arrow cache
    base = Path(name) if local else Path.cwd()
    index_dir = base / FOLDER if local else user_cache()  # not inside datasets' own cache
    name_ = f"{PREFIX}{name} ({where})"
    return Source(name_, base, rows, columns, about, files=files, index_dir=index_dir, image_at=image_at)


def _check_split(name: str, config_name: str | None, split: str, asked: str, preset: Preset | None) -> None:
    """Config and split checked against the repository's data files, before anything downloads."""
    import datasets  # here and below: 2 s to import, for hf: paths only (config_checks imports this module)

    try:
        builder = datasets.load_dataset_builder(name, config_name)
    except Exception as e:  # noqa: BLE001 - datasets raises many types; each becomes one line
        raise _user_error(e, name, config_name, asked, preset, split) from None
    available = list(builder.config.data_files or {}) or list(builder.info.splits or {})
    wanted = [re.sub(r"\[.*\]$", "", part.strip()) for part in split.split("+")]
    missing = [w for w in wanted if available and w not in available]
    if missing:
        raise _split_error(name, config_name, asked, split, available)


def _load(name: str, config_name: str | None, split: str, streaming: bool, asked: str, preset: Preset | None) -> Any:
    import datasets

    try:
        return datasets.load_dataset(name, config_name, split=split, streaming=streaming)
    except Exception as e:  # noqa: BLE001
        raise _user_error(e, name, config_name, asked, preset, split) from None


def _column_names(ds: Any) -> set[str] | None:
    names = getattr(ds, "column_names", None)
    return set(names) if names else None


def _transformed(rows: Iterable[Row], transform: Callable[[dict[str, Any]], None]) -> Iterator[Row]:
    for row in rows:
        transform(row.values)
        yield row


def _found_videos(rows: Iterable[Row], root: Path, column: str, suffixes: tuple[str, ...]) -> Iterator[Row]:
    """Each row's video file as the transform names it or, when that does not exist under ``root``,
    the first that does of: the name with each of ``suffixes`` (Video-MME's .MP4 and .mkv files, as
    lmms-eval tries them), then the file name alone with each suffix (``root`` being the folder
    that holds the videos, Video-MME's data/, rather than the one the archives were unzipped into).
    None existing, the name stays, and the loader skips the row as missing_video."""
    for row in rows:
        name = row.values.get(column)
        if isinstance(name, str) and not (root / name).exists():
            path = Path(name)
            stems = [str(path.with_suffix(""))] + ([path.stem] if path.parent != Path(".") else [])
            tries = [stem + x for stem in stems for x in (path.suffix, *suffixes)]
            row.values[column] = next((t for t in tries if (root / t).exists()), name)
        yield row


def _joined_images(rows: Iterable[Row], images: Any, key: str, image_col: str) -> Iterator[Row]:
    """Each row's image from ``images`` (columns id, image), found by the row's ``key``."""
    position = {str(k): i for i, k in enumerate(images["id"])}
    for row in rows:
        i = position.get(str(row.values.get(key)))
        if i is not None:
            row.values[image_col] = images[i]["image"]
            row.reread_image = partial(dataset_cell, images, i, "image")
        yield row


# ----------------------------------------------------------------------------------------------
# Errors from datasets, as one line each.


def _listed(text: str) -> list[str]:
    """The Python list literal in an error message (datasets writes them that way)."""
    match = re.search(r"\[[^\[\]]*\]", text)
    if not match:
        return []
    try:
        value = ast.literal_eval(match.group(0))
    except (ValueError, SyntaxError):
        return []
    return [str(v) for v in value] if isinstance(value, list) else []


def _split_error(name: str, config_name: str | None, asked: str, split: str, available: list[str]) -> UserError:
    where = f"{name}" + (f" (config {config_name})" if config_name else "")
    shown = f"{asked!r}" + (f" (the Hub's {split!r})" if split != asked else "")
    return UserError(f"data.split={shown} is not a split of {where}; choose one of {', '.join(available)}")


def _user_error(
    e: Exception, name: str, config_name: str | None, asked: str, preset: Preset | None, split: str | None = None
) -> UserError:
    import datasets

    text = " ".join(str(e).split())
    offline = bool(datasets.config.HF_HUB_OFFLINE)
    if "Dataset scripts are no longer supported" in text:
        successor = next(
            (new for old, new in _SCRIPT_SUCCESSORS.items() if name == old or name.endswith("/" + old)), None
        )
        use = f"use data.path=hf:{successor} (parquet)" if successor else "use a parquet copy of it"
        return UserError(f"{name} is a dataset loading script, which datasets 4+ no longer runs; {use}")
    if isinstance(e, ValueError) and "Config name is missing" in text:
        configs = _listed(text)
        return UserError(f"{name} has several configs ({', '.join(configs)}); set data.config_name to one of them")
    if isinstance(e, ValueError) and "BuilderConfig" in text and "not found" in text:
        configs = _listed(text)
        suffix = preset.config_per_split.format(split="") if preset is not None and preset.config_per_split else None
        if (
            suffix
            and config_name
            and config_name.endswith(suffix)
            and config_name[: -len(suffix)] == re.sub(r"\[.*", "", split or asked)
        ):
            splits = sorted(c[: -len(suffix)] for c in configs if c.endswith(suffix))
            return UserError(
                f"data.split={asked!r} is not a split of {name} (each split is a config "
                f"{preset.config_per_split.format(split='<split>')}); choose one of {', '.join(splits)}"
            )
        return UserError(
            f"data.config_name={config_name!r} is not a config of {name}; choose one of {', '.join(configs)}"
        )
    if isinstance(e, ValueError) and "Bad split" in text and "[" in (split or asked):
        return UserError(f"data.split={asked!r}: a stream cannot be sliced; drop the [...] or set data.streaming=false")
    if isinstance(e, ValueError) and ("Unknown split" in text or "Bad split" in text):
        return _split_error(name, config_name, asked, split or asked, _listed(text))
    if isinstance(e, ConnectionError) or (offline and isinstance(e, FileNotFoundError) and not Path(name).is_dir()):
        why = (
            "offline mode is on (HF_HUB_OFFLINE / HF_DATASETS_OFFLINE) and it is not in the datasets cache"
            if offline
            else "no network"
        )
        return UserError(
            f"cannot load hf:{name} from the Hugging Face Hub ({why}); check the name and the network, or download "
            "it once and set data.path=hf:<local folder>"
        )
    if isinstance(e, FileNotFoundError) or type(e).__name__ in ("DatasetNotFoundError", "RepositoryNotFoundError"):
        if "gated" in text:
            return UserError(
                f"hf:{name} is gated on the Hugging Face Hub ({text[:200]}); accept its terms on the dataset page "
                "and log in (hf auth login)"
            )
        if Path(name).is_dir():
            return UserError(
                f"folder {name} holds no data files datasets can read ({text[:200]}); lay it out as a Hub dataset "
                "(data/<split>-00000-of-00001.parquet)"
            )
        return UserError(
            f"hf:{name} was not found on the Hugging Face Hub ({text[:200]}); check the name (owner/name), or log in "
            "for a gated or private dataset"
        )
    return UserError(f"datasets cannot load hf:{name}: {type(e).__name__}: {text[:300]}")


# ----------------------------------------------------------------------------------------------
# What was mapped, for ``data inspect``.


_ABSENT = {
    "id": "row numbers (row<N>)",
    "answer": "the most common of answers",
    "answers": "[answer]",
    "answer_type": "inferred from the answers",
    "question_type": "inferred from the question's first words",
    "question": "map yours with data.columns.question=NAME",
    "image": "map yours with data.columns.image=NAME",
    "video": "no video",
}


def _about(
    name: str,
    config_name: str | None,
    split: str,
    cfg: DataConfig,
    preset: Preset | None,
    columns: ColumnsConfig,
    present: set[str] | None,
) -> dict[str, Any]:
    mapping = {}
    for f in fields(ColumnsConfig):
        column = getattr(columns, f.name)
        if preset is not None and f.name in preset.derived and column == preset.columns.get(f.name):
            mapping[f.name] = f"{column} (made from {preset.derived[f.name]})"
        elif present is None or column in present:
            mapping[f.name] = column
        elif f.name == "video" and column == "video":
            continue  # no video column and none asked for: most data has none
        elif f.name == "image" and columns.video in present:
            mapping[f.name] = f"(no column {column!r}: no image, a video a question)"
        else:
            mapping[f.name] = f"(no column {column!r}: {_ABSENT[f.name]})"
    return {
        "dataset": name,
        "config": config_name,
        "split": split,
        "asked_split": cfg.split,
        "streaming": cfg.streaming,
        "preset": preset.hub_id if preset else None,
        "columns": mapping,
        "notes": preset.notes if preset else "",
    }


def describe(about: dict[str, Any]) -> list[str]:
    """Lines for people: the dataset, the preset and each field's column."""
    split = about["split"] + (f" (data.split={about['asked_split']})" if about["asked_split"] != about["split"] else "")
    head = f"hf:{about['dataset']}  config {about['config'] or '(default)'}  split {split}"
    lines = [head + ("  streaming" if about["streaming"] else "")]
    lines.append(f"preset: {about['preset']}" if about["preset"] else "preset: none (columns from data.columns)")
    lines += [f"  {key:<13}  <- {value}" for key, value in about["columns"].items()]
    if about["notes"]:
        lines.append(f"  note: {about['notes']}")
    return lines
