"""The reward and eval sections of a Config: how answers are scored, in training (the reward
functions and their weights) and in evaluation (decoding, metrics, perturbed and reworded
questions). config.py re-exports both; like it, this module imports nothing of the package."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Optional


@dataclass
class RewardConfig:
    components: Optional[list[str]] = None
    """Reward functions: composite, vqa_accuracy, answer_type, format, semantic, abstention, or your
    own as package.module:function (TRL's convention, docs/python.md; logged as reward/function);
    null takes the benchmark's metric (data.benchmark; data/benchmarks.py), else [composite]."""
    weights: Optional[list[float]] = None
    """Weight of each component (same length, >= 0); null gives each 1.0, as TRL does. The total
    reward is the sum of weight x score over the components (a None score adds nothing)."""
    composite_weights: dict[str, float] = field(
        default_factory=lambda: {
            "bleu1": 0.2,
            "exact_match": 0.3,
            "substring": 0.2,
            "jaccard": 0.1,
            "extractable": 0.2,
        }
    )
    """The seed's w1..w5 (section 3.3)."""
    composite_guard: bool = True
    """Scale the composite's parts by len(reference) / len(answer) for a longer answer, so that
    repeating or listing answers ("no no no", "yes no") cannot farm its partial credit; false
    gives the seed's reward exactly (rewards/composite.py). Evaluation's metric is the seed's."""
    reasoning: bool = False
    """Score the content of one <answer>...</answer> pair (the format reward then asks for it)."""
    number_partial_credit: bool = False
    """answer_type reward: partial credit for counts by distance to the true number."""
    python_functions: list[str] = field(default_factory=list)
    """Names in components of functions given to vqa_grpo.train(reward_funcs=...) that have no
    import path (a lambda, a closure, a function of a script's __main__). Written by the API, so
    that the run's config.yaml loads anywhere and a run needing them says so; not set by hand."""


@dataclass
class EvalConfig:
    batch_size: int = 32
    """Questions per generate call."""
    max_new_tokens: Optional[int] = None
    """Most new tokens per answer; null takes the benchmark's (lmms-eval's for its task: 32 for
    DocVQA; data/benchmarks.py), else 16."""
    do_sample: bool = False
    """Greedy by default; true samples with the seed's temperature 0.7 and top-p 0.9."""
    temperature: float = 0.7
    """Temperature when do_sample is true."""
    top_p: float = 0.9
    """Top-p when do_sample is true."""
    bootstrap_samples: int = 1000
    """Resamples for the 95% confidence intervals."""
    max_examples: Optional[int] = 1000
    """Questions the evaluations during training answer at most (a seeded draw from the eval set,
    stratified by answer type, as data.max_eval_samples draws; the log says when it cuts); null
    answers all. data.max_eval_samples, when set, wins; ``vqa-grpo evaluate`` is not capped by it."""
    vqa_convention: Optional[Literal["official", "lmms_eval"]] = None
    """VQA accuracy as the official vqaEval.py computes it (normalises only when the answers differ)
    or as lmms-eval's EvalAI processor does (always normalises); the metric and the reward alike.
    null: lmms_eval on a benchmark (data.benchmark, so that its figure compares with lmms-eval's),
    else official."""
    metrics: list[str] = field(default_factory=list)
    """Your own reward functions as extra metrics (package.module:function, TRL's convention), each
    reported under its function name beside the built-in ones; train.eval_metric may name one."""
    perturb: list[str] = field(default_factory=list)
    """``evaluate`` also answers every question on perturbed images, one pass per NAME:SEVERITY
    (data/perturb.py: gaussian_blur, gaussian_noise, jpeg, brightness, contrast, crop, rotate at
    severities 1-5; a NAME alone is all five), seeded by train.seed (metrics.json ``robustness``;
    evaluation/robustness.py)."""
    rephrase: bool = False
    """``evaluate`` also answers each question under each rewrite of data/rephrase.py that keeps its
    answer, and reports each rewrite's metrics and the answers' consistency (metrics.json
    ``rephrase``; evaluation/rephrase_check.py)."""
