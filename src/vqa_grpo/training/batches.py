"""The seeded order in which a run visits its training questions, and this process's share of it."""

from __future__ import annotations

from typing import Callable, Sequence

import torch

from vqa_grpo.data.types import BadExample, Visual, VQAExample
from vqa_grpo.errors import UserError
from vqa_grpo.training.priority import Priorities

SKIPPED_ALL = (
    "no training question can be used: each one drawn was skipped (its visuals or its prompt's length); "
    "check the data with vqa-grpo data inspect (and data.video_frames for prompts past the context)"
)


class Batches:
    """Seeded data order over epochs; skips examples any of whose visuals (an image of its list,
    its video) fails to decode, or that ``guard`` refuses (a prompt past the model's context:
    models/fit.py ``PromptGuard``, which measures each question once and keeps its verdict), and
    counts them (``skipped``: every time one is met; ``bad``: each one once, id -> its kind and
    reason). A question in ``bad`` is skipped when drawn again without being decoded again.

    Every process walks the same order and decodes the visuals of the whole global batch
    (``batch_size x world`` questions), so all agree on which examples were skipped; rank r then
    keeps questions ``[r * batch_size, (r + 1) * batch_size)`` of it. With one process this is the
    plain batch.

    With ``priorities`` (grpo.prioritized_sampling; training/priority.py) the order is not a
    permutation: each question is drawn from the priority distribution over the questions whose
    image decodes and that the current optimiser step has not drawn yet (``next(same_step=True)``
    continues a step's draws, its micro-batches and dynamic sampling's extra ones; with
    replacement across steps, within a step only once it holds every such question), and
    ``observe`` feeds the rewards back. Checkpoints fall between steps, so the step's drawn set
    needs no resume state.
    """

    def __init__(
        self,
        examples: list[VQAExample],
        batch_size: int,
        seed: int,
        rank: int = 0,
        world: int = 1,
        priorities: Priorities | None = None,
        guard: Callable[[VQAExample, list[Visual]], None] | None = None,
    ):
        self.examples, self.batch_size, self.seed = examples, batch_size, seed
        self.rank, self.world = rank, world
        self.epoch, self.pos, self.skipped = 0, 0, 0
        self.bad: dict[str, dict[str, str]] = {}
        self.priorities = priorities
        self.guard = guard  # raises BadExample for a question the model cannot take (models/fit.py)
        self._taken = torch.zeros(len(examples), dtype=torch.bool)  # drawn by priority in this step
        self._order = self._permutation()

    def _permutation(self) -> list[int]:
        g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        return torch.randperm(len(self.examples), generator=g).tolist()

    def _in_order(self) -> Callable[[], int]:
        """The next question of the seeded epoch order, a new permutation each epoch."""

        def draw() -> int:
            if self.pos >= len(self._order):
                self.epoch, self.pos = self.epoch + 1, 0
                self._order = self._permutation()
            self.pos += 1
            return self._order[self.pos - 1]

        return draw

    def _by_priority(self, priorities: Priorities) -> Callable[[], int]:
        """The next question of one global batch drawn by priority (each batch its own generator)."""
        g, taken = priorities.generator(), self._taken

        def draw() -> int:
            i = priorities.pick(g, taken | self._bad_mask(priorities))
            if i is None and taken.any():  # the step holds every question: repeats from here on
                taken.zero_()
                i = priorities.pick(g, self._bad_mask(priorities))
            if i is None:
                raise UserError(SKIPPED_ALL)
            taken[i] = True
            return i

        return draw

    def _bad_mask(self, priorities: Priorities) -> torch.Tensor:
        """[N] True for the questions skipped (a visual that failed, a prompt past the context): never drawn again."""
        mask = torch.zeros(len(self.examples), dtype=torch.bool)
        for q in self.bad:
            mask[priorities.index[q]] = True
        return mask

    def next(self, same_step: bool = False) -> tuple[list[VQAExample], list[list[Visual]]]:
        """This process's examples of the next global batch, with their decoded visuals (each
        example's ``load_visuals()``: its images in order, then its video; [] for a text-only
        question); ``same_step``: of the optimiser step the last call drew for (no question again
        by priority)."""
        if not same_step:
            self._taken.zero_()
        chunk, visuals = [], []
        draw = self._in_order() if self.priorities is None else self._by_priority(self.priorities)
        while len(chunk) < self.batch_size * self.world:
            ex = self.examples[draw()]
            try:
                if ex.id in self.bad:  # found bad before (a later epoch): not decoded or measured again
                    raise BadExample(ex.id, self.bad[ex.id]["detail"], self.bad[ex.id]["reason"])
                shown = ex.load_visuals()
                if self.guard is not None:
                    self.guard(ex, shown)
            except BadExample as e:
                self.skipped += 1
                self.bad.setdefault(ex.id, {"reason": e.kind, "detail": e.reason})
                if self.skipped > 10 * len(self.examples):
                    raise UserError(SKIPPED_ALL) from None
                continue
            chunk.append(ex)
            visuals.append(shown)
        lo, hi = self.rank * self.batch_size, (self.rank + 1) * self.batch_size
        return chunk[lo:hi], visuals[lo:hi]

    def observe(self, ids: Sequence[str], mean_rewards: Sequence[float]) -> None:
        """The mean reward of each group of a rollout, for prioritised sampling (a no-op without it;
        with it, a collective under several processes: Priorities.observe)."""
        if self.priorities is not None:
            self.priorities.observe(ids, mean_rewards)

    def priority_stats(self) -> dict[str, float]:
        """metrics.jsonl's ``priority/*`` (training/priority.py); empty without prioritised sampling."""
        return {} if self.priorities is None else self.priorities.stats(self._bad_mask(self.priorities))

    def state(self) -> dict:
        state = {"epoch": self.epoch, "pos": self.pos, "skipped": self.skipped, "bad": self.bad}
        if self.priorities is not None:
            state["priority"] = self.priorities.state()
        return state

    def restore(self, state: dict) -> None:
        self.epoch, self.pos, self.skipped = state["epoch"], state["pos"], state["skipped"]
        self.bad = dict(state.get("bad", {}))  # (checkpoints written before it was kept)
        self._order = self._permutation()
        if self.priorities is not None and "priority" in state:  # (a resume that turns it on starts afresh)
            self.priorities.restore(state["priority"])
