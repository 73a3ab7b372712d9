"""The `vqa-grpo` command: --help of every subcommand, the offline builders and inspection, and
where config overrides may go on the command line.

Most cases call ``vqa_grpo.cli.main([...])`` in this process (torch is imported once); a few run
the real command as a subprocess. Bad input and its one-line errors: test_cli_bad_input.py.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from vqa_grpo import config as C
from vqa_grpo.cli import build_parser, main
from vqa_grpo.config_load import load_config

REPO = Path(__file__).resolve().parents[1]

SUBCOMMANDS = [
    ["data", "synth"],
    ["data", "inspect"],
    ["model", "tiny"],
    ["sft"],
    ["train"],
    ["evaluate"],
    ["score"],
    ["compare"],
    ["report"],
    ["judge"],
    ["agreement"],
    ["demo"],
]


def cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    """The real command, as a user runs it (one OpenMP thread: see tests/conftest.py)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, "-m", "vqa_grpo.cli", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO,
        timeout=timeout,
    )


def subparser(path: list[str]) -> argparse.ArgumentParser:
    parser = build_parser()
    for name in path:
        sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        parser = sub.choices[name]
    return parser


def help_text(capsys, args: list[str]) -> str:
    with pytest.raises(SystemExit) as info:
        main([*args, "--help"])
    assert info.value.code == 0
    return capsys.readouterr().out


def config_keys() -> list[tuple[str, object]]:
    """Every dotted config key with its default, nested sections (data.columns) included."""
    keys = []
    for section in dataclasses.fields(C.Config):
        default = section.default_factory()
        for f in dataclasses.fields(default):
            value = getattr(default, f.name)
            if dataclasses.is_dataclass(value):
                keys += [
                    (f"{section.name}.{f.name}.{g.name}", getattr(value, g.name)) for g in dataclasses.fields(value)
                ]
            else:
                keys.append((f"{section.name}.{f.name}", value))
    return keys


# ---- --help ----------------------------------------------------------------------------------


def test_top_level_help_lists_the_subcommands_in_a_subprocess():
    res = cli("--help")
    assert res.returncode == 0
    for name in ("data", "model", "sft", "train", "evaluate", "score", "demo", "--debug"):
        assert name in res.stdout


@pytest.mark.parametrize("path", SUBCOMMANDS, ids=" ".join)
def test_help_mentions_every_option_and_its_default(path, capsys):
    text = help_text(capsys, path)
    for action in subparser(path)._actions:
        if isinstance(action, argparse._HelpAction):
            continue
        if not action.option_strings:  # a positional: named in the usage and described
            assert action.dest in text and action.help
            continue
        assert action.option_strings[-1] in text
        assert action.help and ("default" in action.help or "required" in action.help), action.option_strings
        if action.default not in (None, False, argparse.SUPPRESS):
            assert f"default: {action.default}" in text, action.option_strings


@pytest.mark.parametrize("command", ["sft", "train", "evaluate"])
def test_training_help_lists_every_config_key_with_its_default(command, capsys):
    text = help_text(capsys, [command])
    lines = text.splitlines()
    for key, default in config_keys():
        line = next((ln for ln in lines if ln.strip().startswith(f"{key} = ")), None)
        assert line is not None, f"{key} missing from `vqa-grpo {command} --help`"
        assert repr(default) in line


# ---- the builders and inspection -------------------------------------------------------------


def test_synth_twice_with_the_same_seed_is_byte_identical(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    assert cli("data", "synth", "--out", str(a), "--n", "30", "--seed", "3").returncode == 0
    assert main(["data", "synth", "--out", str(b), "--n", "30", "--seed", "3"]) == 0
    assert (a / "data.jsonl").read_bytes() == (b / "data.jsonl").read_bytes()
    images = sorted(p.name for p in (a / "images").iterdir())
    assert len(images) == 30 and images == sorted(p.name for p in (b / "images").iterdir())
    assert all((a / "images" / n).read_bytes() == (b / "images" / n).read_bytes() for n in images)
    main(["data", "synth", "--out", str(b), "--n", "30", "--seed", "4"])
    assert (a / "data.jsonl").read_bytes() != (b / "data.jsonl").read_bytes()


def test_model_tiny_writes_a_model_transformers_loads(tmp_path):
    from transformers import AutoModelForImageTextToText, AutoProcessor

    out = tmp_path / "tiny"
    assert main(["model", "tiny", "--out", str(out), "--seed", "1"]) == 0
    model = AutoModelForImageTextToText.from_pretrained(out)
    processor = AutoProcessor.from_pretrained(out)
    assert model.config.model_type == "qwen2_vl"
    assert 1e6 <= sum(p.numel() for p in model.parameters()) <= 5e6
    assert processor.tokenizer.chat_template or processor.chat_template


@pytest.mark.parametrize(
    "command, options",
    [
        (["train"], ["--config", "c.yaml"]),
        (["sft"], ["--config", "c.yaml"]),
        (["evaluate"], ["--model", "m", "--data", "d", "--out", "o", "--config", "c.yaml"]),
        (["data", "inspect", "data.csv"], ["--json", "--format", "csv", "--image-root", "imgs"]),
    ],
)
def test_overrides_go_before_between_and_after_the_options(command, options):
    from vqa_grpo.cli import parse_args

    a, b, c = "train.max_steps=1", "data.columns.image=img", "eval.batch_size=4"
    lines = [
        [*command, a, b, c, *options],  # before
        [*command, a, *options[:2], b, *options[2:], c],  # between
        [*command, *options, a, b, c],  # after
    ]
    parsed = [parse_args(build_parser(), line) for line in lines]
    assert all(p.overrides == [a, b, c] for p in parsed)  # in the order typed
    for key in ("config", "model", "data", "out", "json", "format", "image_root", "path"):
        assert len({str(getattr(p, key, None)) for p in parsed}) == 1, key
    assert str(getattr(parsed[0], "config", None) or getattr(parsed[0], "format", None)) in ("c.yaml", "csv")


def test_an_override_on_a_command_without_overrides_is_refused(capsys):
    with pytest.raises(SystemExit) as err:
        main(["score", "p.jsonl", "eval.batch_size=4"])
    assert err.value.code == 2
    assert (
        "unrecognized arguments: eval.batch_size=4 (this command takes no config overrides)" in capsys.readouterr().err
    )


def test_data_inspect_with_an_override_after_an_option_runs(synth_dir, capsys):
    # The line: `vqa-grpo data inspect data.csv --json data.columns.image=img`.
    assert main(["data", "inspect", str(synth_dir), "--json", "data.columns.question=question"]) == 0
    assert json.loads(capsys.readouterr().out)["kept"] == 200


def test_data_inspect_json_prints_one_object(synth_dir, capsys):
    assert main(["data", "inspect", str(synth_dir), "--json"]) == 0
    out = capsys.readouterr().out
    report = json.loads(out)  # the whole of stdout is one JSON object
    assert isinstance(report, dict)
    assert {"rows", "kept", "skipped", "answer_types"} <= set(report)
    assert report["rows"] == report["kept"] == 200
    assert set(report["answer_types"]) == {"yes/no", "number", "other"}
    assert sum(report["answer_types"].values()) == 200


def test_tiny_cpu_config_trains_one_step(synth_dir, tiny_model_dir, tmp_path, capsys):
    """configs/tiny_cpu.yaml works with `vqa-grpo train --config` (paths pointed at the fixtures)."""
    run_dir = tmp_path / "run"
    rc = main(
        [
            "train",
            f"model.name_or_path={tiny_model_dir}",
            "--config",
            str(REPO / "configs" / "tiny_cpu.yaml"),
            f"data.path={synth_dir}",
            f"train.output_dir={run_dir}",
            "train.max_steps=1",
            "train.per_device_batch_size=2",
            "grpo.num_generations=2",
            "train.save_steps=0",
            "train.progress=false",
            "data.max_eval_samples=4",
        ]
    )
    assert rc == 0
    assert (run_dir / "config.yaml").is_file() and (run_dir / "final").is_dir()
    saved = load_config(run_dir / "config.yaml")
    assert saved.reward.components == ["vqa_accuracy", "composite"]  # from the file
    assert saved.train.max_steps == 1  # from the command line
