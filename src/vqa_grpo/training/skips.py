"""The rows a run does not train on, told rather than dropped in silence.

Two kinds: rows skipped when the data loaded (data/loader.py's reasons: missing_image,
corrupt_image, ...) and examples skipped when a batch needed them (training/batches.py: a
truncated JPEG passes the load-time check and fails at decode; a model's processor may refuse an
image; ``past_context``: a prompt with its visuals longer than the model's context, models/fit.py).
Rank 0 prints one line with the counts by reason on stderr (again at the end of training, with
the skips in training by reason and the rows left to train on) and keeps ``skipped.json`` in the
run directory, rewritten when a new example is skipped:

    {"rows": rows read, "skipped": rows not trained on, "by_reason": {reason: count},
     "in_training": {reason: count} (of those, skipped in training), "left": rows - skipped,
     "examples": [{"id", "reason", "detail", "when": "load" (with "row", "source") or "training"}]}

Skips in training have no limit of their own (data.max_skip_fraction judges the load): the line
and the file say how many rows were left.

Nothing is written when nothing was skipped. ``metrics.jsonl`` carries the running total as
``skipped_rows`` on every step's line (beside ``skipped_images``: decode failures met, repeats
over epochs included).
"""

from __future__ import annotations

import json
import os
import sys
from collections import Counter
from pathlib import Path

from tqdm.auto import tqdm

from vqa_grpo.data.loader import LoadReport
from vqa_grpo.training.batches import Batches

SKIPPED_FILE = "skipped.json"


def counts_text(by_reason: dict[str, int]) -> str:
    """Skip counts for a line, e.g. "missing_image 2, corrupt_image 1" (reasons with none left out)."""
    return ", ".join(f"{reason} {n}" for reason, n in by_reason.items() if n)


class SkipReport:
    """The load's skips and the training batches' skips of one run; ``write``: this process writes."""

    def __init__(self, load: LoadReport, batches: Batches, run_dir: Path, desc: str, write: bool):
        self.load, self.batches, self.path, self.desc, self.write = load, batches, run_dir / SKIPPED_FILE, desc, write
        self._written = -1  # how many training skips the file holds

    @property
    def total(self) -> int:
        return self.load.num_skipped + len(self.batches.bad)

    def by_reason(self) -> dict[str, int]:
        counts = Counter({reason: n for reason, n in self.load.skipped.items() if n})
        counts.update(bad["reason"] for bad in self.batches.bad.values())
        return dict(counts.most_common())

    def in_training(self) -> dict[str, int]:
        """The training batches' skips by reason (an image that failed to decode, ``past_context``: a
        prompt past the model's context, ...), most first."""
        return dict(Counter(bad["reason"] for bad in self.batches.bad.values()).most_common())

    def line(self) -> str:
        reasons = counts_text(self.by_reason())
        late = len(self.batches.bad)
        when = ""
        if late:
            when = (
                f": {self.load.num_skipped} when the data loaded, {late} skipped in training "
                f"({counts_text(self.in_training())}); {self.load.rows - self.total} left to train on"
            )
        return (
            f"{self.desc}: {self.total} of {self.load.rows} rows skipped ({reasons}){when}; "
            f"ids and reasons in {self.path}"
        )

    def start(self) -> None:
        """The line and the file for the rows skipped at load (a resumed run: and those its checkpoint holds)."""
        if self.write and self.total:
            self._save()
            tqdm.write(self.line(), file=sys.stderr)

    def update(self) -> None:
        """Rewrite the file when an example was skipped since it was last written."""
        if self.write and self.total and len(self.batches.bad) != self._written:
            self._save()

    def finish(self) -> None:
        """The line again at the end of training when examples were skipped during it."""
        self.update()
        if self.write and self.batches.bad:
            tqdm.write(self.line(), file=sys.stderr)

    def _save(self) -> None:
        loaded = [{**row, "when": "load"} for row in self.load.rejected]
        trained = [{"id": i, **bad, "when": "training"} for i, bad in self.batches.bad.items()]
        record = {
            "rows": self.load.rows,
            "skipped": self.total,
            "by_reason": self.by_reason(),
            "in_training": self.in_training(),
            "left": self.load.rows - self.total,
        }
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps({**record, "examples": loaded + trained}, indent=1) + "\n")
        os.replace(tmp, self.path)
        self._written = len(self.batches.bad)
