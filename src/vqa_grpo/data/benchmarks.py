"""The benchmarks a data set can be (``data.benchmark``): each one's official metric, prompt and
answer length, so that ``vqa-grpo evaluate`` on it gives a number comparable with lmms-eval's.

A benchmark sets these, each only where the user set nothing:

* ``metric``: the reward (``reward.components`` unset) and the metric that picks ``best/``
  (``train.eval_metric`` unset); ``metrics.json`` names it ``primary_metric``.
* ``prompt``: the user turn's template (``data.prompt_template`` unset; data/prompts.py):
  lmms-eval's ``pre_prompt + question + post_prompt`` of the task's ``default`` kwargs.
* ``max_new_tokens``: the answer length (``eval.max_new_tokens`` unset): the task's
  ``generation_kwargs.max_new_tokens``; where the task sets none (TextVQA, OK-VQA, VizWiz: the
  model wrapper's default applies there, e.g. 1024 in lmms-eval's llava), 16.
* ``eval.vqa_convention`` (unset): ``lmms_eval``, the VQA accuracy lmms-eval computes.

Without a benchmark the seed report's choices stay: the composite reward, ``vqa_accuracy`` (the
official convention) for ``best/``, the seed's prompt and 16 tokens. A Hub preset names its
benchmark (hub_presets.py); ``data.benchmark`` names one for a local copy, and wins over the preset's.

Read from lmms-eval (github.com/EvolvingLMMs-Lab/lmms-eval) at commit ``LMMS_EVAL_COMMIT``,
``lmms_eval/tasks/<task>/``; docs/data_hub.md has the table and the differences.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from vqa_grpo.config import Config, ConfigError
from vqa_grpo.data.hub import hub_name, is_hub_path, preset_benchmark

LMMS_EVAL_COMMIT = "75571cfe0fa36ca5ec2e6aa2bb268f9d38295af3"
"""The lmms-eval commit whose task files the table below was checked against (2026-08-06)."""

SHORT = "\nAnswer the question using a single word or phrase."
UNANSWERABLE = "\nWhen the provided information is insufficient, respond with 'Unanswerable'." + SHORT
MULTIPLE_CHOICE = "\nAnswer with the option's letter from the given choices directly."
VIDEOMME = (
    "Select the best answer to the following multiple-choice question based on the video and the subtitles. "
    "Respond with only the letter (A, B, C, or D) of the correct option."
)
"""lmms-eval's ``videomme_doc_to_text`` opening line (it names subtitles even where none are shown)."""
DEFAULT_MAX_NEW_TOKENS = 16
"""eval.max_new_tokens without a benchmark, or for a task that sets none."""


@dataclass(frozen=True)
class Benchmark:
    """One benchmark: its metric, prompt and answer length, and the lmms-eval task they come from."""

    name: str
    title: str
    metric: str
    """The official metric (a key of metrics.json and a reward component)."""
    prompt: str
    """The user turn's template, with {question}."""
    max_new_tokens: int
    task: str
    """The lmms-eval task (or the benchmark's own evaluation) the values were read from."""
    notes: str = ""


BENCHMARKS: dict[str, Benchmark] = {b.name: b for b in (
    Benchmark("docvqa", "DocVQA", "anls", "{question}" + SHORT, 32, "docvqa_val"),
    Benchmark("infovqa", "InfographicVQA", "anls", "{question}" + SHORT, 32, "infovqa_val"),
    Benchmark("chartqa", "ChartQA", "relaxed_accuracy", "{question}\nAnswer the question with a single word.", 16,
              "chartqa"),
    Benchmark("gqa", "GQA", "exact_match", "{question}" + SHORT, 16, "gqa"),
    Benchmark("vqav2", "VQA v2", "vqa_accuracy", "{question}" + SHORT, 16, "vqav2_val"),
    Benchmark("textvqa", "TextVQA", "vqa_accuracy", "{question.capitalized}" + SHORT, DEFAULT_MAX_NEW_TOKENS,
              "textvqa_val", notes="lmms-eval capitalises the question (str.capitalize: the rest lower-cased)"),
    Benchmark("okvqa", "OK-VQA", "vqa_accuracy", "{question}" + UNANSWERABLE, DEFAULT_MAX_NEW_TOKENS,
              "ok_vqa_val2014"),
    Benchmark("aokvqa", "A-OKVQA (direct answer)", "vqa_accuracy", "{question}" + SHORT, DEFAULT_MAX_NEW_TOKENS,
              "no lmms-eval task: lmms-eval's VQA prompt; allenai/aokvqa evaluation/eval_predictions.py",
              notes="A-OKVQA's own direct-answer score is min(1, matches / 3) without leave-one-out or "
                    "normalisation; VQA accuracy averages over leave-one-out subsets"),
    Benchmark("aokvqa_mc", "A-OKVQA (multiple choice)", "multiple_choice", "{question}" + MULTIPLE_CHOICE, 16,
              "no lmms-eval task: lmms-eval's multiple-choice format (ai2d); allenai/aokvqa eval_predictions.py",
              notes="the question carries the lettered choices (A. ..., one a line); the letter or the choice's "
                    "text is accepted"),
    Benchmark("vizwiz", "VizWiz", "vqa_accuracy", "{question.capitalized}" + UNANSWERABLE, DEFAULT_MAX_NEW_TOKENS,
              "vizwiz_vqa_val",
              notes="lmms-eval capitalises the question (str.capitalize); evaluation adds the answerability "
                    "figures (rewards/abstention.py)"),
    Benchmark("muirbench", "MuirBench", "multiple_choice", "{question}" + MULTIPLE_CHOICE, 16, "muirbench",
              notes="the question carries the lettered options and the images' <image> marks; lmms-eval compares "
                    "the reply's letter only, here the option's text is accepted too"),
    Benchmark("videomme", "Video-MME", "multiple_choice", VIDEOMME + "\n{question}\n" + MULTIPLE_CHOICE, 16,
              "videomme",
              notes="the question carries the options (A. ... one a line); no subtitles. lmms-eval extracts the "
                    "reply's letter (A-D); here the letter or the option's text is accepted"),
)}  # fmt: skip


def find_benchmark(name: str | None) -> Benchmark | None:
    """The benchmark called ``name`` (case-insensitive), None for None; an unknown name is one line."""
    if name is None:
        return None
    found = BENCHMARKS.get(name.strip().lower())
    if found is None:
        raise ConfigError(f"data.benchmark={name!r} is not a known benchmark; choose one of {', '.join(BENCHMARKS)}")
    return found


def data_benchmark(cfg: Config, path: str | None = None) -> Benchmark | None:
    """The benchmark of the data: ``data.benchmark``, else the Hub preset's of ``path`` (default
    ``data.path``), else None."""
    if cfg.data.benchmark is not None:
        return find_benchmark(cfg.data.benchmark)

    path = cfg.data.path if path is None else path
    if not is_hub_path(path):
        return None
    name = preset_benchmark(cfg.data, hub_name(path))
    return BENCHMARKS[name] if name else None


def resolve(cfg: Config, path: str | None = None) -> Config:
    """``cfg`` with the settings left to the benchmark filled in: data.benchmark (from the Hub
    preset), reward.components, train.eval_metric, eval.max_new_tokens and eval.vqa_convention. Idempotent: a resolved
    config comes back unchanged. ``path``: the data evaluated when it is not data.path."""
    bench = data_benchmark(cfg, path)
    data = dataclasses.replace(cfg.data, benchmark=bench.name if bench else None)
    reward, train, evalc = cfg.reward, cfg.train, cfg.eval
    if reward.components is None:
        components = [bench.metric] if bench else ["composite"]
        if reward.weights is not None and len(reward.weights) != 1:
            raise ConfigError(
                f"reward.weights has {len(reward.weights)} values for one reward ({components[0]}, "
                "reward.components being unset); set reward.components, or give one weight"
            )
        reward = dataclasses.replace(reward, components=components)
    if train.eval_metric is None:
        train = dataclasses.replace(train, eval_metric=bench.metric if bench else "vqa_accuracy")
    if evalc.max_new_tokens is None:
        evalc = dataclasses.replace(evalc, max_new_tokens=bench.max_new_tokens if bench else DEFAULT_MAX_NEW_TOKENS)
    if evalc.vqa_convention is None:  # a benchmark's VQA accuracy as lmms-eval computes it
        evalc = dataclasses.replace(evalc, vqa_convention="lmms_eval" if bench else "official")
    return dataclasses.replace(cfg, data=data, reward=reward, train=train, eval=evalc)
