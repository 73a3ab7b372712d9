"""The example every data source yields, whatever its file format.

The dataset yields images, questions, answers, types and ids (and the row's other columns, for
reward functions); the prompt's text comes from data/prompts.py and its chat format from the model
family's adapter.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from PIL import Image

from vqa_grpo.errors import BadExample  # raised here; callers import it from here too

ANSWER_TYPES = ("yes/no", "number", "other")


@dataclass
class VQAExample:
    """One (image, question, answers) triple.

    ``answers`` holds every reference answer (VQA v2 has 10, a plain dataset 1); ``answer`` is the
    single answer used as the SFT target (VQA v2's ``multiple_choice_answer``). The image is
    opened lazily by ``load_image`` so that a data set is never held in memory.
    """

    id: str
    question: str
    answers: list[str]
    answer: str
    answer_type: str = "other"
    question_type: str = "none of the above"
    image_loader: Callable[[], Image.Image] | None = field(default=None, repr=False, compare=False)
    fields: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)
    """The row's other columns by name (data/rows.py ``row_fields``), which reward functions get
    as keyword arguments, as in TRL; image and binary cells are left out."""

    def load_image(self) -> Image.Image:
        """The image as RGB; raises BadExample when it cannot be decoded."""
        if self.image_loader is None:
            raise BadExample(self.id, "no image")
        try:
            return self.image_loader()
        except BadExample:
            raise
        except Exception as e:  # any decode failure of one image must not stop a run
            raise BadExample(self.id, f"image failed to load: {type(e).__name__}: {e}") from e
