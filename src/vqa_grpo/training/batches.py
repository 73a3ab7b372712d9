"""The seeded order in which a run visits its training questions, and this process's share of it."""

from __future__ import annotations

import torch

from vqa_grpo.data.types import BadExample, VQAExample


class Batches:
    """Seeded data order over epochs; skips examples whose image fails to decode, and counts them
    (``skipped``: every time one is met; ``bad``: each one once, id -> its kind and reason).

    Every process walks the same order and decodes the images of the whole global batch
    (``batch_size x world`` questions), so all agree on which examples were skipped; rank r then
    keeps questions ``[r * batch_size, (r + 1) * batch_size)`` of it. With one process this is the
    plain batch.
    """

    def __init__(self, examples: list[VQAExample], batch_size: int, seed: int, rank: int = 0, world: int = 1):
        self.examples, self.batch_size, self.seed = examples, batch_size, seed
        self.rank, self.world = rank, world
        self.epoch, self.pos, self.skipped = 0, 0, 0
        self.bad: dict[str, dict[str, str]] = {}
        self._order = self._permutation()

    def _permutation(self) -> list[int]:
        g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        return torch.randperm(len(self.examples), generator=g).tolist()

    def next(self) -> tuple[list[VQAExample], list]:
        """This process's examples of the next global batch, with their decoded images."""
        chunk, images = [], []
        while len(chunk) < self.batch_size * self.world:
            if self.pos >= len(self._order):
                self.epoch, self.pos = self.epoch + 1, 0
                self._order = self._permutation()
            ex = self.examples[self._order[self.pos]]
            self.pos += 1
            try:
                images.append(ex.load_image())
            except BadExample as e:
                self.skipped += 1
                self.bad.setdefault(ex.id, {"reason": e.kind, "detail": e.reason})
                if self.skipped > 10 * len(self.examples):
                    raise RuntimeError("no training image can be decoded") from None
                continue
            chunk.append(ex)
        lo, hi = self.rank * self.batch_size, (self.rank + 1) * self.batch_size
        return chunk[lo:hi], images[lo:hi]

    def state(self) -> dict:
        return {"epoch": self.epoch, "pos": self.pos, "skipped": self.skipped, "bad": self.bad}

    def restore(self, state: dict) -> None:
        self.epoch, self.pos, self.skipped = state["epoch"], state["pos"], state["skipped"]
        self.bad = dict(state.get("bad", {}))  # (checkpoints written before it was kept)
        self._order = self._permutation()
