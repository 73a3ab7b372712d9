"""The rows a run does not train on, told rather than dropped in silence.

Two kinds: rows skipped when the data loaded (data/loader.py's reasons: missing_image,
corrupt_image, ...) and examples whose image failed when a batch needed it (training/batches.py:
a truncated JPEG passes the load-time check and fails at decode; a model's processor may refuse
an image as well). Rank 0 prints one line with the counts by reason on stderr and keeps
``skipped.json`` in the run directory, rewritten when a new example is skipped:

    {"rows": rows read, "skipped": rows not trained on, "by_reason": {reason: count},
     "examples": [{"id", "reason", "detail", "when": "load" (with "row", "source") or "training"}]}

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

    def line(self) -> str:
        reasons = counts_text(self.by_reason())
        late = len(self.batches.bad)
        when = f": {self.load.num_skipped} when the data loaded, {late} whose image failed in training" if late else ""
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
        record = {"rows": self.load.rows, "skipped": self.total, "by_reason": self.by_reason()}
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps({**record, "examples": loaded + trained}, indent=1) + "\n")
        os.replace(tmp, self.path)
        self._written = len(self.batches.bad)
