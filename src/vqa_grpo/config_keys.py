"""A Config as dotted keys (``train.learning_rate``), and which of them the user set.

A resumed run takes the checkpoint's value for every key the user did not set again
(training/resume_settings.py); "set" means written in the YAML file or on the command line
(``load_config`` records those keys on the Config it returns), or holding a value other than
the default (a Config built or changed in Python).
"""

from __future__ import annotations

import dataclasses
import typing
from typing import Any

from vqa_grpo.config import Config

_GIVEN = "_given_keys"


def flat(cfg: Any, prefix: str = "") -> dict[str, Any]:
    """``{"train.learning_rate": 1e-05, "data.columns.image": "image", ...}``: every setting of a
    Config (or of one section), a mapping such as reward.composite_weights being one value."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if dataclasses.is_dataclass(value):
            out.update(flat(value, f"{prefix}{f.name}."))
        else:
            out[prefix + f.name] = value
    return out


def tree_keys(tree: dict, cls: type = Config, prefix: str = "") -> set[str]:
    """The dotted keys a YAML tree (or overrides) sets, down to the settings of ``cls``."""
    hints = typing.get_type_hints(cls)
    keys: set[str] = set()
    for name, value in tree.items():
        tp = hints.get(name)
        if dataclasses.is_dataclass(tp) and isinstance(value, dict):
            keys |= tree_keys(value, tp, f"{prefix}{name}.")
        else:
            keys.add(prefix + name)
    return keys


def mark_given(cfg: Config, keys: set[str] | frozenset[str]) -> Config:
    """Record on ``cfg`` the keys its file and overrides set (not a field: never saved)."""
    cfg.__dict__[_GIVEN] = frozenset(keys)
    return cfg


def given_keys(cfg: Config) -> frozenset[str]:
    """The keys the user set: those ``load_config`` recorded, and every one whose value is not the default."""
    default = flat(Config())
    changed: set[str] = set()
    for k, v in flat(cfg).items():
        if k in default:
            changed |= {k} if v != default[k] else set()
        else:  # a section set as a dict in Python (cfg.data.columns = {...}): each of its keys
            changed |= {d for d in default if d.startswith(k + ".")}
    return frozenset(cfg.__dict__.get(_GIVEN, frozenset()) | changed)


def all_keys() -> list[str]:
    """Every setting's dotted key, in the order of the dataclasses."""
    return list(flat(Config()))
