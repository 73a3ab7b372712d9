"""The Python API: what the ``vqa-grpo`` command calls, for notebooks and scripts.

    import vqa_grpo

    cfg = vqa_grpo.load_config("configs/tiny_cpu.yaml", ["train.max_steps=10"])
    result = vqa_grpo.train(cfg, data=rows)        # GRPO; rows: a DataFrame, a Dataset, a list of dicts
    metrics = vqa_grpo.evaluate(result.final_dir, "data/val.jsonl", cfg)

docs/python.md has the whole of it. Bad input raises ``vqa_grpo.UserError`` with the one-line
message the command prints.
"""

from __future__ import annotations

import dataclasses
import importlib
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vqa_grpo.errors import UserError
from vqa_grpo.rewards.registry import reward_components
from vqa_grpo.rewards.user import callable_name, short_name

# The config, data, evaluation and training modules are imported inside the functions that use
# them: `import vqa_grpo` loads this module, and stays light (no config, no torch).
if TYPE_CHECKING:
    from vqa_grpo.config import Config

Data = Any
"""Training or evaluation rows: a path (file or folder, any format of docs/data.md), a pandas
DataFrame, a ``datasets.Dataset`` or a list of dicts, with the columns of ``data.columns``."""


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """The config of a YAML file (or the defaults when None), then ``section.key=value`` overrides."""
    from vqa_grpo.config_load import load_config as _load_config

    return _load_config(path, list(overrides))


def train(cfg: Config, data: Data = None, *, reward_funcs=None, reward_weights: list[float] | None = None):
    """GRPO fine-tuning as configured; ``data`` replaces ``data.path`` when given. Returns the
    run's :class:`~vqa_grpo.training.loop.RunResult` (run_dir, final_dir, steps, eval_history).

    ``reward_funcs``: your own reward functions (TRL's convention, rewards/user.py): a callable, a
    list of callables (functions, lambdas, partials, callable objects; named by ``__name__`` or the
    class name) or a dict name -> callable. Each is added to reward.components unless already
    named there; ``reward_weights`` then gives every component's weight (reward.weights), in
    order; without it an added function weighs 1.0.

    The run's config.yaml names a function by its import path (``module:qualname``) where it has
    one, so that the file loads and resumes from the command line; a lambda, a closure or a
    function of a script's ``__main__`` is listed in reward.python_functions, and a run from that
    file (or a resume) without it passed again is refused naming it."""
    from vqa_grpo.config_keys import given_keys
    from vqa_grpo.config_load import check_config
    from vqa_grpo.data.benchmarks import resolve

    named = _named(reward_funcs)
    path = str(data) if isinstance(data, (str, Path)) else None  # the benchmark's reward comes first
    given = given_keys(cfg) | _set_here(named, reward_weights, path)  # what a resume compares with its checkpoint
    cfg = _with_rewards(resolve(check_config(cfg, named), path), named, reward_weights)
    cfg, pathless = _recorded(check_config(cfg, named), named)
    return _run(check_config(cfg, pathless), "grpo", data, pathless, given)


def sft(cfg: Config, data: Data = None):
    """Supervised fine-tuning on the ground-truth answers (the seed report's eq. 1); as :func:`train`."""
    from vqa_grpo.config_keys import given_keys
    from vqa_grpo.config_load import check_config

    given = given_keys(cfg) | _set_here({}, None, str(data) if isinstance(data, (str, Path)) else None)
    return _run(check_config(cfg), "sft", data, None, given)


def _run(cfg: Config, mode: str, data: Data, reward_funcs: dict | None, given: frozenset[str]):
    from vqa_grpo.training.loop import run

    if isinstance(data, (str, Path)):  # a path: the same as data.path
        cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, path=str(data)))
        data = None
    return run(cfg, mode, data=data, reward_funcs=reward_funcs, given=given)


def _set_here(named: dict, weights: list[float] | None, path: str | None) -> set[str]:
    """The keys the call's arguments set (reward_funcs, reward_weights, a data path)."""
    return (
        ({"reward.components", "reward.python_functions"} if named else set())
        | ({"reward.weights"} if weights is not None else set())
        | ({"data.path"} if path is not None else set())
    )


def import_path(func) -> str | None:
    """``module:qualname`` when importing it gives back ``func`` itself (a function defined at the
    top level of an importable module, or a class's static method); else None: a lambda, a closure, a
    partial, a callable object, or anything of ``__main__`` (which another process cannot import)."""
    module, qualname = getattr(func, "__module__", None), getattr(func, "__qualname__", None)
    if not isinstance(module, str) or not isinstance(qualname, str) or module == "__main__" or "<" in qualname:
        return None
    try:
        found = importlib.import_module(module)
        for part in qualname.split("."):
            found = getattr(found, part)
    except Exception:  # not importable as named: record it as a function without a path
        return None
    return f"{module}:{qualname}" if found is func else None


def _recorded(cfg: Config, named: dict) -> tuple[Config, dict]:
    """``cfg`` with each Python function of reward.components named by its import path where it has
    one (the run imports it from there), the others listed in reward.python_functions; and those
    others, name -> callable, for the run."""
    paths: dict[str, str] = {}
    for name, func in named.items():
        path = import_path(func)
        # by path only where it logs under the name it was given (``accuracy_2`` or a dict's own key keeps it)
        if path is not None and short_name(path) == name and path not in cfg.reward.components:
            paths[name] = path
    components = [paths.get(c, c) for c in cfg.reward.components]
    pathless = {n: f for n, f in named.items() if n not in paths}
    kept = [n for n in cfg.reward.python_functions if n in components and n not in named]  # from a loaded config.yaml
    python = [c for c in components if c in pathless or c in kept]
    reward = dataclasses.replace(cfg.reward, components=components, python_functions=python)
    return dataclasses.replace(cfg, reward=reward), pathless


def _named(reward_funcs) -> dict:
    """Name -> callable: a dict's keys, else each callable's name (``rewards.user.callable_name``:
    ``__name__``, a partial's function, a callable object's class, "lambda"), numbered from the
    second of a name on (``accuracy``, ``accuracy_2``)."""
    if not reward_funcs:
        return {}
    if callable(reward_funcs) and not isinstance(reward_funcs, dict):
        reward_funcs = [reward_funcs]  # one function, as TRL takes it
    if isinstance(reward_funcs, dict):
        items = list(reward_funcs.items())
    else:
        items, seen = [], {}
        for f in reward_funcs:
            base = callable_name(f)
            seen[base] = seen.get(base, 0) + 1
            items.append((base if seen[base] == 1 else f"{base}_{seen[base]}", f))
    out = {}
    for name, func in items:
        if not callable(func):
            raise UserError(f"reward_funcs: {name or func!r} is a {type(func).__name__}, not a function")
        if not isinstance(name, str) or not name.strip() or ":" in name or name in out:
            raise UserError(
                f"reward_funcs: {name!r} cannot name a reward function; give each its own name without ':' "
                "(pass a dict name -> function)"
            )
        out[name] = func
    return out


def _with_rewards(cfg: Config, named: dict, weights: list[float] | None) -> Config:
    """``cfg`` with the (named) Python reward functions in reward.components and ``weights`` as
    reward.weights; without ``weights`` an added function weighs 1.0 (all stay null when
    reward.weights is null: 1.0 each)."""
    before = reward_components(cfg.reward)
    components = before + [n for n in named if n not in before]
    if weights is None:
        given = cfg.reward.weights
        weights = None if given is None else [*given, *[1.0] * (len(components) - len(before))]
    else:
        weights = [float(w) for w in weights]
        if len(weights) != len(components):
            raise UserError(
                f"reward weights: {len(weights)} for {len(components)} reward components ({', '.join(components)}); "
                "pass reward_weights with one weight each, or none for 1.0 each"
            )
        if any(w < 0 for w in weights):
            raise UserError(f"reward_weights: weights must be >= 0, got {weights}")
    return dataclasses.replace(cfg, reward=dataclasses.replace(cfg.reward, components=components, weights=weights))


def evaluate(
    model: str | Path, data: Data, cfg: Config | None = None, out: str | Path | None = None, *, overwrite: bool = False
) -> dict:
    """Answer ``data``'s questions with the model (a directory, checkpoint or LoRA adapter) and
    score them; writes predictions.jsonl and metrics.json to ``out`` when given (an earlier
    evaluation there is refused unless ``overwrite``; data with more images per question, or a
    video, than the model's family takes is refused, as is data whose widest question's prompt and
    answer overflow the model's context; another question past it is skipped and counted, never
    scored: ``skipped_by_reason``). Returns the metrics dict: overall, per answer type and per
    question type, with bootstrap intervals.

    ``data.max_eval_samples`` keeps that many questions, drawn as training draws its eval set
    (seeded by ``train.seed``, stratified by answer type, in file order)."""
    from vqa_grpo.config import Config
    from vqa_grpo.config_load import check_config
    from vqa_grpo.data.benchmarks import resolve
    from vqa_grpo.data.loader import load_examples, read_examples
    from vqa_grpo.data.sources import memory_source
    from vqa_grpo.data.splits import limit
    from vqa_grpo.evaluation.evaluate import check_out_dir
    from vqa_grpo.evaluation.evaluate import evaluate as _evaluate
    from vqa_grpo.models.fit import check_eval_fit
    from vqa_grpo.models.loading import check_visuals, family_adapter

    cfg = check_config(cfg) if cfg is not None else Config()
    cfg = resolve(cfg, str(data) if isinstance(data, (str, Path)) else None)  # the preset's benchmark
    if out is not None:
        check_out_dir(out, overwrite)
    if isinstance(data, (str, Path)):
        examples, report = load_examples(str(data), cfg.data)
    else:
        examples, report = read_examples(memory_source(data, cfg.data), cfg.data)
    if report.num_skipped:  # under data.max_skip_fraction, else load_examples refused them
        from tqdm.auto import tqdm

        from vqa_grpo.training.skips import counts_text

        reasons = counts_text(report.skipped)
        tqdm.write(  # on stderr, as a training run tells its skips (training/skips.py)
            f"evaluate: {report.num_skipped} of {report.rows} rows skipped as the data loaded ({reasons}); not "
            "evaluated (`vqa-grpo data inspect` lists them)",
            file=sys.stderr,
        )
    examples = limit(examples, cfg.data.max_eval_samples, cfg.train.seed, "eval")
    model_cfg = dataclasses.replace(cfg.model, name_or_path=str(model))
    what = f"data {data}" if isinstance(data, (str, Path)) else "data"
    check_visuals(family_adapter(model_cfg), report.max_images, report.videos, what)  # config.json only
    check_eval_fit(model_cfg, cfg, examples, report, what)  # its processor: prompts past the model's context
    return _evaluate(str(model), examples, cfg, out, skipped_at_load=report.skipped)
