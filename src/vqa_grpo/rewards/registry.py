"""The rewards the trainer combines and the metrics evaluation reports, batched: lists in, arrays out.

Training: ``compute_rewards`` takes the *raw decoded completions*; the format reward looks at them
as they are, every other reward scores ``clean_answer(completion, reasoning=...)``. Evaluation:
``score_predictions`` scores predictions with the same cleaning, so the reward and the metric can
never disagree about what the model answered.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from vqa_grpo.rewards.abstention import abstention_batch
from vqa_grpo.rewards.answer_type import answer_type_batch
from vqa_grpo.rewards.benchmark import BENCHMARK_METRICS
from vqa_grpo.rewards.composite import SEED_REPORT_WEIGHTS, composite_batch
from vqa_grpo.rewards.format import clean_answer, format_batch
from vqa_grpo.rewards.inputs import as_references, as_text, warn_bad
from vqa_grpo.rewards.semantic import semantic_available, semantic_batch
from vqa_grpo.rewards.user import UserReward, example_columns, resolve
from vqa_grpo.rewards.vqa_accuracy import vqa_accuracy_batch

if TYPE_CHECKING:  # the type only: the rewards load without the config
    from vqa_grpo.config import RewardConfig

REWARD_COMPONENTS: tuple[str, ...] = (
    "composite",
    "vqa_accuracy",
    "answer_type",
    "format",
    "semantic",
    "abstention",
    *BENCHMARK_METRICS,
)

__all__ = [
    "REWARD_COMPONENTS",
    "RewardResult",
    "clean_answer",
    "compute_rewards",
    "reward_weights",
    "score_predictions",
]


@dataclass
class RewardResult:
    """Rewards of N completions.

    total: [N] float64, sum over cfg.components of weight * component score (weights 1.0 each
        when cfg.weights is None; they need not sum to 1).
    parts: each component's score [N] under its name; with "composite", also its five parts as
        "composite/bleu1", "composite/exact_match", "composite/substring", "composite/jaccard",
        "composite/extractable".
    bad_inputs: how many inputs were bad (None, not a string, empty, over-long), also logged.
    """

    total: np.ndarray
    parts: dict[str, np.ndarray] = field(default_factory=dict)
    bad_inputs: int = 0
    seconds: dict[str, float] = field(default_factory=dict)
    """Each user function's wall time for this batch (reward_seconds/<name> in the logs)."""


def _prepare(
    predictions: Sequence[Any],
    answers: Sequence[Any],
    answer_types: Sequence[Any],
    where: str,
    reasoning: bool,
    warn: bool = True,
):
    """Cleaned prediction strings, reference lists, type strings, and the number of bad inputs
    (logged in one warning when ``warn``)."""
    if not (len(predictions) == len(answers) == len(answer_types)):
        raise ValueError(
            f"{where}: {len(predictions)} predictions, {len(answers)} answer lists and "
            f"{len(answer_types)} answer types; give one of each per example"
        )
    bad: Counter = Counter()
    preds = [clean_answer(as_text(p, "prediction", bad), reasoning=reasoning) for p in predictions]
    refs = [as_references(a, bad) for a in answers]
    types = [t if isinstance(t, str) else "" for t in answer_types]  # unknown types are inferred
    return preds, refs, types, warn_bad(where, bad) if warn else sum(bad.values())


def reward_components(cfg: RewardConfig) -> list[str]:
    """``cfg.components``; None (a RewardConfig's default, which a run first resolves to its
    benchmark's metric: data/benchmarks.py) is the composite alone."""
    return ["composite"] if cfg.components is None else list(cfg.components)


def reward_weights(cfg: RewardConfig) -> list[float]:
    """Each of ``cfg.components``' weight: ``cfg.weights``, or 1.0 each when it is None (TRL's default)."""
    return [1.0] * len(reward_components(cfg)) if cfg.weights is None else [float(w) for w in cfg.weights]


SIGNED_COMPONENTS = ("abstention",)
"""Reward components scored in [-1, 1] (rewards/abstention.py); every other one, a user's function
included, is taken to score in [0, 1]."""


def reward_range(cfg: RewardConfig) -> tuple[float, float]:
    """The least and greatest total reward of ``cfg``: the sum over components of
    weight x the component's range. Dynamic sampling's filter bounds and prioritised sampling's
    difficulty both scale a mean reward by it: (mean - least) / (greatest - least)."""
    components, weights = reward_components(cfg), reward_weights(cfg)
    low = -sum(w for c, w in zip(components, weights) if c in SIGNED_COMPONENTS)
    return float(low), float(sum(weights))


def compute_rewards(
    predictions: list[str],
    answers: list[list[str]],
    answer_types: list[str],
    cfg: RewardConfig,
    *,
    vqa_convention: str = "official",
    benchmark: str | None = None,
    functions: dict | None = None,
    examples: Sequence[Any] | None = None,
    warn_bad_inputs: bool = True,
) -> RewardResult:
    """Each of ``cfg.components`` for every completion, and their weighted sum by ``cfg.weights``
    (1.0 each when None): total = sum_i weight_i * score_i, a None score adding nothing.

    predictions: raw decoded completions [N]; answers: reference answers per example [N][k];
    answer_types: "yes/no", "number", "other", or anything else to infer it from the answers.
    ``cfg``: the reward settings, each with the one default a run has too (``RewardConfig()``
    scores as a run that sets no reward key: the composite's guard on). vqa_accuracy as a reward always
    normalises both sides: the official convention's lenient mode, or lmms-eval's accuracy with
    ``vqa_convention="lmms_eval"`` (a run passes eval.vqa_convention, so that the reward follows
    the metric, and data.benchmark as ``benchmark``: lmms-eval's form for its task). anls,
    relaxed_accuracy, exact_match, multiple_choice: the benchmarks' metrics (rewards/benchmark.py).
    Bad inputs (None, empty, over-long) are counted in ``bad_inputs`` and, when
    ``warn_bad_inputs``, logged in one warning (a rollout logs the count instead: an empty
    completion is an ordinary policy output there).

    The user's functions (rewards/user.py): a component that is an import path
    (``module:function``) or a key of ``functions`` (name -> callable or UserReward) is called
    with the raw completions and ``examples``' columns (one VQAExample per completion). It logs
    under its short name; a None it returns adds nothing to that completion's total (NaN in
    ``parts``, as in TRL).
    """
    components, weights = reward_components(cfg), reward_weights(cfg)
    functions = functions or {}
    ready = {k: v for k, v in functions.items() if isinstance(v, UserReward)}  # resolved once per run (loop.run)
    given = {k: v for k, v in functions.items() if not isinstance(v, UserReward)}
    user = {**resolve([c for c in components if c not in ready], given), **ready}
    if user and (examples is None or len(examples) != len(predictions)):
        raise ValueError("compute_rewards: user reward functions need one example per prediction (examples=...)")
    unknown = [c for c in components if c not in REWARD_COMPONENTS and c not in user]
    if unknown or len(components) != len(weights):
        raise ValueError(
            f"reward components {components} with weights {weights}: choose from {REWARD_COMPONENTS}, one weight each"
        )
    reasoning = cfg.reasoning
    preds, refs, types, n_bad = _prepare(
        predictions, answers, answer_types, "compute_rewards", reasoning, warn_bad_inputs
    )

    parts: dict[str, np.ndarray] = {}
    seconds: dict[str, float] = {}
    columns = example_columns(examples) if user else None  # once for all the user functions
    for name in components:
        if name in user:
            fn = user[name]
            before = fn.seconds
            parts[fn.name] = fn(predictions, examples, columns)
            seconds[fn.name] = fn.seconds - before
        elif name == "composite":
            comp = composite_batch(preds, refs, cfg.composite_weights, cfg.composite_guard)
            parts["composite"] = comp.pop("total")
            parts.update({f"composite/{k}": v for k, v in comp.items()})
        elif name == "vqa_accuracy":  # the official convention's lenient form: always normalise
            parts[name] = vqa_accuracy_batch(
                preds, refs, official=False, convention=vqa_convention, benchmark=benchmark
            )
        elif name in BENCHMARK_METRICS:
            parts[name] = BENCHMARK_METRICS[name](preds, refs)
        elif name == "answer_type":
            parts[name] = answer_type_batch(  # its "other" answers are scored by the composite
                preds, refs, types, cfg.composite_weights, cfg.number_partial_credit, cfg.composite_guard
            )
        elif name == "format":
            parts[name] = format_batch(predictions, reasoning=reasoning)
        elif name == "semantic":
            parts[name] = semantic_batch(preds, refs)
        elif name == "abstention":
            parts[name] = abstention_batch(preds, refs)
    total = np.zeros(len(preds), dtype=np.float64)
    for name, weight in zip(components, weights):
        part = parts[user[name].name if name in user else name]
        total += float(weight) * np.nan_to_num(part, nan=0.0)  # None (NaN) adds nothing
    return RewardResult(total=total, parts=parts, bad_inputs=n_bad, seconds=seconds)


def score_predictions(
    predictions: list[str],
    answers: list[list[str]],
    answer_types: list[str],
    *,
    reasoning: bool = False,
    metrics: Sequence[str] = (),
    vqa_convention: str = "official",
    benchmark: str | None = None,
) -> dict[str, np.ndarray]:
    """Per-example evaluation metrics, each a float64 array [N] in [0, 1].

    Keys: "vqa_accuracy" (``vqa_convention``'s metric, strict; ``benchmark`` picks lmms-eval's task),
    "composite" (seed weights) and its parts "composite/bleu1", "composite/exact_match",
    "composite/substring", "composite/jaccard", "composite/extractable", "semantic" only when the
    optional extra is installed, and each benchmark metric named in ``metrics``
    (rewards/benchmark.py; other names are ignored). Predictions are cleaned with ``clean_answer``
    first (a no-op on answers already cleaned, for plain completions). ``answer_types`` is checked
    for length only; group by it to report per type (``evaluation/score.py`` does).
    """
    preds, refs, _, _ = _prepare(predictions, answers, answer_types, "score_predictions", reasoning)
    comp = composite_batch(preds, refs, SEED_REPORT_WEIGHTS)
    scores = {
        "vqa_accuracy": vqa_accuracy_batch(preds, refs, official=True, convention=vqa_convention, benchmark=benchmark),
        "composite": comp.pop("total"),
        **{f"composite/{k}": v for k, v in comp.items()},
    }
    if semantic_available():
        scores["semantic"] = semantic_batch(preds, refs)
    for name in dict.fromkeys(metrics):
        if name in BENCHMARK_METRICS:
            scores[name] = BENCHMARK_METRICS[name](preds, refs)
    return scores
