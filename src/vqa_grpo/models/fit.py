"""Refuse, before anything is written, questions whose prompt and answer overflow the model's context.

A prompt is its text in the run's template (data/prompts.py) with every image and video frame as
the family's processor lays them out; with the tokens that follow it (a sampled completion, an
evaluation's answer, or SFT's target: the answer and its stop token) it must fit the model's
positions (``max_position_embeddings``, the text model's; a config without one is not checked).
Single-image data is not measured: one image costs every question about the same. For data with
several images or a video, the first question of each split with the most images, and the first
with a video, are encoded as sampling encodes them (``FamilyAdapter.encode_prompts``) and measured:
a handful of questions, no other one decoded. One whose visuals fail to load (or that the processor
cannot take, ``image_problem``) is passed over for the next, as training skips it.

That check fails fast on the usual case; a later question with a longer clip (or larger images)
is met at run time instead: :func:`prompt_guard` encodes each training question of such data
once more when its batch is drawn and raises BadExample (reason ``past_context``) for one that
does not fit, which training skips and counts (training/batches.py, training/skips.py).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

from PIL import Image

from vqa_grpo.config import Config, DataConfig, ModelConfig
from vqa_grpo.data.prompts import prompt_template, user_text
from vqa_grpo.data.report import LoadReport
from vqa_grpo.data.types import BadExample, Video, VQAExample
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


def prompt_guard(
    lm: LoadedModel, cfg: Config, mode: str, report: LoadReport | None
) -> Callable[[VQAExample, list], None] | None:
    """A run-time check of each training question with its decoded visuals: BadExample (skipped
    and counted) when its prompt and what follows it pass the context. None for single-image or
    text-only data (nothing extra encoded) and for a model whose context is not known."""
    split = _training_split(cfg, mode, "", ())
    bound, name, whose = _bound(split, context_length(lm.model.config))
    if report is None or not _measured(report) or bound is None:
        return None
    template = prompt_template(cfg.data, cfg.reward.reasoning)

    def guard(example: VQAExample, visuals: list) -> None:
        batch = lm.adapter.encode_prompts(lm.processor, [visuals], [user_text(example.question, template)])
        prompt, after = int(batch.attention_mask.sum()), split.after
        new = after.tokens if after.tokens is not None else _answer_tokens(lm.processor, example)
        if prompt + new > bound:
            budget = after.key or "the answer and stop token"
            raise BadExample(
                example.id,
                f"prompt of {prompt} tokens ({_shown(visuals)}) + {new} ({budget}) > {whose} context {bound} "
                f"({name}); " + _fix(cfg.data, visuals, after, name if name != "max_position_embeddings" else None),
                kind="past_context",
            )

    return guard


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
    """(example, prompt tokens, visuals) of each question with more images than any measured before
    it, and of the first with a video; stops once it has one with ``report.max_images`` images and
    one with a video (when the data has them)."""
    most, seen_video = 1, report.videos == 0
    for example in examples:
        images, video = example.num_images, example.video_loader is not None
        if images <= most and (seen_video or not video):
            continue
        measured = _measure(adapter, processor, example, template)
        if measured is None:
            continue
        most, seen_video = max(most, images), seen_video or video
        yield example, *measured
        if most >= report.max_images and seen_video:
            return


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
