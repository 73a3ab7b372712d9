"""The official VQA v2 files: ``v2_OpenEnded_mscoco_<split>_questions.json`` with
``v2_mscoco_<split>_annotations.json`` beside it.

data.path is the questions file or the folder holding the pair. Each question becomes a row with
the default column names: its ``question_id`` as id, the ten human answers as answers,
``multiple_choice_answer`` as answer, and VQA v2's own question and answer types. The COCO image is
``COCO_<split>_<image_id:012d>.jpg`` directly under the image root or under ``<root>/<split>/``
(the layout COCO's zip files unpack to); the root is data.image_root, else the questions' folder.
The column mapping does not apply: the schema is fixed.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from vqa_grpo.config import ColumnsConfig, DataConfig
from vqa_grpo.data.rows import Row, Source
from vqa_grpo.errors import UserError

_QUESTIONS = re.compile(r"v2_OpenEnded_mscoco_(?P<split>.+)_questions\.json")


def looks_like_vqa_v2(p: Path) -> bool:
    """A VQA v2 questions file, or a folder holding one."""
    if p.is_file():
        return _QUESTIONS.fullmatch(p.name) is not None
    return p.is_dir() and any(_QUESTIONS.fullmatch(f.name) for f in p.iterdir())


def vqa_v2_source(p: Path, cfg: DataConfig) -> Source:
    questions_path = _questions_file(p)
    split = _QUESTIONS.fullmatch(questions_path.name)["split"]  # type: ignore[index]
    annotations_path = questions_path.with_name(f"v2_mscoco_{split}_annotations.json")
    if not annotations_path.is_file():
        raise UserError(
            f"VQA v2 annotations {annotations_path.name} not found beside {questions_path}; "
            "put it there (the test split has no answers and cannot be used for training or evaluation)"
        )
    root = Path(cfg.image_root).expanduser() if cfg.image_root else questions_path.parent
    rows = _rows(questions_path, annotations_path, split, root.absolute())
    files = [questions_path, annotations_path]
    return Source(f"{questions_path} (vqa_v2)", questions_path.parent, rows, ColumnsConfig(), files=files)


def _questions_file(p: Path) -> Path:
    if p.is_file():
        if not _QUESTIONS.fullmatch(p.name):
            raise UserError(
                f"{p} is not named v2_OpenEnded_mscoco_<split>_questions.json; point data.path at the VQA v2 "
                "questions file"
            )
        return p
    found = sorted(f for f in p.iterdir() if _QUESTIONS.fullmatch(f.name)) if p.is_dir() else []
    if len(found) != 1:
        what = "no" if not found else f"{len(found)} ({', '.join(f.name for f in found)})"
        raise UserError(f"folder {p} holds {what} VQA v2 questions files; set data.path to one questions file")
    return found[0]


def _load_list(path: Path, key: str) -> list[dict[str, Any]]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"{path} is not valid JSON ({e}); download it again") from None
    items = data.get(key) if isinstance(data, dict) else None
    if not isinstance(items, list):
        raise UserError(f"{path} has no {key!r} list; is it a VQA v2 {key} file?")
    return [item for item in items if isinstance(item, dict)]


def _rows(questions_path: Path, annotations_path: Path, split: str, root: Path) -> Iterator[Row]:
    annotations = {a.get("question_id"): a for a in _load_list(annotations_path, "annotations")}
    image_path = _image_paths(root, split)
    for q in _load_list(questions_path, "questions"):
        ann = annotations.get(q.get("question_id"), {})
        answers = [a.get("answer") for a in ann.get("answers", []) if isinstance(a, dict)]
        yield Row(
            {
                "id": q.get("question_id"),
                "image": image_path(q.get("image_id")),
                "question": q.get("question"),
                "answer": ann.get("multiple_choice_answer"),
                "answers": answers,
                "question_type": ann.get("question_type"),
                "answer_type": ann.get("answer_type"),
            }
        )


def _image_paths(root: Path, split: str) -> Callable[[Any], str | None]:
    """The image path of an image id: ``<root>/<name>`` when that file exists, else
    ``<root>/<split>/<name>``. The root is listed once (not a ``stat`` per question: VQA v2 train
    asks 443,757 times, and most of its images are in the split's folder)."""
    try:
        with os.scandir(root) as entries:
            flat = {e.name for e in entries if e.name.startswith("COCO_") and e.is_file()}
    except OSError:
        flat = set()
    base, nested = str(root), os.path.join(str(root), split)

    def image_path(image_id: Any) -> str | None:
        if isinstance(image_id, bool) or not isinstance(image_id, int):
            return None
        name = f"COCO_{split}_{image_id:012d}.jpg"
        return os.path.join(base if name in flat else nested, name)

    return image_path
