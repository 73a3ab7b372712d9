"""The user's own reward functions, with TRL's convention, so that a TRL user's functions work as they are.

A reward function is called once per batch of completions with keyword arguments and returns one
float per completion, or None for a completion it does not score (that completion then gets
nothing from this function, as in TRL's nansum):

    def brevity(completions, answers, **kwargs) -> list[float | None]:
        return [1.0 if len(c.split()) <= 3 else 0.0 for c in completions]

Keyword arguments, one list entry per completion: ``completions`` (the decoded completions, as
the model wrote them), ``prompts`` (each completion's question), the example's fields as the
loader read them: ``answers`` (the reference answers), ``answer``, ``question``, ``answer_type``,
``question_type``, ``image`` (the image's path, or the example id when it came from bytes or
the question has no single image), ``images`` (one entry per image of the question, in order: its
path, or ``id#i`` for the i-th, 1-based, when it came from bytes; [] for none), ``video`` (the
video's path or ``id#video``; None without one) and ``id``; and, as TRL passes them, every other
column of the row by its own name (``VQAExample.fields``: ``solution``, ``aliases``, ...; None
where a row lacks it). Those names above win over a column of the same name. Always accept
``**kwargs``.

From YAML or the command line a function is an import path in reward.components
(``mypkg.rewards:brevity``); from Python, pass any callables to ``vqa_grpo.train(cfg,
reward_funcs=...)``.
"""

from __future__ import annotations

import functools
import importlib
import math
import numbers
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from vqa_grpo.errors import RewardFunctionError, UserError


def is_import_path(name: str) -> bool:
    """``package.module:attribute``: a reward function to import (a built-in name has no colon)."""
    return isinstance(name, str) and ":" in name


def short_name(path: str) -> str:
    """The name a function logs under: the attribute of ``module:attribute``."""
    return path.rsplit(":", 1)[1] if is_import_path(path) else path


def import_reward(path: str) -> Callable:
    """The callable at ``module:attribute``; a UserError naming what is missing otherwise."""
    module_name, _, attr = path.partition(":")
    if not module_name or not attr:
        raise UserError(f"reward.components: {path!r} is not an import path; write it as package.module:function")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        raise UserError(
            f"reward.components: cannot import module {module_name!r} for {path!r} ({e}); "
            "check the name and that the module is on PYTHONPATH"
        ) from None
    except Exception as e:  # the module itself failed while importing
        raise UserError(
            f"reward.components: importing {module_name!r} for {path!r} failed: {type(e).__name__}: {e}"
        ) from None
    func = module
    for part in attr.split("."):
        if not hasattr(func, part):
            raise UserError(f"reward.components: module {module_name!r} has no attribute {attr!r} (for {path!r})")
        func = getattr(func, part)
    if not callable(func):
        raise UserError(f"reward.components: {path!r} is a {type(func).__name__}, not a function")
    return func


@dataclass
class UserReward:
    """One user function, the name it logs under, and the seconds it took so far."""

    name: str
    func: Callable
    seconds: float = 0.0

    def __call__(self, completions: Sequence[str], examples: Sequence[Any], columns: dict | None = None) -> np.ndarray:
        """Scores [N] (NaN where the function returned None); RewardFunctionError when it misbehaves.
        ``columns``: ``example_columns(examples)``, when the caller has them already."""
        kwargs = columns if columns is not None else example_columns(examples)
        t0 = time.perf_counter()
        try:
            out = self.func(completions=list(completions), prompts=kwargs["question"], **kwargs)
        except Exception as e:
            first = examples[0].id if examples else "?"
            raise RewardFunctionError(
                f"reward function {self.name} raised {type(e).__name__}: {e} (batch starting at example {first})"
            ) from e
        finally:
            self.seconds += time.perf_counter() - t0
        return self._check(out, examples)

    def _check(self, out: Any, examples: Sequence[Any]) -> np.ndarray:
        try:
            values = list(out)
        except TypeError:
            raise RewardFunctionError(
                f"reward function {self.name} returned {_show(out)}, not a list of floats (one per completion)"
            ) from None
        if len(values) != len(examples):
            raise RewardFunctionError(
                f"reward function {self.name} returned {len(values)} values for {len(examples)} completions; return "
                "one per completion"
            )
        scores = np.empty(len(values), dtype=np.float64)
        for i, (v, ex) in enumerate(zip(values, examples)):
            if v is None:
                scores[i] = math.nan
                continue
            ok = isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(float(v))
            if not ok:
                raise RewardFunctionError(
                    f"reward function {self.name} returned {_show(v)} for example {ex.id}; "
                    "return a finite float (or None to leave a completion unscored)"
                )
            scores[i] = float(v)
        return scores


def callable_name(func: Callable) -> str:
    """The name a Python reward function logs under: a partial's function's, ``__name__``, else its
    class's (a callable object); a lambda is "lambda"."""
    while isinstance(func, functools.partial):
        func = func.func
    name = getattr(func, "__name__", None)
    name = name if isinstance(name, str) and name else type(func).__name__
    return "lambda" if name == "<lambda>" else name


RESERVED = ("completions", "prompts")
"""Keyword names a row's column cannot take (the trainer's own arguments)."""


def example_columns(examples: Sequence[Any]) -> dict[str, list]:
    """The dataset's columns, one list each, as TRL passes them to reward functions: the row's own
    columns (``VQAExample.fields``, None where a row lacks one), then the loader's fields."""
    names: dict[str, None] = {}
    for e in examples:
        names.update(dict.fromkeys(getattr(e, "fields", None) or {}))
    extra = {n: [(getattr(e, "fields", None) or {}).get(n) for e in examples] for n in names if n not in RESERVED}
    return extra | {
        "answers": [list(e.answers) for e in examples],
        "answer": [e.answer for e in examples],
        "question": [e.question for e in examples],
        "answer_type": [e.answer_type for e in examples],
        "question_type": [e.question_type for e in examples],
        "image": [image_reference(e) for e in examples],
        "images": [image_references(e) for e in examples],
        "video": [video_reference(e) for e in examples],
        "id": [e.id for e in examples],
    }


def image_reference(example: Any) -> str:
    """The image's path when it has one, else the example's id."""
    return _reference(getattr(example, "image_loader", None), example.id)


def image_references(example: Any) -> list[str]:
    """Each image's path (``id#i``, 1-based, for one without), in order; [] for a text-only question."""
    one = getattr(example, "image_loader", None)
    loaders = [one] if one is not None else list(getattr(example, "image_loaders", ()))
    return [_reference(f, f"{example.id}#{i}") for i, f in enumerate(loaders, 1)]


def video_reference(example: Any) -> str | None:
    """The video's path (``id#video`` for one without), or None when the question has no video."""
    loader = getattr(example, "video_loader", None)
    return None if loader is None else _reference(loader, f"{example.id}#video")


def _reference(loader: Any, otherwise: str) -> str:
    source = getattr(loader, "source", None)
    return str(source) if isinstance(source, (str, Path)) else otherwise


def resolve(components: Sequence[str], given: dict[str, Callable] | None = None) -> dict[str, UserReward]:
    """The user functions among ``components``: import paths, or names of ``given`` callables."""
    given = given or {}
    out: dict[str, UserReward] = {}
    for c in components:
        if c in given:
            out[c] = UserReward(c, given[c])
        elif is_import_path(c):
            out[c] = UserReward(short_name(c), import_reward(c))
    return out


def user_metrics(paths: Sequence[str], completions: Sequence[str], examples: Sequence[Any]) -> dict[str, np.ndarray]:
    """eval.metrics: each function's scores [N] of the raw answers (NaN where it returned None)."""
    columns = example_columns(examples)
    return {fn.name: fn(completions, examples, columns) for fn in resolve(paths).values()}


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."
