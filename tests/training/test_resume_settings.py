"""A resumed run is the run that was started (training/resume_settings.py): its settings come back
from the checkpoint, a changed one is refused naming both values unless a resume may change it
(train.max_steps, ...) or train.resume_allow names it, and config.yaml records what ran. Reward
functions given in Python are recorded by import path, so that the run's config.yaml loads from the
command line; one without a path is named wherever it is missing.

Runs through the CLI (in this process) and the API, on the tiny model: 2 steps, a checkpoint each.
"""

from __future__ import annotations

import functools
import json
import logging
import shutil
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import yaml

import vqa_grpo
from vqa_grpo import cli
from vqa_grpo.api import import_path
from vqa_grpo.errors import UserError


def args(model_dir, synth_dir, out, *extra: str) -> list[str]:
    return [
        f"model.name_or_path={model_dir}",
        f"data.path={synth_dir}",
        f"train.output_dir={out}",
        "train.device=cpu",
        "train.cpu_threads=1",
        "train.progress=false",
        "train.report_to=none",
        "data.eval_fraction=0",
        "data.max_train_samples=8",
        "train.max_steps=2",
        "train.save_steps=1",
        "train.per_device_batch_size=2",
        "train.learning_rate=1e-3",
        *extra,
    ]


def files(run: Path) -> dict[str, bytes]:
    return {p.relative_to(run).as_posix(): p.read_bytes() for p in sorted(run.rglob("*")) if p.is_file()}


def step_lines(run: Path) -> list[dict]:
    return [json.loads(s) for s in (run / "metrics.jsonl").read_text().splitlines() if '"loss"' in s]


def last_error(capsys) -> str:
    return capsys.readouterr().err.strip().splitlines()[-1]


@pytest.fixture(scope="module")
def sft_run(synth_dir, tiny_model_dir, tmp_path_factory) -> Path:
    """2 SFT steps (checkpoint-1, checkpoint-2, final/), learning rate 1e-3, batch 2."""
    out = tmp_path_factory.mktemp("sft") / "run"
    assert cli.main(["sft", *args(tiny_model_dir, synth_dir, out)]) == 0
    return out


def test_a_resume_that_changes_a_setting_is_refused_naming_the_old_and_new_values(sft_run, tmp_path, capsys):
    before = files(sft_run)
    conf = tmp_path / "more.yaml"
    conf.write_text("train:\n  learning_rate: 0.5\n")  # a file sets one, the command line the other
    line = ["sft", "--config", str(conf), f"train.output_dir={sft_run}", "train.resume=auto"]
    assert cli.main([*line, "train.per_device_batch_size=1"]) == 2
    assert last_error(capsys) == (
        "error: resume: train.per_device_batch_size=1 differs from the checkpoint's 2; train.learning_rate=0.5 "
        f"differs from the checkpoint's 0.001 ({sft_run / 'checkpoint-2' / 'config.yaml'}); leave them out to go "
        "on as the run was started, or change them from this step on with "
        "train.resume_allow=[train.per_device_batch_size,train.learning_rate]"
    )
    assert files(sft_run) == before  # nothing written
    # A run of the other mode is refused too.
    assert cli.main(["train", f"train.output_dir={sft_run}", "train.resume=auto"]) == 2
    assert last_error(capsys) == (
        f"error: resume: {sft_run / 'checkpoint-2'} was saved by vqa-grpo sft, not train; resume it with vqa-grpo "
        "sft, or start a new run from its weights (model.name_or_path) in a new train.output_dir"
    )
    assert files(sft_run) == before


def test_a_resume_naming_only_its_directory_restores_the_run_and_takes_a_new_max_steps(sft_run, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(sft_run, out)
    assert cli.main(["sft", f"train.output_dir={out}", "train.resume=auto", "train.max_steps=3"]) == 0
    started = yaml.safe_load((sft_run / "config.yaml").read_text())
    recorded = yaml.safe_load((out / "config.yaml").read_text())
    started["train"].update(max_steps=3, resume="auto", output_dir=str(out))
    assert recorded == started  # the model, data, rate and batch the run started with
    assert [(r["step"], r["lr"]) for r in step_lines(out)] == [(1, 0.001), (2, 0.001), (3, 0.001)]
    state = json.loads((out / "checkpoint-3" / "trainer_state.json").read_text())
    assert state["settings_changed"] == [{"step": 2, "changed": {"train.max_steps": [2, 3]}}]


def test_resume_allow_changes_a_setting_from_the_checkpoint_on_and_the_run_records_it(sft_run, tmp_path, caplog):
    out = tmp_path / "run"
    shutil.copytree(sft_run, out)
    line = [f"train.output_dir={out}", "train.resume=auto", "train.max_steps=3", "train.learning_rate=0.5"]
    with caplog.at_level(logging.WARNING, logger="vqa_grpo.resume"):
        assert cli.main(["sft", *line, "train.resume_allow=[train.learning_rate]"]) == 0
    assert "resuming checkpoint-2 with train.learning_rate=0.5 (it ran with 0.001; train.resume_allow)" in caplog.text
    assert [(r["step"], r["lr"]) for r in step_lines(out)] == [(1, 0.001), (2, 0.001), (3, 0.5)]
    groups = torch.load(out / "checkpoint-3" / "optimizer.pt", weights_only=True)["param_groups"]
    assert [(g["lr"], g["initial_lr"]) for g in groups] == [(0.5, 0.5)]  # the optimizer ran with it
    recorded = yaml.safe_load((out / "config.yaml").read_text())["train"]
    assert (recorded["learning_rate"], recorded["resume_allow"]) == (0.5, ["train.learning_rate"])
    card = (out / "final" / "README.md").read_text()
    assert "learning_rate: 0.5" in card  # its config, and what changed when
    assert "Resumed at step 2 with `train.max_steps` 2 -> 3, `train.learning_rate` 0.001 -> 0.5." in card
    state = json.loads((out / "checkpoint-3" / "trainer_state.json").read_text())
    changed = {"train.max_steps": [2, 3], "train.learning_rate": [0.001, 0.5]}
    assert state["settings_changed"] == [{"step": 2, "changed": changed}]


# ---- reward functions given in Python ------------------------------------------------------------

REWARDS = """
def brevity(completions, **kwargs):
    return [1.0 if len(c.split()) <= 2 else 0.0 for c in completions]
"""


def half(completions, **kwargs):
    return [0.5] * len(completions)


@pytest.fixture(scope="module")
def python_reward_run(synth_dir, tiny_model_dir, tmp_path_factory):
    """2 GRPO steps with LoRA through the API, rewarded by a module's function and a lambda."""
    where = tmp_path_factory.mktemp("rewards")
    (where / "resume_rewards.py").write_text(textwrap.dedent(REWARDS))
    sys.path.insert(0, str(where))
    import resume_rewards

    out = tmp_path_factory.mktemp("grpo") / "run"
    grpo = ["model.lora=true", "grpo.num_generations=2", "grpo.max_completion_length=4"]
    cfg = vqa_grpo.load_config(None, args(tiny_model_dir, synth_dir, out, *grpo))
    funcs = [resume_rewards.brevity, lambda completions, **kw: [0.0] * len(completions)]
    assert vqa_grpo.train(cfg, reward_funcs=funcs).steps == 2
    yield out, funcs
    sys.path.remove(str(where))


def test_python_rewards_are_recorded_by_import_path_and_the_config_loads_from_the_cli(
    python_reward_run, tmp_path, capsys
):
    run, _ = python_reward_run
    reward = yaml.safe_load((run / "config.yaml").read_text())["reward"]
    assert (reward["components"], reward["python_functions"]) == (
        ["composite", "resume_rewards:brevity", "lambda"],
        ["lambda"],
    )
    conf = str(run / "config.yaml")
    assert cli.main(["sft", "--config", conf, f"train.output_dir={tmp_path / 'sft'}", "train.max_steps=1"]) == 0
    assert cli.main(["merge", str(run / "final"), "--out", str(tmp_path / "merged")]) == 0
    assert (tmp_path / "merged" / "model.safetensors").is_file()
    fix = (
        "given to vqa_grpo.train(reward_funcs=...) without an import path (a lambda, a closure or a function of a "
        "script's __main__); pass it again through reward_funcs, or define it in a module and name it in "
        "reward.components as package.module:function"
    )
    assert cli.main(["train", "--config", conf, f"train.output_dir={tmp_path / 'grpo'}"]) == 2
    assert last_error(capsys) == f"error: reward.components names the Python reward function 'lambda', {fix}"
    assert not (tmp_path / "grpo").exists()
    before = files(run)
    assert cli.main(["train", f"train.output_dir={run}", "train.resume=auto", "train.max_steps=3"]) == 2
    assert last_error(capsys) == f"error: resume: the run was trained with the Python reward function 'lambda', {fix}"
    assert files(run) == before


def test_a_resume_through_the_api_with_the_functions_passed_again_goes_on(python_reward_run, tmp_path):
    run, funcs = python_reward_run
    out = tmp_path / "run"
    shutil.copytree(run, out)
    cfg = vqa_grpo.load_config(None, [f"train.output_dir={out}", "train.resume=auto", "train.max_steps=3"])
    with pytest.raises(UserError) as err:  # one function fewer: the components, not the list derived from them
        vqa_grpo.train(cfg, reward_funcs=funcs[:1])
    assert str(err.value) == (
        "resume: reward.components=[composite,resume_rewards:brevity] differs from the checkpoint's "
        f"[composite,resume_rewards:brevity,lambda] ({out}/checkpoint-2/config.yaml); leave it out to go on as the "
        "run was started, or change it from this step on with train.resume_allow=[reward.components]"
    )
    assert vqa_grpo.train(cfg, reward_funcs=funcs).steps == 3
    assert [("reward/brevity" in r, "reward/lambda" in r) for r in step_lines(out)] == [(True, True)] * 3


def test_which_functions_have_an_import_path():
    assert import_path(half) == f"{__name__}:half"
    assert import_path(lambda c, **k: c) is None
    assert import_path(functools.partial(half)) is None

    def inner(completions, **kwargs):
        return completions

    assert import_path(inner) is None  # a closure
    scope = {"__name__": "__main__"}
    exec("def script_reward(completions, **kwargs):\n    return completions", scope)
    assert import_path(scope["script_reward"]) is None  # a script's: another process cannot import it


def test_a_config_naming_an_unknown_key_to_allow_is_refused():
    with pytest.raises(UserError, match=r"^train.resume_allow: 'train.lr' is not a config key; name keys as"):
        vqa_grpo.load_config(None, ["train.resume_allow=[train.lr]"])


def test_a_run_started_with_relative_paths_resumes_from_another_directory(
    synth_dir, tiny_model_dir, tmp_path, monkeypatch
):
    import os

    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path)
    one = args(os.path.relpath(tiny_model_dir), os.path.relpath(synth_dir), "run", "train.max_steps=1")
    assert cli.main(["sft", *one]) == 0
    recorded = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert (recorded["model"]["name_or_path"], recorded["data"]["path"]) == (str(tiny_model_dir), str(synth_dir))
    monkeypatch.chdir(tmp_path / "elsewhere")
    again = f"data.path={os.path.relpath(synth_dir)}"  # the same folder, named from here: not a change
    assert cli.main(["sft", "train.output_dir=../run", "train.resume=auto", "train.max_steps=2", again]) == 0
    assert [r["step"] for r in step_lines(tmp_path / "run")] == [1, 2]


def test_a_checkpoint_that_recorded_relative_paths_resumes_with_the_same_command_line(tmp_path, monkeypatch):
    """An older vqa-grpo recorded model.name_or_path and data.path as typed: the same command line,
    launched from the same directory, names the same folders (now made absolute before comparing)."""
    from vqa_grpo.config import to_dict
    from vqa_grpo.config_load import load_config
    from vqa_grpo.paths import absolute_inputs
    from vqa_grpo.training.resume_settings import restore

    monkeypatch.chdir(tmp_path)
    for folder in ("m", "d", "run/checkpoint-2"):
        (tmp_path / folder).mkdir(parents=True)
    line = ["model.name_or_path=m", "data.path=d", "train.output_dir=run"]
    (tmp_path / "run/checkpoint-2/config.yaml").write_text(yaml.safe_dump(to_dict(load_config(None, line))))
    now = absolute_inputs(load_config(None, [*line, "train.resume=auto"]))
    cfg, changed = restore(now, tmp_path / "run/checkpoint-2", {"model.name_or_path", "data.path"})
    assert (cfg.model.name_or_path, cfg.data.path, changed) == (str(tmp_path / "m"), str(tmp_path / "d"), {})
