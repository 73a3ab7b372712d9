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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vqa_grpo.config import ColumnsConfig, DataConfig
from vqa_grpo.data.images import ImageLoader, StoredImage, check_image, resolve_image
from vqa_grpo.data.qtypes import answer_type_of, question_type_of
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
from vqa_grpo.data.types import ANSWER_TYPES, VQAExample
from vqa_grpo.errors import UserError

SKIP_REASONS = (
    "missing_image",
    "corrupt_image",
    "empty_question",
    "empty_answer",
    "outside_root",
    "duplicate_id",
    "too_large",
    "several_images",
    "question_not_text",
    "answer_not_text",
)
_FIXES = {
    "missing_image": "image file not found: check data.image_root and the paths in the image column",
    "corrupt_image": "PIL cannot open the image: re-export or remove those files",
    "empty_question": "no question text: check data.columns.question",
    "empty_answer": "no answer: check data.columns.answer / data.columns.answers",
    "outside_root": "path leaves the image root: fix the paths, or set data.allow_outside_root=true",
    "duplicate_id": "id seen before: make ids unique, or check data.columns.id",
    "too_large": "more pixels than PIL's decompression-bomb limit: downscale those images",
    "several_images": "several images for one question: keep one image per row",
    "question_not_text": "the question is a number or boolean, not text: write the question's text",
    "answer_not_text": 'a JSON true/false answer: write the answer\'s text ("yes"/"no")',
}
_SAMPLES_PER_REASON = 3


@dataclass
class LoadReport:
    """What a load read, kept and skipped; ``table()`` for people, ``to_dict()`` for --json."""

    rows: int = 0
    kept: int = 0
    skipped: dict[str, int] = field(default_factory=lambda: dict.fromkeys(SKIP_REASONS, 0))
    """Skipped rows by reason; every reason is present, zero or not."""
    answer_types: dict[str, int] = field(default_factory=lambda: dict.fromkeys(ANSWER_TYPES, 0))
    """Kept rows by answer type."""
    source: str = ""
    """What was read (path and format), for messages."""
    samples: dict[str, list[str]] = field(default_factory=dict)
    """The first few skipped rows of each reason, e.g. "row 7: images/x.png not found"."""
    rejected: list[dict[str, Any]] = field(default_factory=list)
    """Every skipped row: its id, row number (1-based), reason, detail and source."""

    def keep(self, example: VQAExample) -> None:
        self.rows += 1
        self.kept += 1
        self.answer_types[example.answer_type] = self.answer_types.get(example.answer_type, 0) + 1

    def skip(self, reason: str, detail: str, example_id: str = "", row: int = 0) -> None:
        self.rows += 1
        self.skipped[reason] += 1
        self.rejected.append(dict(id=example_id, row=row, reason=reason, detail=detail, source=self.source))
        shown = self.samples.setdefault(reason, [])
        if len(shown) < _SAMPLES_PER_REASON:
            shown.append(detail)

    @property
    def num_skipped(self) -> int:
        return sum(self.skipped.values())

    def to_dict(self) -> dict[str, Any]:
        return {
            "rows": self.rows,
            "kept": self.kept,
            "skipped": dict(self.skipped),
            "answer_types": dict(self.answer_types),
        }

    def table(self) -> str:
        lines = [f"{self.source or 'data'}: {self.rows} rows read, {self.kept} kept, {self.num_skipped} skipped"]
        if self.num_skipped:
            lines.append(f"  {'skipped':>7}  {'reason':<17}  what to fix")
            for reason, count in self.skipped.items():
                if count:
                    lines.append(f"  {count:>7}  {reason:<17}  {_FIXES[reason]}")
                    lines += [f"  {'':>7}  {'':<17}    e.g. {s}" for s in self.samples.get(reason, [])]
        types = ", ".join(f"{t} {n}" for t, n in self.answer_types.items())
        lines.append(f"  kept by answer type: {types}")
        return "\n".join(lines)

    def too_many_skipped(self, max_fraction: float) -> str | None:
        """A one-line complaint when more than ``max_fraction`` of the rows were skipped, else None."""
        if self.rows == 0 or self.num_skipped <= max_fraction * self.rows:
            return None
        return (
            f"{self.num_skipped} of {self.rows} rows of {self.source} were skipped "
            f"({self.num_skipped / self.rows:.0%}, more than data.max_skip_fraction={max_fraction}); "
            "fix the rows by the reasons shown, or raise data.max_skip_fraction"
        )

    @classmethod
    def combine(cls, reports: list[LoadReport]) -> LoadReport:
        """The sum of several loads (train and eval files)."""
        total = cls(source=" + ".join(r.source for r in reports))
        for r in reports:
            total.rows += r.rows
            total.kept += r.kept
            for k, v in r.skipped.items():
                total.skipped[k] += v
            for k, v in r.answer_types.items():
                total.answer_types[k] = total.answer_types.get(k, 0) + v
            for k, v in r.samples.items():
                total.samples.setdefault(k, []).extend(v)
            total.rejected += r.rejected
        return total


@dataclass
class LoadedData:
    train: list[VQAExample]
    eval: list[VQAExample]
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


def load_examples(path: str, cfg: DataConfig) -> tuple[list[VQAExample], LoadReport]:
    """Every usable example of one file or folder, in file order (no split).

    Raises UserError when the path cannot be read or when more than cfg.max_skip_fraction of the
    rows were skipped (the message then holds the table of skips).
    """
    examples, report = read_examples(open_source(path, cfg), cfg)
    _check_skips(report, cfg)
    return examples, report


def _check_skips(report: LoadReport, cfg: DataConfig) -> None:
    complaint = report.too_many_skipped(cfg.max_skip_fraction)
    if complaint:
        raise UserError(f"{complaint}\n{report.table()}")


def read_examples(source: Source, cfg: DataConfig) -> tuple[list[VQAExample], LoadReport]:
    """The examples of ``source`` and the report; raises UserError only when the source cannot be
    read at all (no rows, unreadable file, a required column absent from every row)."""
    root = _image_root(cfg, source)
    converter = _RowConverter(cfg, source, root)
    report = LoadReport(source=source.name)
    examples: list[VQAExample] = []
    seen_columns: set[str] = set()
    for index, row in enumerate(source.rows, start=1):
        seen_columns.update(k for k in row.values if isinstance(k, str))
        result = converter.convert(row, index)
        if isinstance(result, VQAExample):
            examples.append(result)
            report.keep(result)
        else:
            report.skip(*result, example_id=row_id(row, source.columns, index), row=index)
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
        source, reason, detail = resolve_image(cell, self.root, self.allow_outside_root)
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
    value = value.tolist() if hasattr(value, "tolist") else value  # numpy arrays and numpy bools
    if isinstance(value, dict):
        return _has_flag(value.get("answer"))
    return any(map(_has_flag, value)) if isinstance(value, (list, tuple)) else isinstance(value, bool)


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
        items = (_text(x.get("answer")) if isinstance(x, dict) else _text(x) for x in value)
        return [x for x in items if x]
    text = _text(value)
    return [text] if text else []
