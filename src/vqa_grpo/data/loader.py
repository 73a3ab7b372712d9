"""Load a VQA data set into examples, skipping bad rows with a reason, and split it.

Each row goes through the same steps, whatever its format (see ``sources.py``): map the columns
(data.columns), then keep it or skip it for the first reason that applies, in this order:

  duplicate_id       its id was already seen (the first row with that id is the one kept)
  question_not_text  the question is a number or a boolean (JSON 42, true), not text
  empty_question     no question text
  answer_not_text    the answer or an entry of answers is a boolean (JSON true/false: "true" is
                     not "yes"); a number answer is kept as its text (a count, an int column)
  empty_answer       neither an answer nor any non-empty entry in answers
  outside_root       its image path leaves the image root (unless data.allow_outside_root)
  missing_image      no image given, or the file does not exist
  too_large          more pixels than PIL's decompression-bomb limit
  several_images     a list of more than one image (TRL's images column): one image per question
  corrupt_image      PIL cannot open or verify the image

Field rules: ``answers`` may be a list, a JSON list in a string (CSV), one string, or VQA-style
``{"answer": ...}`` entries; a missing ``answer`` is the most frequent entry of ``answers`` (ties to
the first), a missing ``answers`` is ``[answer]``. TRL's layout is read too (rows.py): a
conversational ``prompt`` column (the last user turn's text) as the question, an ``images`` list as
the image; every other column is kept on the example for reward functions (``VQAExample.fields``).
Types come from the data when present (an answer type must be one of ANSWER_TYPES), else from
``qtypes.py``. A missing id is ``row<N>`` (1-based).
A column mapped in data.columns away from its default must exist in the data.
Images are checked, never decoded, at load time; each example opens its image lazily.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vqa_grpo.config import ColumnsConfig, DataConfig
from vqa_grpo.data.cache import cached_table, folder_times
from vqa_grpo.data.images import ImageLoader, StoredImage, check_image, resolve_image
from vqa_grpo.data.qtypes import answer_type_of, question_type_of
from vqa_grpo.data.report import SKIP_REASONS, LoadReport
from vqa_grpo.data.rows import (
    Row,
    Source,
    fallback_columns,
    image_cell,
    most_common,
    parse_list,
    question_cell,
    row_fields,
)
from vqa_grpo.data.sources import memory_source, open_source
from vqa_grpo.data.splits import limit, split_train_eval
from vqa_grpo.data.table import TableBuilder
from vqa_grpo.data.types import ANSWER_TYPES, VQAExample
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
    converter = _RowConverter(cfg, source, root)
    report = LoadReport(source=source.name)
    examples: list[VQAExample] = []
    seen_columns: set[str] = set()
    for index, row in enumerate(source.rows, start=1):
        if not seen_columns.issuperset(row.values):  # (most rows: the columns already seen)
            seen_columns.update(k for k in row.values if isinstance(k, str))
        result = converter.convert(row, index)
        if isinstance(result, VQAExample):
            if builder is None:
                examples.append(result)
            else:
                builder.add(result, index)
            report.keep(result)
        else:
            report.skip(*result, example_id=row_id(row, source.columns, index), row=index)
    if builder is not None:
        builder.image_folders = folder_times({os.path.dirname(p) for p in converter.checked})
    if report.rows == 0:
        raise UserError(f"{source.name} holds no rows; check data.path")
    _check_columns(source, seen_columns)
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


def _check_columns(source: Source, seen: set[str]) -> None:
    cols = source.columns
    have = ", ".join(sorted(seen)[:12]) or "none"
    for key in ("image", "question"):
        name = getattr(cols, key)
        if name not in seen and key not in fallback_columns(seen, cols):  # TRL's prompt, images
            raise UserError(
                f"{source.name} has no column {name!r} for the {key} (columns: {have}); map yours with "
                f"data.columns.{key}=NAME"
            )
    if cols.answer not in seen and cols.answers not in seen:
        raise UserError(
            f"{source.name} has neither column {cols.answer!r} nor {cols.answers!r} for the answers (columns: {have}); "
            "map yours with data.columns.answer=NAME or data.columns.answers=NAME"
        )


def row_id(row: Row, cols: ColumnsConfig, index: int) -> str:
    return _text(row.values.get(cols.id)) or f"row{index}"


class _RowConverter:
    """Turns rows into examples or (reason, detail) skips; remembers ids and checked images."""

    def __init__(self, cfg: DataConfig, source: Source, root: Path):
        self.cols = source.columns
        self.root = root
        self.allow_outside_root = cfg.allow_outside_root
        self.max_pixels = max(0, cfg.max_image_pixels)
        self.seen_ids: set[str] = set()
        self.checked: dict[Path, tuple[str, str]] = {}  # VQA v2 shares one image among ~5 questions
        self.resolved: dict[str, tuple[Any, str, str]] = {}  # and so one path among ~5 rows

    def convert(self, row: Row, index: int) -> VQAExample | tuple[str, str]:
        v, cols = row.values, self.cols
        ex_id = row_id(row, cols, index)
        where = f"row {index} (id {ex_id[:40]})"
        if ex_id in self.seen_ids:
            return "duplicate_id", f"{where}: id seen in an earlier row"
        self.seen_ids.add(ex_id)
        raw_question = question_cell(v, cols)  # or TRL's conversational prompt (rows.py)
        question = _text(raw_question)
        if question and not isinstance(raw_question, str):
            return "question_not_text", f"{where}: question {raw_question!r}"
        if not question:
            return "empty_question", where
        if _has_flag(v.get(cols.answer)) or _has_flag(v.get(cols.answers)):
            return "answer_not_text", f"{where}: a true/false answer"
        answers = _answers(v.get(cols.answers))
        answer = _text(v.get(cols.answer)) or most_common(answers)
        if not answer:
            return "empty_answer", where
        answers = answers or [answer]
        cell, several = image_cell(v, cols)  # or TRL's images list
        if several:
            return "several_images", f"{where}: {several}"
        source, reason, detail = self._resolve(cell)
        if source is None:
            return reason, f"{where}: {detail}"
        reason, detail = self._check(source)
        if reason:
            return reason, f"{where}: {detail}"
        if row.reread_image is not None and not isinstance(source, Path):
            source = StoredImage(row.reread_image)  # keep a handle, not the bytes
        answer_type = _text(v.get(cols.answer_type)).lower()
        example = VQAExample(
            id=ex_id,
            question=question,
            answers=answers,
            answer=answer,
            answer_type=answer_type if answer_type in ANSWER_TYPES else answer_type_of(answers),
            question_type=_text(v.get(cols.question_type)) or question_type_of(question),
            image_loader=ImageLoader(source, self.max_pixels),
        )
        example.fields = row_fields(v, cols, example)  # every column, for reward functions
        return example

    def _resolve(self, cell: Any) -> tuple[Any, str, str]:
        if not isinstance(cell, str):
            return resolve_image(cell, self.root, self.allow_outside_root)
        if cell not in self.resolved:
            self.resolved[cell] = resolve_image(cell, self.root, self.allow_outside_root)
        return self.resolved[cell]

    def _check(self, source: Any) -> tuple[str, str]:
        if not isinstance(source, Path):
            return check_image(source)
        if source not in self.checked:
            self.checked[source] = check_image(source)
        return self.checked[source]


# ----------------------------------------------------------------------------------------------
# Cell values of any type (JSON, CSV strings, pandas, Arrow) to text.


def _text(value: Any) -> str:
    """Stripped text of a scalar cell; "" for missing, NaN or non-scalar values."""
    if isinstance(value, str):
        return value.strip()
    if isinstance(value, bool) or value is None:
        return str(value).lower() if isinstance(value, bool) else ""
    if isinstance(value, numbers.Integral):
        return str(int(value))
    if isinstance(value, numbers.Real):
        x = float(value)
        if math.isnan(x):
            return ""
        return str(int(x)) if x.is_integer() else repr(x)
    return ""


def _has_flag(value: Any) -> bool:
    """Whether an answer cell, or an entry of an answers cell, is a boolean (JSON true/false, an
    Arrow bool column): "true" is not an answer's text."""
    if isinstance(value, str) or value is None:  # the usual cell, first
        return False
    value = value.tolist() if hasattr(value, "tolist") else value  # numpy arrays and numpy bools
    if isinstance(value, dict):
        return _has_flag(value.get("answer"))
    if isinstance(value, (list, tuple)):
        return any(type(x) is not str and _has_flag(x) for x in value)
    return isinstance(value, bool)


def _answers(value: Any) -> list[str]:
    """Non-empty answer strings from a list, a JSON/Python list in a string, one string, or
    VQA-style entries (``{"answer": ...}`` items, or a datasets ``{"answer": [...]}`` mapping)."""
    if hasattr(value, "tolist") and not isinstance(value, (str, bytes)):
        value = value.tolist()  # numpy arrays from pandas / Arrow
    if isinstance(value, str):
        text = value.strip()
        parsed = parse_list(text) if text.startswith("[") else None
        return _answers(parsed) if parsed is not None else ([text] if text else [])
    if isinstance(value, dict):
        return _answers(value.get("answer"))
    if isinstance(value, (list, tuple)):
        if value and set(map(type, value)) == {str}:  # the usual cell: plain strings
            return [t for t in (x.strip() for x in value) if t]
        items = (_text(x.get("answer")) if isinstance(x, dict) else _text(x) for x in value)
        return [x for x in items if x]
    text = _text(value)
    return [text] if text else []
