"""``vqa-grpo evaluate``: batched generation on a data set, then every metric overall, per answer
type and per question type, each with a 95% bootstrap confidence interval.

metrics.json keys (fixed): ``n``, ``vqa_accuracy`` (computed as ``vqa_convention`` names:
official or lmms_eval), ``composite`` and its parts (``composite/bleu1``, ...), the benchmark
metrics asked for (``anls``, ``relaxed_accuracy``, ``exact_match``, ``multiple_choice``: in
eval.metrics or as train.eval_metric), ``per_answer_type`` and ``per_question_type`` (type ->
{n, vqa_accuracy, ..., ci95}), ``ci95`` (metric -> [low, high]), ``vqa_convention``,
``skipped`` (examples not answered: one of their visuals failed to load, or ``past_context``, a
prompt with its visuals past the model's context, models/fit.py), ``skipped_by_reason`` (those
by reason), ``skipped_at_load`` (rows the data's
load skipped, by reason: ``vqa-grpo data inspect`` lists them), ``primary_metric``
(the headline metric's key: train.eval_metric, else the benchmark's), and ``answerability`` (the
"unanswerable" decision's precision, recall, F1 and VizWiz's figures, rewards/abstention.py) for
VizWiz or data with unanswerable questions. With eval.rephrase (``--rephrase``): ``rephrase``, each
question reworded (evaluation/rephrase_check.py), and predictions_rephrased.jsonl. With
eval.perturb (``--perturb``): ``robustness``, the questions on perturbed images
(evaluation/robustness.py), and predictions_perturbed.jsonl.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from vqa_grpo.config import Config
from vqa_grpo.data.benchmarks import resolve as resolve_benchmark
from vqa_grpo.data.types import VQAExample
from vqa_grpo.distributed import make_dist
from vqa_grpo.errors import UserError
from vqa_grpo.evaluation.answering import answer_and_score
from vqa_grpo.evaluation.rephrase_check import FILE as REPHRASED_FILE
from vqa_grpo.evaluation.rephrase_check import check_rephrasings
from vqa_grpo.evaluation.robustness import FILE as PERTURBED_FILE
from vqa_grpo.evaluation.robustness import check_robustness
from vqa_grpo.models.loading import load_model, resolve_device
from vqa_grpo.paths import check_folder
from vqa_grpo.rewards import BENCHMARK_METRICS
from vqa_grpo.rewards.abstention import answerability, is_unanswerable
from vqa_grpo.rewards.benchmark import check_metrics_fit, requested_metrics


def bootstrap_ci(values: np.ndarray, samples: int, seed: int = 0) -> list[float]:
    """Percentile 95% interval of the mean over ``samples`` resamples (seeded)."""
    values = values[~np.isnan(values)]  # a user metric's None: not scored
    if len(values) == 0:
        return [0.0, 0.0]
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(values), size=(samples, len(values)))
    means = values[idx].mean(axis=1)
    return [float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))]


def _mean(v: np.ndarray) -> float:
    v = v[~np.isnan(v)]  # a user metric's None: not scored
    return float(v.mean()) if len(v) else 0.0


def by_group(scores: dict[str, np.ndarray], labels: list[str], samples: int = 1000) -> dict[str, dict]:
    """{label: {"n", metric: mean, ..., "ci95": {metric: [low, high]}}, ...} with the labels sorted:
    the means of the rows that carry each label; the intervals are those of VQA accuracy and the
    benchmark metrics."""
    groups: dict[str, list[int]] = {}
    for i, label in enumerate(labels):
        groups.setdefault(label, []).append(i)
    shown = ["vqa_accuracy", *(k for k in scores if k in BENCHMARK_METRICS)]
    return {
        name: {
            "n": len(idx),
            **{k: _mean(v[idx]) for k, v in scores.items()},
            "ci95": {k: bootstrap_ci(scores[k][idx], samples) for k in shown},
        }
        for name, idx in sorted(groups.items())
    }


def summarise(scores: dict[str, np.ndarray], examples: list[VQAExample], samples: int = 1000) -> dict:
    """Means overall, per answer type and per question type (``by_group``), with bootstrap
    intervals overall for every metric."""
    return {
        "n": len(examples),
        **{k: _mean(v) for k, v in scores.items()},
        "per_answer_type": by_group(scores, [e.answer_type for e in examples], samples),
        "per_question_type": by_group(scores, [e.question_type for e in examples], samples),
        "ci95": {k: bootstrap_ci(v, samples) for k, v in scores.items()},
    }


EVAL_FILES = ("predictions.jsonl", "metrics.json")
"""The files every evaluation writes to its output folder, in this order. Before them it writes
predictions_rephrased.jsonl (eval.rephrase) and then predictions_perturbed.jsonl (eval.perturb),
and removes an earlier evaluation's copy of either when its pass is off."""


def check_out_dir(out_dir: str | Path, overwrite: bool) -> None:
    """Refuse, before the model loads, an output folder that is a file or below one, and (unless
    ``overwrite``) one that holds an earlier evaluation, which would be replaced without a word."""
    check_folder(out_dir, "--out")
    held = [name for name in EVAL_FILES if (Path(out_dir) / name).exists()]
    if held and not overwrite:
        raise UserError(
            f"--out {out_dir} holds an earlier evaluation ({', '.join(held)}); pass --overwrite "
            "(overwrite=True in Python) to replace it, or choose another folder"
        )


def evaluate(
    model_dir: str,
    examples: list[VQAExample],
    cfg: Config,
    out_dir: str | Path | None,
    skipped_at_load: dict[str, int] | None = None,
) -> dict:
    """Generate answers for ``examples`` with the model in ``model_dir``; write and return metrics.
    ``skipped_at_load``: the rows the data's load skipped, by reason (metrics.json records them
    beside ``skipped``, the examples not answered: a visual that failed to load, or a prompt past
    the model's context, ``skipped_by_reason``).

    Under several processes (``accelerate launch``) each answers its share of the questions and
    rank 0 writes the outputs; every process returns the same metrics. An earlier evaluation in
    ``out_dir`` is replaced (``check_out_dir`` is where the command refuses that).
    """
    cfg = resolve_benchmark(cfg)  # eval.max_new_tokens and the headline metric left to data.benchmark
    wanted = requested_metrics(cfg.eval.metrics, cfg.train.eval_metric)
    check_metrics_fit(wanted, [e.answers for e in examples], "the evaluation data")  # before the model loads
    if out_dir is not None:
        check_out_dir(out_dir, overwrite=True)
    dist = make_dist(cfg.train.device, cfg.train.collective_timeout)
    device = dist.device(resolve_device(cfg.train.device))
    if cfg.train.cpu_threads > 0:
        torch.set_num_threads(cfg.train.cpu_threads)
    dist.check_config(cfg)
    lm = load_model(dataclasses.replace(cfg.model, name_or_path=model_dir), device, trainable=False)
    dist.shard(lm.model, frozen=True)  # FSDP, ZeRO-3: each process keeps its shard of the weights
    lm.model.eval()
    got = answer_and_score(lm, examples, cfg, device, dist, progress=cfg.train.progress and dist.is_main)
    metrics = summarise(got.scores, got.examples, cfg.eval.bootstrap_samples)
    metrics["skipped"] = got.skipped
    metrics["skipped_by_reason"] = got.skipped_by_reason
    if got.skipped and dist.is_main:  # on stderr, as a training run tells its skips (training/skips.py)
        reasons = ", ".join(f"{reason} {n}" for reason, n in got.skipped_by_reason.items())
        tqdm.write(
            f"evaluate: {got.skipped} of {len(examples)} questions skipped when answered ({reasons}); "
            f"not scored, {len(got.examples)} scored",
            file=sys.stderr,
        )
    metrics["skipped_at_load"] = {reason: n for reason, n in (skipped_at_load or {}).items() if n}
    metrics["primary_metric"] = cfg.train.eval_metric  # the headline: the benchmark's metric unless set
    metrics["vqa_convention"] = cfg.eval.vqa_convention  # how vqa_accuracy was computed
    if cfg.data.benchmark == "vizwiz" or any(is_unanswerable(e.answers) for e in got.examples):
        metrics["answerability"] = answerability(got.predictions, [e.answers for e in got.examples])
    rephrased = None
    if cfg.eval.rephrase:  # the same questions in other words (evaluation/rephrase_check.py)
        metrics["rephrase"], rephrased = check_rephrasings(lm, got, cfg, device, dist)
    perturbed = None
    if cfg.eval.perturb:  # the same questions on perturbed images (evaluation/robustness.py)
        metrics["robustness"], perturbed = check_robustness(lm, got, cfg, device, dist)
    if out_dir is not None and dist.is_main:
        write_rows(Path(out_dir), REPHRASED_FILE, rephrased)
        write_rows(Path(out_dir), PERTURBED_FILE, perturbed)
        write_outputs(Path(out_dir), got.examples, got.raw, got.predictions, got.scores, metrics)
    dist.barrier()
    return metrics


def write_rows(out: Path, name: str, rows: list[dict] | None) -> None:
    """``out/name`` as JSONL (written beside, then moved over an earlier one); None removes an
    earlier evaluation's, so that the folder holds one evaluation's files only."""
    path = out / name
    if rows is None:
        path.unlink(missing_ok=True)
        return
    out.mkdir(parents=True, exist_ok=True)
    with (out / f"{name}.tmp").open("w") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
    os.replace(out / f"{name}.tmp", path)


def write_outputs(out: Path, examples, raw, preds, scores, metrics) -> None:
    """predictions.jsonl and metrics.json, each written beside and then moved over any earlier one."""
    out.mkdir(parents=True, exist_ok=True)
    with (out / "predictions.jsonl.tmp").open("w") as f:
        for i, e in enumerate(examples):
            row = {
                "id": e.id,
                "question": e.question,
                "answers": e.answers,
                "answer_type": e.answer_type,
                "question_type": e.question_type,
                "raw": raw[i],
                "prediction": preds[i],
                **{k: None if np.isnan(v[i]) else float(v[i]) for k, v in scores.items()},
            }
            f.write(json.dumps(row) + "\n")
    (out / "metrics.json.tmp").write_text(json.dumps(metrics, indent=2))
    for name in EVAL_FILES:
        os.replace(out / f"{name}.tmp", out / name)


def format_headline(metrics: dict) -> str:
    """One line under the table: the headline metric (``primary_metric``) with its 95% interval,
    and the convention its VQA accuracy was computed by."""
    name = metrics.get("primary_metric") or "vqa_accuracy"
    low, high = metrics.get("ci95", {}).get(name, [0.0, 0.0])
    return (
        f"primary_metric {name} {metrics.get(name, 0.0):.4f} (95% CI {low:.4f}, {high:.4f}); "
        f"vqa_accuracy as {metrics.get('vqa_convention', 'official')} computes it (eval.vqa_convention)"
    )


def format_table(metrics: dict, keys: tuple[str, ...] | None = None) -> str:
    """The overall and per-answer-type metrics as a plain-text table; ``keys`` default to
    vqa_accuracy, the composite and the benchmark metrics computed."""
    if keys is None:
        keys = ("vqa_accuracy", "composite", *(k for k in BENCHMARK_METRICS if k in metrics))
    rows = [("overall", metrics)] + list(metrics.get("per_answer_type", {}).items())
    head = f"{'subset':<12} {'n':>6} " + " ".join(f"{k:>13}" for k in keys)
    lines = [head, "-" * len(head)]
    for name, m in rows:
        lines.append(f"{name:<12} {m['n']:>6} " + " ".join(f"{m.get(k, 0.0):>13.4f}" for k in keys))
    a = metrics.get("answerability")
    if a:
        lines.append(
            f"unanswerable {a['unanswerable']} of {a['n']}, abstained {a['abstained']}: precision "
            f"{a['precision']:.4f} recall {a['recall']:.4f} F1 {a['f1']:.4f}, VizWiz average precision "
            f"{a['vizwiz_average_precision']:.4f}"
        )
    return "\n".join(lines)
