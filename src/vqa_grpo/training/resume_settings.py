"""A resumed run is the run that was started: its settings come back from the checkpoint.

The checkpoint's ``config.yaml`` is what ran up to it. A key the new launch does not set (in its
YAML file, on its command line, or to a value other than the default in Python) takes the
checkpoint's value; a key set to another value is refused in one line naming each such key with
both values, unless it is one a resume may change (:data:`CHANGEABLE`: how long the run goes on,
how often it logs, evaluates and saves, where it runs) or the launch names it in
``train.resume_allow``. The config the run then records (config.yaml, checkpoints, the model card)
is the one that runs from the checkpoint's step on; the changed keys are logged, and kept with the
step they changed at in ``trainer_state.json`` (``settings_changed``).
"""

from __future__ import annotations

import copy
import logging
from pathlib import Path
from typing import Any, Iterable

from vqa_grpo.config import Config
from vqa_grpo.config_keys import flat
from vqa_grpo.config_load import check_config, load_config
from vqa_grpo.errors import UserError
from vqa_grpo.paths import absolute_inputs
from vqa_grpo.training.optim import lr_factor

log = logging.getLogger("vqa_grpo.resume")

CHANGEABLE = (
    "train.max_steps",
    "train.save_steps",
    "train.save_total_limit",
    "train.eval_steps",
    "train.logging_steps",
    "train.log_completion_groups",
    "train.progress",
    "train.report_to",
    "train.wandb_project",
    "train.device",
    "train.cpu_threads",
    "train.collective_timeout",
    "train.max_bad_steps",
    "train.empty_cuda_cache",
    "train.offload_activations",
    "train.merge_lora",
    "eval.batch_size",
    "eval.bootstrap_samples",
    "model.gradient_checkpointing",
    "grpo.logprob_chunk_size",
)
"""Keys a resume may change without train.resume_allow: the run's length (with a linear or cosine
schedule the remaining steps follow the new train.max_steps), its logging, evaluation and saving
frequency, its sinks, its device and threads, and memory-for-compute trades. None of them changes
what a step computes."""

PER_LAUNCH = ("train.output_dir", "train.resume", "train.resume_allow")
"""This launch's own: never taken from the checkpoint nor compared with it."""


def restore(
    cfg: Config, ckpt: Path | None, given: Iterable[str], python_rewards: Iterable[str] = (), say: bool = True
) -> tuple[Config, dict[str, list]]:
    """The config to resume ``ckpt`` with, and the keys it changes ({key: [old, new]}).

    ``given``: the keys the launch set (config_keys.given_keys). ``python_rewards``: names of reward
    functions passed in Python (they let a config that names them validate). ``say``: log the
    changes made through train.resume_allow (one process of several says it). Without a checkpoint,
    or one saved without config.yaml (an older vqa-grpo), ``cfg`` is returned as it is."""
    if ckpt is None:
        return cfg, {}
    recorded = Path(ckpt) / "config.yaml"
    if not recorded.is_file():
        log.warning("%s has no config.yaml (saved by an older vqa-grpo): its settings are not checked", ckpt)
        return cfg, {}
    # A checkpoint saved before config.yaml recorded its paths absolute names them as typed: taken
    # from here, as the same command line launched from the same directory names them.
    old = absolute_inputs(_load(recorded, python_rewards))
    new, was, given = flat(cfg), flat(old), set(given)
    allowed = set(CHANGEABLE) | set(cfg.train.resume_allow)
    if "reward.components" in allowed:  # python_functions follows components: never the user's to name
        allowed.add("reward.python_functions")
    out, changed, refused = copy.deepcopy(old), {}, []
    for key, value in new.items():
        if key in PER_LAUNCH:
            _set(out, key, value)
        elif key in given and value != was[key]:
            if key in allowed:
                _set(out, key, value)
                changed[key] = [was[key], value]
            else:
                refused.append(key)
    if "reward.components" in refused and "reward.python_functions" in refused:
        refused.remove("reward.python_functions")
    if refused:
        said = "; ".join(f"{k}={show(new[k])} differs from the checkpoint's {show(was[k])}" for k in refused)
        them = "them" if len(refused) > 1 else "it"
        raise UserError(
            f"resume: {said} ({recorded}); leave {them} out to go on as the run was started, or change {them} "
            f"from this step on with train.resume_allow=[{','.join(refused)}]"
        )

    out = check_config(out, python_rewards)
    for key, (a, b) in changed.items():
        if say and key not in CHANGEABLE:
            log.warning(
                "resuming %s with %s=%s (it ran with %s; train.resume_allow)", Path(ckpt).name, key, show(b), show(a)
            )
    return out, changed


def missing_python_rewards(cfg: Config, given: Iterable[str], resumed: bool) -> None:
    """A UserError naming the reward functions the run was given in Python without an import path
    (reward.python_functions) that are not given now: nothing else could score them."""
    missing = [n for n in cfg.reward.python_functions if n not in set(given)]
    if not missing:
        return
    names = ", ".join(repr(n) for n in missing)
    what = "the run was trained with" if resumed else "reward.components names"
    raise UserError(
        f"{'resume: ' if resumed else ''}{what} the Python reward function{'s' if len(missing) > 1 else ''} {names}, "
        "given to vqa_grpo.train(reward_funcs=...) without an import path (a lambda, a closure or a function of a "
        "script's __main__); pass it again through reward_funcs, or define it in a module and name it in "
        "reward.components as package.module:function"
    )


def apply_to_optimizer(optimizer, scheduler, cfg: Config) -> None:
    """The learning rate, weight decay and betas of ``cfg`` in the restored optimizer and schedule
    (a checkpoint's hold the values it ran with: a change through train.resume_allow would not take
    effect otherwise), and the rate of the next step recomputed as the schedule computes it (equal,
    bit for bit, to the restored one when nothing changed)."""
    t = cfg.train
    scheduler.base_lrs = [t.learning_rate] * len(optimizer.param_groups)
    for group in optimizer.param_groups:
        group.update(initial_lr=t.learning_rate, weight_decay=t.weight_decay, betas=tuple(t.adam_betas))
        group["lr"] = t.learning_rate * lr_factor(scheduler.last_epoch, t)
    scheduler._last_lr = [g["lr"] for g in optimizer.param_groups]


def show(value: Any) -> str:
    """A value as it is written on the command line: null, true, [a,b], 1e-05."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(show(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ",".join(f"{k}: {show(v)}" for k, v in value.items()) + "}"
    return str(value)


def _load(recorded: Path, python_rewards: Iterable[str]) -> Config:
    try:
        return check_config(load_config(recorded), python_rewards)
    except UserError as e:
        raise UserError(f"resume: the checkpoint's {recorded} does not load: {e}") from None


def _set(cfg: Config, key: str, value: Any) -> None:
    *sections, name = key.split(".")
    node = cfg
    for s in sections:
        node = getattr(node, s)
    setattr(node, name, copy.deepcopy(value))
