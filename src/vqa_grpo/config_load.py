"""Building a Config: the YAML file, the ``section.key=value`` overrides and each value's type
checked against its field; then the value checks of ``validate`` (config_checks.py). config.py
holds the dataclasses."""

from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, Literal

import yaml

from vqa_grpo.config import Config, ConfigError
from vqa_grpo.config_checks import validate as validate  # the value checks, importable from here
from vqa_grpo.config_keys import mark_given, tree_keys

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
