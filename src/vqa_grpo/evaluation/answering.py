"""The one path of evaluation: a model answers examples, each process its share, and every metric
scores each answer (``vqa-grpo evaluate``, its rephrased and perturbed passes, and the evaluations
during training)."""

from __future__ import annotations

import dataclasses
from collections import Counter
from dataclasses import dataclass

import numpy as np

from vqa_grpo.config import Config
from vqa_grpo.data.prompts import prompt_template
from vqa_grpo.data.types import VQAExample
from vqa_grpo.distributed import DDP, Dist
from vqa_grpo.evaluation.sharded import predict_sharded
from vqa_grpo.models.fit import eval_guard
from vqa_grpo.models.loading import LoadedModel, check_images
from vqa_grpo.rewards import BENCHMARK_METRICS, clean_answer, score_predictions
from vqa_grpo.rewards.benchmark import check_metrics_fit, requested_metrics
from vqa_grpo.rewards.user import user_metrics


@dataclass
class Answered:
    """A model's answers to some examples, and every metric of each (the one path of evaluation:
    ``vqa-grpo evaluate`` and the evaluations during training)."""

    examples: list[
        VQAExample
    ]  # the examples answered (one whose visuals failed to load, or past the context, left out)
    raw: list[str]  # the completions
    predictions: list[str]  # the cleaned answers
    scores: dict[str, np.ndarray]  # metric -> [N] (NaN where a user metric returned None)
    skipped: int
    positions: list[int] = dataclasses.field(default_factory=list)  # each answered one's index in the input
    skipped_by_reason: dict[str, int] = dataclasses.field(default_factory=dict)  # past_context, corrupt_image, ...

    def means(self) -> dict[str, float]:
        """Each metric's mean (0 when no example was scored)."""
        return {k: float(np.nanmean(v)) if (~np.isnan(v)).any() else 0.0 for k, v in self.scores.items()}


def answer_and_score(
    lm: LoadedModel, examples: list[VQAExample], cfg: Config, device, dist: Dist | None = None, progress: bool = False
) -> Answered:
    """Answer ``examples`` (greedy unless eval.do_sample), each process its share, and score them."""
    examples = check_images(examples, lm)  # an image the processor cannot take: skipped and counted
    wanted = requested_metrics(cfg.eval.metrics, cfg.train.eval_metric)  # anls, relaxed_accuracy, ...
    check_metrics_fit(wanted, [e.answers for e in examples], "the evaluation data")  # before generating
    template = prompt_template(cfg.data, cfg.reward.reasoning)
    guard = eval_guard(lm, cfg)  # a question past the model's context: skipped, counted as past_context
    texts, why = predict_sharded(
        dist or DDP(), lm, examples, cfg.eval, device, progress=progress, template=template, guard=guard
    )
    kept = [(e, t) for e, t in zip(examples, texts) if t is not None]
    positions = [i for i, t in enumerate(texts) if t is not None]
    answered = [e for e, _ in kept]
    raw = [t for _, t in kept]
    preds = [clean_answer(t, reasoning=cfg.reward.reasoning) for t in raw]
    scores = score_predictions(
        preds,
        [e.answers for e in answered],
        [e.answer_type for e in answered],
        metrics=wanted,
        vqa_convention=cfg.eval.vqa_convention or "official",  # None: a config the benchmark did not resolve
        benchmark=cfg.data.benchmark,
    )
    scores.update(user_metrics([m for m in cfg.eval.metrics if m not in BENCHMARK_METRICS], raw, answered))
    by_reason = dict(Counter(w for w in why if w is not None).most_common())
    return Answered(answered, raw, preds, scores, len(texts) - len(kept), positions, by_reason)
