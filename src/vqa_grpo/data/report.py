"""What a load read, kept and skipped: the skip reasons, their fixes, and :class:`LoadReport`.

The reasons and their order are loader.py's (its docstring lists when each applies); the report is
kept with the loaded-examples index (cache.py), so a load from the index reports as the first did.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from vqa_grpo.data.types import ANSWER_TYPES, VQAExample

SKIP_REASONS = (
    "missing_image",
    "corrupt_image",
    "empty_question",
    "empty_answer",
    "outside_root",
    "duplicate_id",
    "too_large",
    "question_not_text",
    "answer_not_text",
    "placeholder_mismatch",
    "missing_video",
    "corrupt_video",
)
_FIXES = {
    "missing_image": "no image, or its file not found: check data.image_root and the paths in the image column",
    "corrupt_image": "PIL cannot open the image: re-export or remove those files",
    "empty_question": "no question text: check data.columns.question",
    "empty_answer": "no answer: check data.columns.answer / data.columns.answers",
    "outside_root": "path leaves the image root: fix the paths, or set data.allow_outside_root=true",
    "duplicate_id": "id seen before: make ids unique, or check data.columns.id",
    "too_large": "more pixels than PIL's decompression-bomb limit: downscale those images",
    "question_not_text": "the question is a number or boolean, not text: write the question's text",
    "answer_not_text": 'a JSON true/false answer: write the answer\'s text ("yes"/"no")',
    "placeholder_mismatch": "as many <image> in the question as images, <video> once with a video; or none",
    "missing_video": "video file not found: check data.image_root and the paths in the video column",
    "corrupt_video": "the video file cannot be opened: re-encode (e.g. H.264 mp4) or remove it",
}
_FRAME_FIXES = {
    "missing_image": "video frame not found: check data.image_root and the frame paths in the video column",
    "corrupt_image": "PIL cannot open a video frame: re-export or remove those frames",
    "too_large": "a video frame over PIL's decompression-bomb limit: downscale those frames",
}
_UNSUPPORTED_FIXES = {
    "missing_image": "an image cell of a type no reader takes: write a path, bytes or a {'bytes', 'path'} mapping",
    "missing_video": "a video cell of a type no reader takes: write a file's path or bytes, or a list of frame images",
}
_UNSUPPORTED_FRAME_FIX = (
    "a video frame of a type no reader takes: write each frame as a path, bytes or a {'bytes', 'path'} mapping"
)
_FRAME = "video frame "
"""How a skip's detail names an entry of a video's frame list (convert.py, video.py)."""
_UNSUPPORTED = "unsupported cell type "
"""How a skip's detail names a cell of a type no reader takes (images.py, video.py)."""
_SAMPLES_PER_REASON = 3


def fix(reason: str, details: list[str]) -> str:
    """What to fix for the rows skipped for ``reason``, by the kind of entry their details name:
    an image (or a video file), a video's frame, a cell of a type no reader takes, or a frame of
    such a type; each kind named once, joined by "; " when the rows hold several."""
    kinds = {(_FRAME in d, _UNSUPPORTED in d) for d in details} or {(False, False)}
    texts = {
        (False, False): _FIXES[reason],
        (True, False): _FRAME_FIXES.get(reason, _FIXES[reason]),
        (False, True): _UNSUPPORTED_FIXES.get(reason, _FIXES[reason]),
        (True, True): _UNSUPPORTED_FRAME_FIX if reason == "missing_image" else _FIXES[reason],
    }
    return "; ".join(dict.fromkeys(text for kind, text in texts.items() if kind in kinds))


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
    max_images: int = 0
    """The most images of any kept example (0: every question is text-only or a video's)."""
    videos: int = 0
    """Kept examples with a video."""

    def keep(self, example: VQAExample) -> None:
        self.rows += 1
        self.kept += 1
        self.answer_types[example.answer_type] = self.answer_types.get(example.answer_type, 0) + 1
        self.max_images = max(self.max_images, example.num_images)
        self.videos += example.video_loader is not None

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
            "max_images": self.max_images,
            "videos": self.videos,
        }

    def table(self) -> str:
        lines = [f"{self.source or 'data'}: {self.rows} rows read, {self.kept} kept, {self.num_skipped} skipped"]
        if self.num_skipped:
            lines.append(f"  {'skipped':>7}  {'reason':<20}  what to fix")
            for reason, count in self.skipped.items():
                if count:
                    details = [r["detail"] for r in self.rejected if r["reason"] == reason]
                    lines.append(f"  {count:>7}  {reason:<20}  {fix(reason, details)}")
                    lines += [f"  {'':>7}  {'':<20}    e.g. {s}" for s in self.samples.get(reason, [])]
        types = ", ".join(f"{t} {n}" for t, n in self.answer_types.items())
        lines.append(f"  kept by answer type: {types}")
        if self.kept:
            lines.append(f"  {self.visuals_line()}")
        return "\n".join(lines)

    def visuals_line(self) -> str:
        """The kept questions' images and videos, in words: no "at most 0" when none has an image."""
        if self.max_images:
            return f"images per question: at most {self.max_images}; questions with a video: {self.videos}"
        if self.videos:
            return f"images per question: none; questions with a video: {self.videos}"
        return "images per question: none; every question is text-only"

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
            total.max_images = max(total.max_images, r.max_images)
            total.videos += r.videos
            for k, v in r.skipped.items():
                total.skipped[k] += v
            for k, v in r.answer_types.items():
                total.answer_types[k] = total.answer_types.get(k, 0) + v
            for k, v in r.samples.items():
                total.samples.setdefault(k, []).extend(v)
            total.rejected += r.rejected
        return total
