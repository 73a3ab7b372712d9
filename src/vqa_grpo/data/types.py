"""The example every data source yields, whatever its file format.

The dataset yields images, questions, answers, types and ids (and the row's other columns, for
reward functions); the prompt's text comes from data/prompts.py and its chat format from the model
family's adapter. An example holds no image (a text-only question), one (``image_loader``), several
in order (``image_loaders``) or a video (``video_loader``: its sampled frames); ``load_visuals``
gives them in the order the prompt shows them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from PIL import Image

from vqa_grpo.errors import BadExample, UserError  # BadExample is raised here; callers import it from here too

ANSWER_TYPES = ("yes/no", "number", "other")

IMAGE_PLACEHOLDER = "<image>"
"""Where a question shows its next image; with no placeholder, all images come first, in order."""
VIDEO_PLACEHOLDER = "<video>"
"""Where a question shows its video; with none, the video comes after the images, before the text."""


@dataclass
class Video:
    """A clip as the model sees it: frames sampled from it, in time order, their rate and times."""

    frames: list[Image.Image]
    fps: float
    """Sampled frames per second of the clip (Qwen2-VL's temporal positions use it)."""
    times: tuple[float, ...] | None = None
    """Each frame's time in the clip, in seconds (SmolVLM's prompt writes them); None: frame k at
    k / fps. A clip thinned to fewer frames need not be evenly spaced (data/video.py)."""

    def __post_init__(self):
        if self.times is not None and len(self.times) != len(self.frames):
            raise UserError(
                f"a Video's times must give one time per frame: {len(self.times)} for {len(self.frames)} frames"
            )

    def frame_times(self) -> tuple[float, ...]:
        """Each frame's time in seconds: ``times``, else k / fps for the k-th frame."""
        if self.times is not None:
            return self.times
        return tuple(k / self.fps for k in range(len(self.frames)))


Visual = Image.Image | Video
"""What a prompt shows: an image, or a video's sampled frames."""


@dataclass
class VQAExample:
    """One (images, question, answers) triple.

    ``answers`` holds every reference answer (VQA v2 has 10, a plain dataset 1); ``answer`` is the
    single answer used as the SFT target (VQA v2's ``multiple_choice_answer``). The image is
    opened lazily by ``load_image`` so that a data set is never held in memory. ``image_loader``
    is the one image of a single-image example; ``image_loaders`` are the images of one with
    several (then ``image_loader`` is None); ``video_loader`` decodes and samples its video.
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
    image_loaders: tuple[Callable[[], Image.Image], ...] = field(default=(), repr=False, compare=False)
    video_loader: Callable[[], Video] | None = field(default=None, repr=False, compare=False)

    @property
    def num_images(self) -> int:
        """How many images the question shows (a video's frames not counted)."""
        return 1 if self.image_loader is not None else len(self.image_loaders)

    def load_visuals(self) -> list[Visual]:
        """The images in order, then the video; [] for a text-only question. Raises BadExample
        naming the entry that cannot be decoded."""
        loaders = [self.image_loader] if self.image_loader is not None else list(self.image_loaders)
        out: list[Visual] = []
        for i, loader in enumerate(loaders):
            which = "image" if len(loaders) == 1 else f"image {i + 1} of {len(loaders)}"
            out.append(_load(self.id, which, loader))
        if self.video_loader is not None:
            out.append(_load(self.id, "video", self.video_loader))
        return out

    def load_image(self) -> Image.Image:
        """The one image as RGB; raises BadExample when it cannot be decoded or the example has
        no single image (load_visuals takes any number)."""
        if self.image_loader is None:
            raise BadExample(self.id, "no image" if not self.image_loaders else f"{len(self.image_loaders)} images")
        return _load(self.id, "image", self.image_loader)


def _load(example_id: str, which: str, loader: Callable):
    try:
        return loader()
    except BadExample:
        raise
    except Exception as e:  # any decode failure of one image must not stop a run
        raise BadExample(example_id, f"{which} failed to load: {type(e).__name__}: {e}") from e
