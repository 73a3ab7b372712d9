"""``vqa-grpo data inspect PATH``: what the loader would keep and skip, before any training.

PATH may be hf:NAME (a Hub dataset, see ``hub.py``); data.split, data.config_name and the other
data.* keys are given as overrides, e.g. ``vqa-grpo data inspect hf:lmms-lab/VQAv2 data.split=validation``.
"""

from __future__ import annotations

import json

from vqa_grpo.config_load import load_config
from vqa_grpo.data.benchmarks import resolve
from vqa_grpo.data.hub import describe
from vqa_grpo.data.loader import LoadReport, read_examples
from vqa_grpo.data.prompts import prompt_template
from vqa_grpo.data.sources import open_source
from vqa_grpo.data.types import BadExample, VQAExample
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


def inspect_command(path: str, fmt: str | None, image_root: str | None, as_json: bool, overrides: list[str]) -> int:
    """Print rows read, kept, skips by reason, counts by answer type and the first examples.

    For an hf: dataset it first prints what was mapped: the preset, config, split and the column
    of each field; then the benchmark (data.benchmark, or the preset's) with the reward, best/'s
    metric, answer length and prompt that training and evaluation will use. With ``as_json``
    prints one JSON object (rows, kept, skipped, answer_types, "benchmark" with those uses, and
    for an hf: dataset "source" with that mapping). The report is printed even when too many rows
    were skipped, or when the benchmark's metric cannot score the data (multiple choice without
    choices); those cases then raise a one-line UserError, as training would refuse the data.
    """
    full = load_config(None, list(overrides))
    cfg = full.data
    cfg.path = path
    if fmt:
        cfg.format = fmt
    if image_root:
        cfg.image_root = image_root
    source = open_source(path, cfg)
    examples, report = read_examples(source, cfg)
    uses = benchmark_uses(full)
    if as_json:
        out = report.to_dict()
        if source.about:
            out["source"] = source.about  # hf: datasets: the preset, config, split and column mapping
        out["benchmark"] = uses
        print(json.dumps(out))
    else:
        head = "\n".join(describe(source.about)) + "\n" if source.about else ""
        print(head + "\n".join(render_uses(uses)) + "\n\n" + render(examples, report))
    complaint = report.too_many_skipped(cfg.max_skip_fraction)
    if complaint:
        raise UserError(complaint)
    from vqa_grpo.rewards.benchmark import check_metrics_fit  # as training would refuse the metric

    check_metrics_fit([*uses["reward"], uses["eval_metric"]], [e.answers for e in examples], path)
    return 0


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
        lines.append(f"      image: {_describe_image(ex)}")
    return "\n".join(lines)


def _describe_image(ex: VQAExample) -> str:
    where = ex.image_loader.describe() if hasattr(ex.image_loader, "describe") else "custom loader"
    try:
        img = ex.load_image()
    except BadExample as e:
        return f"{where} (fails to decode: {e.reason})"
    return f"{where} ({img.width}x{img.height} after loading)"
