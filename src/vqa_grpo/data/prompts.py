"""The user turn's text: the question put into the prompt template (data.prompt_template).

Every caller that shows a question to the model (GRPO's rollouts, SFT, evaluation, the demo, the
vLLM sampler) takes its text from :func:`user_text`, and the model family's adapter wraps that
text in its chat format with the image. Which template applies is decided once, by
:func:`prompt_template`: the explicit ``data.prompt_template``, else in reasoning mode
(``reward.reasoning``) ``REASONING_TEMPLATE``, else the benchmark's (``BENCHMARK_PROMPTS``, keyed
by ``data.benchmark``), else the seed report's ``DEFAULT_TEMPLATE``.

A template is a ``str.format`` string with one field, ``{question}`` (the question, stripped), or
``{question.capitalized}`` (its first letter upper-cased and the rest lower-cased, ``str.capitalize``,
as lmms-eval shows TextVQA's and VizWiz's questions); write a literal brace as ``{{`` or ``}}``.
The default reproduces the seed's prompt byte for byte:
``"What color? Answer with a single word or short phrase."``.
"""

from __future__ import annotations

import string
from typing import Any

from vqa_grpo.data.benchmarks import BENCHMARKS
from vqa_grpo.data.types import IMAGE_PLACEHOLDER, VIDEO_PLACEHOLDER  # (re-exported)

DEFAULT_TEMPLATE = "{question} Answer with a single word or short phrase."
"""The seed report's instruction (section 3.1), after the question."""

REASONING_TEMPLATE = (
    "{question} First think it through inside <think> </think> tags, then give the final answer as a single "
    "word or short phrase inside <answer> </answer> tags, e.g. <think>...</think><answer>...</answer>"
)
"""Reasoning mode's default: the tags that ``clean_answer(..., reasoning=True)`` and the format reward read."""

BENCHMARK_PROMPTS: dict[str, str] = {name: b.prompt for name, b in BENCHMARKS.items()}
"""``data.benchmark`` -> its template (the benchmark's own prompt: lmms-eval's, data/benchmarks.py),
used when data.prompt_template is unset and reasoning mode is off."""


def check_template(template: Any) -> str | None:
    """A one-line complaint about a data.prompt_template value, else None (config validation)."""
    if template is None:
        return None
    fix = 'write the user turn with {question} once, e.g. "{question} Answer in one word." ({{ }} for a brace)'
    if not isinstance(template, str):
        return f"data.prompt_template must be text, got {type(template).__name__}; {fix}"
    try:
        fields = [(name, spec, conv) for _, name, spec, conv in string.Formatter().parse(template) if name is not None]
    except ValueError as e:
        return f"data.prompt_template={template!r} is not a valid template ({e}); {fix}"
    others = sorted({"{" + name + "}" for name, _, _ in fields if name not in ("question", "question.capitalized")})
    if others:
        return f"data.prompt_template={template!r} has fields {', '.join(others)} besides {{question}}; {fix}"
    if len(fields) != 1:
        return f"data.prompt_template={template!r} holds {{question}} {len(fields)} times, not once; {fix}"
    if fields[0][1] or fields[0][2]:
        return f"data.prompt_template={template!r}: write {{question}} without a format spec or conversion; {fix}"
    marks = [m for m in (IMAGE_PLACEHOLDER, VIDEO_PLACEHOLDER) if m in template]
    if marks:
        return (
            f"data.prompt_template={template!r} holds {' and '.join(marks)}; drop it: the images and video go where "
            f"the question's own {IMAGE_PLACEHOLDER}/{VIDEO_PLACEHOLDER} say, or first"
        )
    return None


def prompt_template(data: Any = None, reasoning: bool = False) -> str:
    """The template that applies: data.prompt_template > (reasoning) REASONING_TEMPLATE >
    BENCHMARK_PROMPTS[data.benchmark] > DEFAULT_TEMPLATE. ``data``: a DataConfig, or None."""
    explicit = getattr(data, "prompt_template", None)
    if explicit is not None:
        return explicit
    if reasoning:
        return REASONING_TEMPLATE
    benchmark = getattr(data, "benchmark", None)
    return BENCHMARK_PROMPTS.get(benchmark, DEFAULT_TEMPLATE) if benchmark else DEFAULT_TEMPLATE


class _Question(str):
    """The question as a template's field: itself, or ``.capitalized``."""

    @property
    def capitalized(self) -> str:
        return self.capitalize()


def user_text(question: str, template: str = DEFAULT_TEMPLATE) -> str:
    """The user turn's text: ``template`` with the stripped question in place of {question}."""
    return template.format(question=_Question(question.strip()))


def user_texts(examples: list, template: str = DEFAULT_TEMPLATE) -> list[str]:
    """:func:`user_text` of each example's question."""
    return [user_text(e.question, template) for e in examples]
