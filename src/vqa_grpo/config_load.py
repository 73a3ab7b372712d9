"""Building a Config: the YAML file, the ``section.key=value`` overrides, type checks and the
value checks of ``validate`` (config.py holds the dataclasses). It sits above the data and rewards
layers, whose names (Hub presets, reward components) it checks; they import config.py only."""

from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, Literal

import yaml

from vqa_grpo.config import Config, ConfigError, GRPOConfig
from vqa_grpo.config_keys import all_keys, mark_given, tree_keys
from vqa_grpo.data.benchmarks import find_benchmark
from vqa_grpo.data.hub import check_preset_key
from vqa_grpo.data.perturb import parse_perturbations
from vqa_grpo.data.prompts import check_template
from vqa_grpo.errors import UserError
from vqa_grpo.rewards.benchmark import BENCHMARK_METRICS
from vqa_grpo.rewards.registry import REWARD_COMPONENTS
from vqa_grpo.rewards.user import import_reward, is_import_path, short_name

RENAMED_VALUES: dict[tuple[str, Any], Any] = {("grpo.loss_type", "seed"): "seed_report"}
"""(key, old value) -> the value's name now, so that the config.yaml of an older run still loads."""

TEXT_KEYS = ("data.prompt_template",)
"""Overrides read as the text written when YAML would make something else of it ({question} a mapping)."""


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Defaults, then the YAML file at ``path``, then ``section.key=value`` overrides; validated."""
    tree: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file not found: {p} (give an existing YAML file to --config)")
        try:
            loaded = yaml.safe_load(p.read_text())
        except yaml.YAMLError as e:
            line = getattr(getattr(e, "problem_mark", None), "line", None)
            where = f" at line {line + 1}" if line is not None else ""
            raise ConfigError(f"config file {p} is not valid YAML{where}; fix its syntax") from None
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"config file {p} must hold a mapping of sections (model:, data:, ...)")
        tree = loaded or {}
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"override {item!r} is not key=value (e.g. train.max_steps=10)")
        value = _parse_value(raw)
        if key.strip() in TEXT_KEYS and not isinstance(value, (str, type(None))):
            value = raw  # "{question} ..." is text here, not a YAML mapping
        _set_dotted(tree, key.strip(), value)
    cfg = _build(Config, tree, "")
    validate(cfg)
    return mark_given(cfg, tree_keys(tree))  # a resume restores the others from its checkpoint


def check_config(cfg: Config, python_rewards: typing.Iterable[str] = ()) -> Config:
    """A Config built or changed in Python, checked as ``load_config`` checks a file's: each
    value's type (a one-line ConfigError naming the key), then ``validate``. Returns it rebuilt
    (an int made a float where a float goes). ``python_rewards``: reward components given as
    Python functions (the API's reward_funcs), which need no import path."""
    if not isinstance(cfg, Config):
        raise ConfigError(f"expected a Config (from vqa_grpo.load_config), got a {type(cfg).__name__}")
    built = _build(Config, _tree(cfg), "")
    validate(built, python_rewards)
    return built


def _tree(value: Any) -> Any:
    """A Config's values as the nested dicts and lists YAML gives (tuples as lists)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _tree(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, (list, tuple)):
        return [_tree(v) for v in value]
    if isinstance(value, dict):
        return {k: _tree(v) for k, v in value.items()}
    return value


def _parse_value(raw: str) -> Any:
    try:
        return yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        return raw


def _set_dotted(tree: dict, key: str, value: Any) -> None:
    parts = key.split(".")
    node = tree
    for part in parts[:-1]:
        nxt = node.setdefault(part, {})
        if not isinstance(nxt, dict):
            raise ConfigError(f"override {key}: {part} is a value, not a section")
        node = nxt
    node[parts[-1]] = value


def _build(cls: type, tree: Any, prefix: str) -> Any:
    name = prefix.rstrip(".") or "config"
    if not isinstance(tree, dict):
        raise ConfigError(f"{name} must be a mapping, got {type(tree).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(tree) - set(fields))
    if unknown:
        allowed = ", ".join(prefix + k for k in fields)
        raise ConfigError(f"unknown config key {prefix}{unknown[0]}; allowed here: {allowed}")
    kwargs = {}
    for key, value in tree.items():
        tp = hints[key]
        if dataclasses.is_dataclass(tp):
            kwargs[key] = _build(tp, value, f"{prefix}{key}.")
        else:
            kwargs[key] = _coerce(value, tp, prefix + key)
    return cls(**kwargs)


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check ``value`` against the annotation ``tp``; ints are accepted where floats are."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(value, inner[0], key)
    if origin is Literal:
        if isinstance(value, bool) and ("on" if value else "off") in args:  # YAML 1.1 reads on/off as booleans
            value = "on" if value else "off"
        value = RENAMED_VALUES.get((key, value), value)
        if value not in args:
            raise ConfigError(f"{key}={value!r} is not allowed; choose one of {', '.join(map(str, args))}")
        return value
    if origin is list:
        if not isinstance(value, list):
            value = [value] if isinstance(value, (int, float, str)) and not isinstance(value, bool) else value
        if not isinstance(value, list):
            raise ConfigError(f"{key} must be a list, got {value!r}")
        return [_coerce(v, args[0], f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key} must be a mapping, got {value!r}")
        return {str(k): _coerce(v, args[1], f"{key}.{k}") for k, v in value.items()}
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key} must be true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key} must be an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, str):  # YAML 1.1 reads "5e-4" (no dot) as a string
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key} must be a number, got {value!r}")
        return float(value)
    if tp is str:
        if isinstance(value, (dict, list)) or value is None:
            quote = "; YAML reads an unquoted {...} as a mapping: quote the value" if isinstance(value, dict) else ""
            raise ConfigError(f"{key} must be a string, got {value!r}{quote}")
        return str(value)
    return value


# (switch, key): grpo keys that act only while their feature is on; set otherwise, they are refused.
_FEATURE_KEYS = [("dynamic_sampling", "max_resample_rounds"), ("prioritized_sampling", "priority_floor")]
_FEATURE_KEYS += [("prioritized_sampling", "priority_decay"), ("augment", "augment_share")]
_FEATURE_KEYS += [("augment", "augment_schedule")]


def validate(cfg: Config, python_rewards: typing.Iterable[str] = ()) -> None:
    """Impossible values, each with a one-line error naming the key and what is allowed.
    ``python_rewards``: reward.components given as Python functions (see ``check_config``)."""
    g, t, r, d = cfg.grpo, cfg.train, cfg.reward, cfg.data

    def need(ok: bool, msg: str) -> None:
        if not ok:
            raise ConfigError(msg)

    need(
        g.num_generations >= 2,
        f"grpo.num_generations={g.num_generations}: must be >= 2 (a group needs two samples to compare)",
    )
    need(
        len(g.temperatures) >= 1 and all(x > 0 for x in g.temperatures),
        "grpo.temperatures: need one or more values > 0",
    )
    need(len(g.top_ps) >= 1 and all(0 < x <= 1 for x in g.top_ps), "grpo.top_ps: need one or more values in (0, 1]")
    need(g.max_completion_length >= 1, "grpo.max_completion_length must be >= 1")
    need(g.beta >= 0, f"grpo.beta={g.beta}: must be >= 0")
    need(g.epsilon > 0, f"grpo.epsilon={g.epsilon}: must be > 0")
    need(g.epsilon_high is None or g.epsilon_high > 0, "grpo.epsilon_high must be > 0 or null")
    need(
        0 <= g.top_entropy_quantile <= 1,
        f"grpo.top_entropy_quantile={g.top_entropy_quantile}: must be in [0, 1] (1 keeps every token)",
    )
    need(
        g.sapo_temperature_pos > 0 and g.sapo_temperature_neg > 0,
        "grpo.sapo_temperature_pos and grpo.sapo_temperature_neg must be > 0",
    )
    need(g.num_iterations >= 1, "grpo.num_iterations must be >= 1")
    need(
        0 < g.priority_floor <= 1,
        f"grpo.priority_floor={g.priority_floor}: must be in (0, 1] (0 would let questions starve; 1 draws uniformly)",
    )
    need(
        0 <= g.priority_decay < 1,
        f"grpo.priority_decay={g.priority_decay}: must be in [0, 1) (1 would never take in a new reward)",
    )
    need(g.sft_coef >= 0, "grpo.sft_coef must be >= 0")
    need(g.vllm_sync_steps >= 1, f"grpo.vllm_sync_steps={g.vllm_sync_steps}: must be >= 1")
    need(0 < g.vllm_gpu_memory_utilization < 1, "grpo.vllm_gpu_memory_utilization must be in (0, 1)")
    need(g.vllm_max_model_len >= 16, f"grpo.vllm_max_model_len={g.vllm_max_model_len}: must be >= 16")
    need(
        0 <= g.filter_low <= g.filter_high <= 1,
        f"grpo.filter_low={g.filter_low}, grpo.filter_high={g.filter_high}: need 0 <= filter_low <= filter_high <= 1",
    )
    need(
        g.dynamic_sampling or (g.filter_low, g.filter_high) == (0.0, 1.0),
        "grpo.filter_low/filter_high act only with dynamic sampling: set grpo.dynamic_sampling=true",
    )
    need(
        not g.dynamic_sampling or g.max_resample_rounds >= 1,
        f"grpo.max_resample_rounds={g.max_resample_rounds}: dynamic sampling needs >= 1 resampling round per step",
    )
    need(
        not (g.dynamic_sampling and g.loss_type == "seed_report"),
        "grpo.dynamic_sampling=true has nothing to filter for loss_type=seed_report (its gradient is zero); "
        "choose another grpo.loss_type",
    )
    try:
        parse_perturbations(g.augment)
    except UserError as err:
        raise ConfigError(f"grpo.augment: {err}") from None
    need(0 <= g.augment_share <= 1, f"grpo.augment_share={g.augment_share}: must be in [0, 1]")
    need(
        not (g.augment and g.loss_type == "seed_report"),
        "grpo.augment has no rollouts to perturb for loss_type=seed_report; drop grpo.augment or choose another loss",
    )
    need(
        not (g.augment and g.generation_backend == "vllm"),
        "grpo.augment samples with transformers only; drop grpo.augment or set grpo.generation_backend=transformers",
    )
    for on, key in _FEATURE_KEYS:
        fix = f"set grpo.{on}=" + ("[NAME[:SEVERITY],...]" if on == "augment" else "true") + f" or drop grpo.{key}"
        need(
            bool(getattr(g, on)) or getattr(g, key) == getattr(GRPOConfig, key),
            f"grpo.{key} acts only with grpo.{on}: {fix}",
        )
    need(g.logprob_chunk_size >= 1, f"grpo.logprob_chunk_size={g.logprob_chunk_size}: must be >= 1 (e.g. 256)")
    need(g.vllm_is_cap >= 1, f"grpo.vllm_is_cap={g.vllm_is_cap}: must be >= 1 (1 clips every up-weighting)")
    need(t.max_steps >= 1, f"train.max_steps={t.max_steps}: must be >= 1")
    need(t.per_device_batch_size >= 1, "train.per_device_batch_size must be >= 1")
    need(t.gradient_accumulation_steps >= 1, "train.gradient_accumulation_steps must be >= 1")
    need(t.learning_rate >= 0, "train.learning_rate must be >= 0")
    need(len(t.adam_betas) == 2 and all(0 <= b < 1 for b in t.adam_betas), "train.adam_betas: two values in [0, 1)")
    need(
        min(t.save_steps, t.eval_steps, t.warmup_steps) >= 0, "train.save_steps, eval_steps, warmup_steps must be >= 0"
    )
    need(t.logging_steps >= 1, "train.logging_steps must be >= 1")
    need(t.collective_timeout >= 1, f"train.collective_timeout={t.collective_timeout}: must be >= 1 (seconds)")
    need(
        not t.merge_lora or cfg.model.lora,
        "train.merge_lora=true needs model.lora=true (a full fine-tune has nothing to merge)",
    )
    need(
        t.save_steps % g.num_iterations == 0,
        f"train.save_steps={t.save_steps} must be a multiple of grpo.num_iterations={g.num_iterations} "
        "(a checkpoint inside a reused rollout could not resume exactly)",
    )

    for path in cfg.eval.metrics:
        if path in BENCHMARK_METRICS:
            continue
        need(
            is_import_path(path),
            f"eval.metrics: {path!r} is neither a metric ({', '.join(BENCHMARK_METRICS)}) nor an import path; "
            "write your own as package.module:function",
        )
        import_reward(path)
    metrics = (
        "vqa_accuracy",
        "composite",
        *(f"composite/{k}" for k in ("bleu1", "exact_match", "substring", "jaccard", "extractable")),
        "semantic",
        *BENCHMARK_METRICS,
        *(short_name(p) for p in cfg.eval.metrics if p not in BENCHMARK_METRICS),
    )
    need(
        t.eval_metric is None or t.eval_metric in metrics,
        f"train.eval_metric={t.eval_metric!r}: choose one of {', '.join(metrics)}, or null for the benchmark's",
    )
    find_benchmark(d.benchmark)  # an unknown name is one line
    need(0 <= d.eval_fraction < 1, f"data.eval_fraction={d.eval_fraction}: must be in [0, 1)")
    need(0 <= d.max_skip_fraction <= 1, "data.max_skip_fraction must be in [0, 1]")
    for key in ("max_train_samples", "max_eval_samples"):
        v = getattr(d, key)
        need(v is None or v >= 1, f"data.{key}={v}: must be >= 1 or null")
    need(d.cache_dir is None or bool(d.cache_dir.strip()), "data.cache_dir is empty; give a folder, none, or null")
    need(bool(d.split.strip()), "data.split is empty; name a split of the hf: dataset (e.g. train or validation)")
    for key in ("eval_split", "config_name", "preset"):
        v = getattr(d, key)
        need(v is None or bool(v.strip()), f"data.{key} is empty; give a name or null")
    complaint = check_preset_key(d.preset)
    need(complaint is None, complaint or "")
    complaint = check_template(d.prompt_template)
    need(complaint is None, complaint or "")
    need(
        t.log_completion_groups is None or t.log_completion_groups >= 0,
        f"train.log_completion_groups={t.log_completion_groups}: must be >= 0, or null for every group",
    )
    need(
        not (d.path.startswith("hf:") and d.eval_path == d.path and (d.eval_split or d.split) == d.split),
        f"data.eval_path is data.path with the same split {d.split!r}: the eval set would be the training set; "
        "set data.eval_split (e.g. validation) or drop data.eval_path",
    )
    m, e = cfg.model, cfg.eval
    need(m.lora_r >= 1, f"model.lora_r={m.lora_r}: must be >= 1")
    need(m.lora_alpha > 0, f"model.lora_alpha={m.lora_alpha}: must be > 0")
    need(0 <= m.lora_dropout < 1, f"model.lora_dropout={m.lora_dropout}: must be in [0, 1)")
    need(m.num_crops is None or m.num_crops >= 1, f"model.num_crops={m.num_crops}: must be >= 1 or null")
    need(
        m.quantization == "none" or m.lora,
        f"model.quantization={m.quantization} needs model.lora=true (quantized weights stay frozen)",
    )
    need(e.batch_size >= 1, f"eval.batch_size={e.batch_size}: must be >= 1")
    need(
        e.max_new_tokens is None or e.max_new_tokens >= 1,
        f"eval.max_new_tokens={e.max_new_tokens}: must be >= 1, or null for the benchmark's",
    )
    need(e.temperature > 0, f"eval.temperature={e.temperature}: must be > 0")
    need(0 < e.top_p <= 1, f"eval.top_p={e.top_p}: must be in (0, 1]")
    need(e.bootstrap_samples >= 1, f"eval.bootstrap_samples={e.bootstrap_samples}: must be >= 1")
    need(e.max_examples is None or e.max_examples >= 1, f"eval.max_examples={e.max_examples}: must be >= 1 or null")
    try:
        parse_perturbations(e.perturb)
    except UserError as err:
        raise ConfigError(f"eval.perturb: {err}") from None

    # null components: the benchmark's metric, else composite (data/benchmarks.py), one reward
    comps = r.components if r.components is not None else ["composite"]
    python_rewards = set(python_rewards) | set(r.python_functions)  # the latter: refused where a run needs them
    lost = [n for n in r.python_functions if n not in comps]
    need(not lost, f"reward.python_functions: {lost[0] if lost else ''!r} is not in reward.components; drop it")
    known = all_keys()
    odd = [k for k in t.resume_allow if k not in known]
    need(
        not odd,
        f"train.resume_allow: {odd[0] if odd else ''!r} is not a config key; name keys as section.key "
        "(e.g. train.learning_rate)",
    )
    unknown = [c for c in comps if c not in REWARD_COMPONENTS and not is_import_path(c) and c not in python_rewards]
    need(
        not unknown,
        f"reward.components: unknown {unknown[0] if unknown else ''!r}; choose from "
        f"{', '.join(REWARD_COMPONENTS)}, or name your own function as package.module:function",
    )
    twice = next((c for i, c in enumerate(comps) if c in comps[:i]), None)
    need(
        twice is None, f"reward.components names {twice!r} twice; name each reward once (weigh it with reward.weights)"
    )
    # the name each reward logs and sums under: module:accuracy and other:accuracy would be one
    clash = next(((a, c) for i, c in enumerate(comps) for a in comps[:i] if short_name(a) == short_name(c)), None)
    if clash:
        raise ConfigError(
            f"reward.components: {clash[0]!r} and {clash[1]!r} both log as {short_name(clash[1])!r}; "
            "give each reward its own function name"
        )
    for c in comps:
        if is_import_path(c):
            import_reward(c)  # a typo in the path stops here, naming the module or attribute
    need(len(comps) >= 1, "reward.components: need at least one reward")
    if r.weights is not None:  # null: 1.0 each
        need(
            len(r.weights) == len(comps),
            f"reward.weights has {len(r.weights)} values for {len(comps)} reward.components; give one weight "
            "each, or null for 1.0 each",
        )
        need(all(w >= 0 for w in r.weights), f"reward.weights: weights must be >= 0, got {r.weights}")
    expected = {"bleu1", "exact_match", "substring", "jaccard", "extractable"}
    need(
        set(r.composite_weights) == expected,
        f"reward.composite_weights: give exactly the keys {', '.join(sorted(expected))}",
    )
    _check_weights(list(r.composite_weights.values()), "reward.composite_weights")


def _check_weights(weights: list[float], key: str) -> None:
    if any(w < 0 for w in weights):
        raise ConfigError(f"{key}: weights must be >= 0, got {weights}")
    if abs(sum(weights) - 1.0) > 1e-6:
        raise ConfigError(f"{key}: weights must sum to 1 (within 1e-6), got sum {sum(weights):.6g}")
