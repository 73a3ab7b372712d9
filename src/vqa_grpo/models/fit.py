"""Refuse, before anything is written, questions whose prompt and answer overflow the model's context.

A prompt is its text in the run's template (data/prompts.py) with every image and video frame as
the family's processor lays them out; with the tokens that follow it (a sampled completion, an
evaluation's answer, or SFT's target: the answer and its stop token) it must fit the model's
positions (``max_position_embeddings``, the text model's; a config without one is not checked).
Single-image data is not measured: one image costs every question about the same. For data with
several images or a video, the question of each split with the most images and the one whose clip
samples the most frames (counted without decoding: a frame list's length, a video file's header)
are encoded as sampling encodes them (``FamilyAdapter.encode_prompts``) and measured; no other
question is decoded. One whose visuals fail to load (or that the processor cannot take,
``image_problem``) is passed over for the next widest, as training skips it.

Larger images, or longer text, can still make a later question longer than the ones measured:
:class:`PromptGuard` meets it at run time. Training (training/batches.py) and evaluation
(models/generation.py ``predict_answers``) pass each question with several images or a video
through it once its visuals are decoded; one that does not fit raises BadExample (reason
``past_context``) and is skipped and counted, never trained on or scored (training/skips.py,
evaluation's ``skipped_by_reason``). Each question is encoded once per run: the verdict is kept.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from PIL import Image

from vqa_grpo.config import Config, DataConfig, ModelConfig
from vqa_grpo.data.prompts import prompt_template, user_text
from vqa_grpo.data.report import LoadReport
from vqa_grpo.data.types import BadExample, Video, VQAExample
from vqa_grpo.data.video import VideoLoader
from vqa_grpo.errors import UserError
from vqa_grpo.models.adapters import FamilyAdapter
from vqa_grpo.models.loading import LoadedModel, _resolve


@dataclass(frozen=True)
class After:
    """What follows each prompt of a split: ``tokens`` new ones, set by ``key``; None: the question's
    answer and the stop token (SFT's target)."""

    tokens: int | None
    key: str = ""


@dataclass(frozen=True)
class Split:
    """Examples to measure, what follows their prompts, and ``what`` names them in a message;
    ``limit``: a bound tighter than the model's, and its setting (vLLM's engine length)."""

    what: str
    examples: Sequence[VQAExample]
    after: After
    limit: tuple[int, str] | None = None


def context_length(config) -> int | None:
    """The model's positions: ``max_position_embeddings`` of its config or of its text model's
    (Qwen2-VL keeps it there); None when neither says."""
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    for c in (config, text):
        n = getattr(c, "max_position_embeddings", None)
        if isinstance(n, int) and n > 0:
            return n
    return None


def check_run_fit(lm: LoadedModel, cfg: Config, mode: str, data) -> None:
    """A training run's check: its training split followed by grpo.max_completion_length new tokens
    (GRPO) or the answers (SFT), its evaluation split by eval.max_new_tokens. ``data``: the
    LoadedData (train, eval, report). Under vLLM sampling the training prompts are held to
    grpo.vllm_max_model_len too."""
    where = f"data {cfg.data.path or '(in memory)'}"
    splits = [_training_split(cfg, mode, where, data.train)]
    if len(data.eval):
        eval_where = f"data {cfg.data.eval_path}" if cfg.data.eval_path else where
        splits.append(Split(eval_where, data.eval, After(cfg.eval.max_new_tokens, "eval.max_new_tokens")))
    check_fit(lm.adapter, lm.processor, context_length(lm.model.config), cfg, splits, data.report)


def _training_split(cfg: Config, mode: str, where: str, examples: Sequence[VQAExample]) -> Split:
    """The training questions followed by grpo.max_completion_length new tokens (GRPO) or their
    answers (SFT); under vLLM sampling held to grpo.vllm_max_model_len too."""
    grpo = After(cfg.grpo.max_completion_length, "grpo.max_completion_length")
    vllm = mode == "grpo" and cfg.grpo.generation_backend == "vllm"
    limit = (cfg.grpo.vllm_max_model_len, "grpo.vllm_max_model_len") if vllm else None
    return Split(where, examples, grpo if mode == "grpo" else After(None), limit)


class PromptGuard:
    """A run-time check of each question with its decoded visuals: BadExample (reason
    ``past_context``, skipped and counted) when its prompt and what follows it pass ``bound``.

    A question with at most one image and no video is let through unmeasured (nothing extra
    encoded). Each other question is encoded once per run (per process): its verdict is kept by
    id and text (a rephrased question keeps its id), as the prompt's length is fixed once its
    visuals are (the frames sampled and the images resized the same way every time;
    augmentation, data/perturb.py, keeps every size), so a question drawn again, in a later epoch
    or batch, costs a dictionary look-up.
    """

    def __init__(self, adapter: FamilyAdapter, processor, cfg: Config, after: After, bound: int, name: str, whose: str):
        self.adapter, self.processor, self.data, self.after = adapter, processor, cfg.data, after
        self.bound, self.name, self.whose = bound, name, whose
        self.template = prompt_template(cfg.data, cfg.reward.reasoning)
        self.verdicts: dict[tuple[str, str], BadExample | None] = {}  # (id, question) -> why not; None: fits

    def __call__(self, example: VQAExample, visuals: list) -> None:
        key = (example.id, example.question)
        if key not in self.verdicts:
            if not _several(visuals):
                return
            self.verdicts[key] = self._verdict(example, visuals)
        verdict = self.verdicts[key]
        if verdict is not None:
            raise verdict

    def _verdict(self, example: VQAExample, visuals: list) -> BadExample | None:
        text = user_text(example.question, self.template)
        prompt = int(self.adapter.encode_prompts(self.processor, [visuals], [text]).attention_mask.sum())
        after = self.after
        new = after.tokens if after.tokens is not None else _answer_tokens(self.processor, example)
        if prompt + new <= self.bound:
            return None
        budget = after.key or "the answer and stop token"
        engine = self.name if self.name != "max_position_embeddings" else None
        return BadExample(
            example.id,
            f"prompt of {prompt} tokens ({_shown(visuals)}) + {new} ({budget}) > {self.whose} context {self.bound} "
            f"({self.name}); " + _fix(self.data, visuals, after, engine),
            kind="past_context",
        )


def prompt_guard(lm: LoadedModel, cfg: Config, mode: str, report: LoadReport | None) -> PromptGuard | None:
    """The training questions' run-time check (:class:`PromptGuard`), followed by what follows them
    in ``mode``. None for single-image or text-only data (nothing extra encoded) and for a model
    whose context is not known."""
    split = _training_split(cfg, mode, "", ())
    bound, name, whose = _bound(split, context_length(lm.model.config))
    if report is None or not _measured(report) or bound is None:
        return None
    return PromptGuard(lm.adapter, lm.processor, cfg, split.after, bound, name, whose)


def eval_guard(lm: LoadedModel, cfg: Config) -> PromptGuard | None:
    """The evaluation's run-time check: each question with several images or a video followed by
    eval.max_new_tokens new tokens (None for a model whose context is not known)."""
    bound = context_length(lm.model.config)
    if bound is None:
        return None
    after = After(cfg.eval.max_new_tokens, "eval.max_new_tokens")
    return PromptGuard(lm.adapter, lm.processor, cfg, after, bound, "max_position_embeddings", "the model's")


def _several(visuals: list) -> bool:
    """Whether a question shows more than one image or a video (what the checks measure)."""
    return any(isinstance(v, Video) for v in visuals) or sum(isinstance(v, Image.Image) for v in visuals) > 1


def _bound(split: Split, context: int | None) -> tuple[int | None, str, str]:
    """The positions a split's prompts must fit, the setting that gives them, and whose they are."""
    if split.limit is not None and (context is None or split.limit[0] < context):
        return split.limit[0], split.limit[1], "vLLM's"
    return context, "max_position_embeddings", "the model's"


def check_eval_fit(model: ModelConfig, cfg: Config, examples: Sequence[VQAExample], report, what: str) -> None:
    """An evaluation's check, before the model loads (its processor and config.json only): each
    question followed by eval.max_new_tokens new tokens."""
    if not _measured(report):
        return
    model, _, hf_config, adapter = _resolve(model, warn=False)
    processor = adapter.load_processor(model.name_or_path, model)
    split = Split(what, examples, After(cfg.eval.max_new_tokens, "eval.max_new_tokens"))
    check_fit(adapter, processor, context_length(hf_config), cfg, [split], report)


def check_fit(
    adapter: FamilyAdapter, processor, context: int | None, cfg: Config, splits: list[Split], report: LoadReport
) -> None:
    """Raise UserError naming the first measured question whose prompt and what follows it need more
    than ``context`` positions (or its split's ``limit``), and the settings that shorten it."""
    if not _measured(report):
        return
    template = prompt_template(cfg.data, cfg.reward.reasoning)
    for split in splits:
        bound, name, whose = _bound(split, context)
        if bound is None:
            continue
        for example, prompt, visuals in _widest(adapter, processor, split.examples, template, report):
            after = split.after
            new = after.tokens if after.tokens is not None else _answer_tokens(processor, example)
            if prompt + new <= bound:
                continue
            follows = f"new ones ({after.key})" if after.tokens is not None else "of its answer and stop token"
            raise UserError(
                f"{split.what}: question {example.id} ({_shown(visuals)}) needs {prompt} prompt tokens + {new} "
                f"{follows} = {prompt + new} positions, more than {whose} {bound} ({name}); "
                + _fix(cfg.data, visuals, after, name if name != "max_position_embeddings" else None)
            )


def _measured(report: LoadReport) -> bool:
    return report.max_images > 1 or report.videos > 0


def _widest(
    adapter: FamilyAdapter, processor, examples: Sequence[VQAExample], template: str, report: LoadReport
) -> Iterator[tuple[VQAExample, int, list]]:
    """(example, prompt tokens, visuals) of the question with the most images (ties: the first),
    then of the one with the most frames sampled from its video; one whose visuals fail to load is
    passed over for the next widest. Images are counted from the examples (nothing decoded); a
    clip's frames from its list's length, or for a video file from its header's duration (the
    header of each video file is read, no frame decoded, until one gives data.video_frames)."""
    if report.max_images > 1:
        images = sorted((-e.num_images, i) for i, e in enumerate(examples) if e.num_images > 1)
        yield from _first_measured(adapter, processor, examples, template, [i for _, i in images])
    if report.videos:
        frames = []
        for i, e in enumerate(examples):
            if e.video_loader is not None:
                n, cap = _frames_sampled(e.video_loader)
                frames.append((-n, i))
                if n >= cap:  # no clip samples more: the first to reach the cap is the widest
                    break
        yield from _first_measured(adapter, processor, examples, template, [i for _, i in sorted(frames)])


def _first_measured(adapter: FamilyAdapter, processor, examples, template: str, order: list[int]):
    for i in order:
        measured = _measure(adapter, processor, examples[i], template)
        if measured is not None:
            yield examples[i], *measured
            return


def _frames_sampled(loader) -> tuple[int, float]:
    """The frames a video loader samples (``VideoLoader.frames_sampled``: a list's length, a file's
    header) and the most any can; (0, inf) for a loader that is not known, (0, cap) for a file
    whose header gives no duration (measured only if no other is)."""
    while hasattr(loader, "inner"):  # a processor-checked loader (models/loading.py)
        loader = loader.inner
    if not isinstance(loader, VideoLoader):
        return 0, math.inf
    return loader.frames_sampled() or 0, loader.max_frames


def _measure(adapter: FamilyAdapter, processor, example: VQAExample, template: str) -> tuple[int, list] | None:
    """The prompt's length in tokens and its visuals, as sampling encodes them; None when a visual
    fails to load or the processor cannot take an image (training skips such a question)."""
    try:
        visuals = example.load_visuals()
        shown = [v for kind, v in adapter.prompt_parts("", visuals) if kind == "image"]  # frames too, if as images
        if any(adapter.image_problem(processor, v) for v in shown):
            return None
        batch = adapter.encode_prompts(processor, [visuals], [user_text(example.question, template)])
    except BadExample:
        return None
    return int(batch.attention_mask.sum()), visuals


def _answer_tokens(processor, example: VQAExample) -> int:
    """SFT's target after the prompt: the answer's tokens and the stop token (models/scoring.py)."""
    tokenizer = getattr(processor, "tokenizer", processor)
    return len(tokenizer(example.answer, add_special_tokens=False)["input_ids"]) + 1


def _shown(visuals: list) -> str:
    images = sum(isinstance(v, Image.Image) for v in visuals)
    frames = [len(v.frames) for v in visuals if isinstance(v, Video)]
    parts = [f"{images} image{'s' * (images != 1)}"] if images else []
    parts += [f"a video of {n} frames" for n in frames]
    return " and ".join(parts)


def _fix(data: DataConfig, visuals: list, after: After, engine: str | None = None) -> str:
    """The settings that shorten the prompt (or what follows it), with their values; ``engine``:
    the setting of a bound that can be raised (vLLM's)."""
    pixels = data.max_image_pixels
    settings = [f"data.video_frames ({data.video_frames} now)"] if any(isinstance(v, Video) for v in visuals) else []
    settings.append(f"data.max_image_pixels ({pixels} now{': full size' if pixels <= 0 else ''})")
    if after.tokens is not None:
        settings.append(f"{after.key} ({after.tokens} now)")
    text = "lower " + ", ".join(settings[:-1]) + " or " + settings[-1]
    if sum(isinstance(v, Image.Image) for v in visuals) > 1:
        text += "; or give the question fewer images"
    return text + (f"; or raise {engine}" if engine else "")
