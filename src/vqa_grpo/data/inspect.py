"""``vqa-grpo data inspect PATH``: what the loader would keep and skip, before any training.

PATH may be hf:NAME (a Hub dataset, see ``hub.py``); data.split, data.config_name and the other
data.* keys are given as overrides, e.g. ``vqa-grpo data inspect hf:lmms-lab/VQAv2 data.split=validation``.
"""

from __future__ import annotations

from dataclasses import dataclass

from vqa_grpo.config import Config
from vqa_grpo.data.benchmarks import resolve
from vqa_grpo.data.hub import describe
from vqa_grpo.data.loader import LoadReport, read_examples
from vqa_grpo.data.prompts import prompt_template
from vqa_grpo.data.sources import open_source
from vqa_grpo.data.types import VQAExample
from vqa_grpo.errors import UserError


def benchmark_uses(cfg, path: str | None = None) -> dict:
    """The benchmark, the metric, the prompt and the answer length that training and evaluation
    will use for this data (data/benchmarks.py resolve)."""
    resolved = resolve(cfg, path)
    return {
        "benchmark": resolved.data.benchmark,
        "reward": resolved.reward.components,
        "eval_metric": resolved.train.eval_metric,
        "prompt": prompt_template(resolved.data, resolved.reward.reasoning),
        "max_new_tokens": resolved.eval.max_new_tokens,
    }


NUM_SHOWN = 5


@dataclass
class Inspection:
    """What ``inspect_data`` found: the examples kept, the load's report, the Hub mapping of an hf:
    dataset (``about``, else None) and ``benchmark_uses``."""

    examples: list[VQAExample]
    report: LoadReport
    about: dict | None
    uses: dict
    max_skip_fraction: float

    def to_dict(self) -> dict:
        """rows, kept, skipped, answer_types, "benchmark" (the uses) and, for an hf: dataset,
        "source" (the preset, config, split and column mapping): what ``--json`` prints."""
        out = self.report.to_dict()
        if self.about:
            out["source"] = self.about
        out["benchmark"] = self.uses
        return out

    def text(self) -> str:
        """For an hf: dataset the mapping first; then the benchmark's lines, the load's table and
        the first examples."""
        head = "\n".join(describe(self.about)) + "\n" if self.about else ""
        return head + "\n".join(render_uses(self.uses)) + "\n\n" + render(self.examples, self.report)

    def check_skips(self) -> None:
        """Raise UserError (one line) when more rows were skipped than data.max_skip_fraction
        allows, as training would."""
        complaint = self.report.too_many_skipped(self.max_skip_fraction)
        if complaint:
            raise UserError(complaint)


def inspect_data(path: str, cfg: Config, fmt: str | None = None, image_root: str | None = None) -> Inspection:
    """Load ``path`` as training would (``cfg.data``, with ``fmt`` and ``image_root`` when given):
    rows read, kept, skips by reason, counts by answer type and the examples; then the benchmark
    (data.benchmark, or the preset's) with the reward, best/'s metric, answer length and prompt
    that training and evaluation will use. Too many skips are refused by ``check_skips``, apart:
    ``vqa-grpo data inspect`` shows the report first, then refuses as training would."""
    data = cfg.data
    data.path = path
    if fmt:
        data.format = fmt
    if image_root:
        data.image_root = image_root
    source = open_source(path, data)
    examples, report = read_examples(source, data)
    return Inspection(examples, report, source.about or None, benchmark_uses(cfg), data.max_skip_fraction)


def render_uses(uses: dict) -> list[str]:
    """The benchmark's lines: what training and evaluation will use on this data."""
    return [
        f"benchmark: {uses['benchmark'] or 'none'}  reward {', '.join(uses['reward'])}  best/ by "
        f"{uses['eval_metric']}  max new tokens {uses['max_new_tokens']}",
        f"prompt: {uses['prompt']!r}",
    ]


def render(examples: list[VQAExample], report: LoadReport) -> str:
    lines = [report.table(), "", f"first {min(NUM_SHOWN, len(examples))} of {len(examples)} examples:"]
    for ex in examples[:NUM_SHOWN]:
        lines.append(f"  [{ex.id}] {ex.question}")
        lines.append(f"      answer: {ex.answer}   answers: {' | '.join(ex.answers[:10])}")
        lines.append(f"      answer type: {ex.answer_type}   question type: {ex.question_type}")
        lines += _describe_visuals(ex)
    return "\n".join(lines)


def _describe_visuals(ex: VQAExample) -> list[str]:
    """One line for the image ("image: ..."), or "images: N" and one line each, then the video's
    line ("video: ..., N frames at F/s"); "no image (text-only)" for neither."""
    loaders = [ex.image_loader] if ex.image_loader is not None else list(ex.image_loaders)
    lines = [f"      images: {len(loaders)}"] if len(loaders) > 1 else []
    for i, loader in enumerate(loaders):
        label = "image" if len(loaders) == 1 else f"  {i + 1}"
        lines.append(f"      {label}: {_describe(loader, _size)}")
    if ex.video_loader is not None:
        lines.append(f"      video: {_describe(ex.video_loader, _frames)}")
    return lines or ["      no image (text-only)"]


def _describe(loader, shown) -> str:
    where = loader.describe() if hasattr(loader, "describe") else "custom loader"
    try:
        value = loader()
    except Exception as e:  # as VQAExample.load_visuals turns it into a BadExample
        return f"{where} (fails to decode: {type(e).__name__}: {e})"
    return f"{where} ({shown(value)})"


def _size(img) -> str:
    return f"{img.width}x{img.height} after loading"


def _frames(video) -> str:
    size = f"{video.frames[0].width}x{video.frames[0].height}" if video.frames else "no frame"
    n = len(video.frames)
    return f"{n} frame{'s' * (n != 1)} of {size} sampled at {video.fps:g}/s"
