"""Load a VQA data set into examples, skipping bad rows with a reason, and split it.

Each row goes through the same steps, whatever its format (see ``sources.py``): map the columns
(data.columns), then keep it or skip it for the first reason that applies, in this order:

  duplicate_id       its id was already seen (the first row with that id is the one kept)
  question_not_text  the question is a number or a boolean (JSON 42, true), not text
  empty_question     no question text
  answer_not_text    the answer or an entry of answers is a boolean (JSON true/false: "true" is
                     not "yes"); a number answer is kept as its text (a count, an int column)
  empty_answer       neither an answer nor any non-empty entry in answers
  placeholder_mismatch  the question holds <image> or <video> placeholders (data/prompts.py) and
                     their counts are not the row's numbers of images and videos (0 or 1)
  outside_root       an image (or video) path leaves the image root (unless data.allow_outside_root)
  missing_image      no image and no video in a set with an image column, an image cell of a
                     type no reader takes, or an image file that does not exist
  too_large          an image with more pixels than PIL's decompression-bomb limit
  corrupt_image      PIL cannot open or verify an image
  missing_video      as missing_image, for a set with only a video column, and a video file
  corrupt_video      the video file's container cannot be opened, holds no video stream, or
                     is a still image

Images: the image column's cell is one image, or a list of them in order (TRL's ``images``
column; a CSV cell holding a JSON list); a list of one is one image, an empty list none. Absent
cells are judged per data set, alike in every format: when any row has the image column (a
JSONL key, a CSV or Parquet column), a missing key, a null and an empty cell are all an empty
cell; a row with a video and an empty image cell has 0 images; a row with neither is skipped.
A row is text-only when its list is written empty ([]), or when no row has an image or a video
column (rows met before the first row with one wait to be decided: ``Undecided``). A bad entry
of a list skips the row, its detail naming it ("image 2 of 3: ...").
Videos (data.columns.video): a video file or a list of frame images; an empty cell is no video.

Field rules: ``answers`` may be a list, a JSON list in a string (CSV), one string, or VQA-style
``{"answer": ...}`` entries; a missing ``answer`` is the most frequent entry of ``answers`` (ties to
the first), a missing ``answers`` is ``[answer]``. TRL's layout is read too (rows.py): a
conversational ``prompt`` column (the last user turn's text, its image parts as placeholders
unless they all come first) as the question, an ``images`` list as
the image; every other column is kept on the example for reward functions (``VQAExample.fields``).
Types come from the data when present (an answer type must be one of ANSWER_TYPES), else from
``qtypes.py``. A missing id is ``row<N>`` (1-based).
A column mapped in data.columns away from its default must exist in the data.
Images and videos are checked, never decoded, at load time; each example opens them lazily.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vqa_grpo.config import ColumnsConfig, DataConfig
from vqa_grpo.data.cache import cached_table, folder_times
from vqa_grpo.data.convert import RowConverter, Undecided, row_id
from vqa_grpo.data.report import SKIP_REASONS, LoadReport
from vqa_grpo.data.rows import Source, fallback_columns
from vqa_grpo.data.sources import memory_source, open_source
from vqa_grpo.data.splits import limit, split_train_eval
from vqa_grpo.data.table import TableBuilder
from vqa_grpo.data.types import VQAExample
from vqa_grpo.errors import UserError

__all__ = ["SKIP_REASONS", "LoadReport", "LoadedData", "load_examples", "load_vqa", "read_examples"]


@dataclass
class LoadedData:
    train: Sequence[VQAExample]
    eval: Sequence[VQAExample]
    """Lists, or views of an ExampleTable (table.py) for data read from files."""
    report: LoadReport
    """Rows read, kept and skipped over all files loaded."""


def load_vqa(cfg: DataConfig, *, seed: int = 0, frame: Any = None) -> LoadedData:
    """Train and eval examples: ``cfg.path`` (or ``frame``: rows in memory, see
    ``sources.memory_source``) split by ``cfg.eval_fraction``,
    or with ``cfg.eval_path`` as the eval set (an hf: one in ``cfg.eval_split``, default
    ``cfg.split``); then capped by max_train/eval_samples.

    The split is seeded and stratified by answer type (see ``splits.py``): same seed, same split.
    """
    if frame is not None:
        examples, report = read_examples(memory_source(frame, cfg), cfg)
        _check_skips(report, cfg)
    elif not cfg.path:
        raise UserError("data.path is not set; give the data file or folder (e.g. data.path=data/train.jsonl)")
    else:
        examples, report = load_examples(cfg.path, cfg)
    if cfg.eval_path:
        train = examples
        eval_cfg = dataclasses.replace(cfg, split=cfg.eval_split) if cfg.eval_split else cfg  # hf: eval_path
        try:
            eval_set, eval_report = load_examples(cfg.eval_path, eval_cfg)
        except UserError as e:  # the messages name the usual keys, data.path (and data.split): name these
            message = re.sub(r"(?<![\w.])data\.path\b", "data.eval_path", str(e))
            if cfg.eval_split:
                message = re.sub(r"(?<![\w.])data\.split\b", "data.eval_split", message)
            raise UserError(message) from None
        report = LoadReport.combine([report, eval_report])
    else:
        train, eval_set = split_train_eval(examples, cfg.eval_fraction, seed)
    train = limit(train, cfg.max_train_samples, seed, "train")
    eval_set = limit(eval_set, cfg.max_eval_samples, seed, "eval")
    return LoadedData(train, eval_set, report)


def cap_eval(data: LoadedData, max_examples: int | None, cfg: DataConfig, seed: int) -> tuple[LoadedData, str | None]:
    """``data`` with at most ``max_examples`` (eval.max_examples) evaluation questions, drawn as
    data.max_eval_samples draws, and the line that says so; unchanged (and None) when
    data.max_eval_samples is set (it chose the set), the cap is null or the set is no larger."""
    n = len(data.eval)
    if cfg.max_eval_samples is not None or max_examples is None or n <= max_examples:
        return data, None
    note = (
        f"eval: {max_examples} of the {n} evaluation questions, a seeded draw stratified by answer type "
        f"(eval.max_examples={max_examples}); set eval.max_examples=null to evaluate on all of them"
    )
    return dataclasses.replace(data, eval=limit(data.eval, max_examples, seed, "eval")), note


def load_examples(path: str, cfg: DataConfig) -> tuple[Sequence[VQAExample], LoadReport]:
    """Every usable example of one file or folder, in file order (no split): an ExampleTable read
    from the loaded-examples index when there is one, else built and indexed (cache.py).

    Raises UserError when the path cannot be read or when more than cfg.max_skip_fraction of the
    rows were skipped (the message then holds the table of skips).
    """
    source = open_source(path, cfg)
    examples, report = cached_table(source, cfg, lambda builder: read_examples(source, cfg, builder)[1])
    _check_skips(report, cfg)
    return examples, report


def _check_skips(report: LoadReport, cfg: DataConfig) -> None:
    complaint = report.too_many_skipped(cfg.max_skip_fraction)
    if complaint:
        raise UserError(f"{complaint}\n{report.table()}")


def read_examples(
    source: Source, cfg: DataConfig, builder: TableBuilder | None = None
) -> tuple[list[VQAExample], LoadReport]:
    """The examples of ``source`` and the report; raises UserError only when the source cannot be
    read at all (no rows, unreadable file, a required column absent from every row). With
    ``builder`` the examples go to it as columns (table.py) and the list returned is empty."""
    root = _image_root(cfg, source)
    converter = RowConverter(cfg, source, root)
    report = LoadReport(source=source.name)
    examples: list[VQAExample] = []
    seen_columns: set[str] = set()
    held: list[tuple[int, Undecided]] = []  # rows with no image or video before any row had the column

    def keep(example: VQAExample, index: int) -> None:
        if builder is None:
            examples.append(example)
        else:
            builder.add(example, index)
        report.keep(example)

    for index, row in enumerate(source.rows, start=1):
        if not seen_columns.issuperset(row.values):  # (most rows: the columns already seen)
            seen_columns.update(k for k in row.values if isinstance(k, str))
        result = converter.convert(row, index)
        if held and converter.decided:  # the set has an image or video column: those rows miss theirs
            for i, undecided in held:
                report.skip(*converter.absent(undecided.where), example_id=undecided.example.id, row=i)
            held.clear()
        if isinstance(result, VQAExample):
            keep(result, index)
        elif isinstance(result, Undecided):
            held.append((index, result))
        else:
            report.skip(*result, example_id=row_id(row, source.columns, index), row=index)
    for i, undecided in held:  # no row had either column: text-only questions, in order
        keep(undecided.example, i)
    if builder is not None:
        builder.image_folders = folder_times({os.path.dirname(p) for p in [*converter.checked, *converter.videos]})
    if report.rows == 0:
        raise UserError(f"{source.name} holds no rows; check data.path")
    _check_columns(source, seen_columns, converter.visual_like)
    _check_mapped(cfg, source, seen_columns)
    return examples, report


def _image_root(cfg: DataConfig, source: Source) -> Path:
    if cfg.image_root:
        root = Path(cfg.image_root).expanduser()
        if not root.is_dir():
            raise UserError(
                f"data.image_root={cfg.image_root!r} is not a folder; set it to the folder holding the images"
            )
        return Path(os.path.abspath(root))
    return Path(os.path.abspath(source.base_dir))


def _check_mapped(cfg: DataConfig, source: Source, seen: set[str]) -> None:
    """A column the user mapped (data.columns.KEY away from its default) must be in the data: a
    typo there would otherwise fall back to another column, or to inferring the field."""
    default = ColumnsConfig()
    for f in dataclasses.fields(ColumnsConfig):
        name = getattr(cfg.columns, f.name)
        if name != getattr(default, f.name) and name == getattr(source.columns, f.name) and name not in seen:
            have = ", ".join(sorted(seen)[:12]) or "none"
            raise UserError(
                f"data.columns.{f.name}={name!r} is not a column of {source.name} (columns: {have}); "
                f"set it to one of them, or drop it to use the default {getattr(default, f.name)!r}"
            )


def _check_columns(source: Source, seen: set[str], visual_like: dict[str, str]) -> None:
    """The question's and the answers' columns must be in the data; the image and video columns
    need not (text-only questions), unless another column holds what looks like images or videos
    (``visual_like``: a column -> "image" or "video"), which is then most likely misnamed."""
    cols = source.columns
    have = ", ".join(sorted(seen)[:12]) or "none"
    for key in ("image", "video", "question"):
        name = getattr(cols, key)
        found = name in seen or key in fallback_columns(seen, cols)  # TRL's prompt, images
        misnamed = [c for c, kind in visual_like.items() if kind == key]
        if not found and (key == "question" or misnamed):
            hint = f"column {misnamed[0]!r} holds {key}s: " if misnamed else ""
            raise UserError(
                f"{source.name} has no column {name!r} for the {key} (columns: {have}); {hint}map yours with "
                f"data.columns.{key}=NAME"
            )
    if cols.answer not in seen and cols.answers not in seen:
        raise UserError(
            f"{source.name} has neither column {cols.answer!r} nor {cols.answers!r} for the answers (columns: {have}); "
            "map yours with data.columns.answer=NAME or data.columns.answers=NAME"
        )
