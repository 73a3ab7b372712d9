"""Bad input to the `vqa-grpo` command: exit code 2, one line on stderr that starts with "error:",
no traceback, and nothing written.

Most cases call ``vqa_grpo.cli.main([...])`` in this process; a few run the real command as a
subprocess to check that contract at the process level.
"""

from __future__ import annotations

import shutil

import pytest
from test_cli import cli

from vqa_grpo.cli import main
from vqa_grpo.errors import UserError


def assert_user_error(rc: int, err: str) -> None:
    assert rc == 2, err
    assert err.startswith("error: "), err
    assert err.strip().count("\n") == 0, f"more than one line on stderr:\n{err}"
    assert "Traceback" not in err


@pytest.fixture
def out_dir(tmp_path):
    """A run directory that must not exist after a refused command."""
    d = tmp_path / "run"
    yield d
    assert not d.exists(), f"{d} was written although the command failed"


@pytest.fixture(scope="module")
def no_processor_model(tiny_model_dir, tmp_path_factory):
    """The tiny model without its processor (or preprocessor) config."""
    d = tmp_path_factory.mktemp("noproc") / "model"
    shutil.copytree(tiny_model_dir, d)
    for f in list(d.glob("*processor*.json")):
        f.unlink()
    return d


def run_refused(capsys, args: list[str]) -> str:
    rc = main(args)
    err = capsys.readouterr().err
    assert_user_error(rc, err)
    return err


def test_missing_config_file_in_a_subprocess(tmp_path, out_dir):
    res = cli("train", "--config", str(tmp_path / "nope.yaml"), f"train.output_dir={out_dir}")
    assert_user_error(res.returncode, res.stderr)
    assert "nope.yaml" in res.stderr
    assert res.stdout == ""


def test_model_dir_without_processor_in_a_subprocess(synth_dir, no_processor_model, out_dir):
    res = cli(
        "train", f"data.path={synth_dir}", f"model.name_or_path={no_processor_model}", f"train.output_dir={out_dir}"
    )
    assert_user_error(res.returncode, res.stderr)
    assert "processor" in res.stderr


def test_debug_shows_the_traceback_in_a_subprocess(tmp_path, out_dir):
    res = cli("--debug", "train", "--config", str(tmp_path / "nope.yaml"), f"train.output_dir={out_dir}")
    assert res.returncode != 0 and res.returncode != 2
    assert "Traceback" in res.stderr and "ConfigError" in res.stderr


@pytest.mark.parametrize("command", ["sft", "train"])
@pytest.mark.parametrize(
    "overrides, says",
    [
        (["model.foo=1"], "model.foo"),
        (["train.max_steps=abc"], "train.max_steps"),
        (["grpo.num_generations=1"], "grpo.num_generations"),
        (["reward.components=[composite,format]", "reward.weights=[0.9]"], "reward.weights"),
    ],
    ids=["unknown-key", "wrong-type", "num_generations=1", "weights"],
)
def test_bad_config_is_refused_before_anything_loads(command, overrides, says, capsys, out_dir):
    err = run_refused(capsys, [command, *overrides, f"train.output_dir={out_dir}"])
    assert says in err


def test_missing_config_file(capsys, tmp_path, out_dir):
    for command in ("sft", "train"):
        err = run_refused(capsys, [command, "--config", str(tmp_path / "nope.yaml"), f"train.output_dir={out_dir}"])
        assert "nope.yaml" in err


def test_missing_data_path_with_a_valid_model(tiny_model_dir, capsys, out_dir):
    err = run_refused(
        capsys,
        ["train", "data.path=/nonexistent", f"model.name_or_path={tiny_model_dir}", f"train.output_dir={out_dir}"],
    )
    assert "/nonexistent" in err


def test_data_path_that_is_not_data(tiny_model_dir, tmp_path, capsys, out_dir):
    (tmp_path / "empty").mkdir()
    (tmp_path / "broken.jsonl").write_text('{"question": "what?"\n')
    for path in (tmp_path / "empty", tmp_path / "broken.jsonl"):
        err = run_refused(
            capsys,
            ["train", f"data.path={path}", f"model.name_or_path={tiny_model_dir}", f"train.output_dir={out_dir}"],
        )
        assert path.name in err


def test_model_dir_without_processor(synth_dir, no_processor_model, capsys, out_dir):
    for command in ("sft", "train"):
        err = run_refused(
            capsys,
            [
                command,
                f"data.path={synth_dir}",
                f"model.name_or_path={no_processor_model}",
                f"train.output_dir={out_dir}",
            ],
        )
        assert "processor" in err


def test_missing_model_dir(synth_dir, tmp_path, capsys, out_dir):
    err = run_refused(
        capsys,
        [
            "train",
            f"data.path={synth_dir}",
            f"model.name_or_path={tmp_path / 'nomodel'}",
            f"train.output_dir={out_dir}",
        ],
    )
    assert "nomodel" in err


@pytest.mark.parametrize("value", ["", "''"], ids=["bare", "quoted"])
def test_empty_model_name(synth_dir, value, capsys, out_dir):
    err = run_refused(
        capsys, ["train", f"data.path={synth_dir}", f"model.name_or_path={value}", f"train.output_dir={out_dir}"]
    )
    assert "model.name_or_path" in err


def test_unknown_model_family_is_refused_before_the_model_loads(synth_dir, tiny_model_dir, capsys, out_dir):
    err = run_refused(
        capsys,
        [
            "train",
            f"data.path={synth_dir}",
            f"model.name_or_path={tiny_model_dir}",
            "model.family=nope",
            f"train.output_dir={out_dir}",
        ],
    )
    assert "model.family" in err


def test_evaluate_bad_input_writes_nothing(synth_dir, tiny_model_dir, no_processor_model, capsys, out_dir):
    run_refused(
        capsys, ["evaluate", "--model", str(no_processor_model), "--data", str(synth_dir), "--out", str(out_dir)]
    )
    run_refused(capsys, ["evaluate", "--model", str(tiny_model_dir), "--data", "/nonexistent", "--out", str(out_dir)])
    run_refused(
        capsys,
        ["evaluate", "--model", str(tiny_model_dir), "--data", str(synth_dir), "--out", str(out_dir), "eval.nope=1"],
    )


def test_other_subcommands_refuse_bad_input(tmp_path, capsys, out_dir):
    run_refused(capsys, ["data", "synth", "--out", str(out_dir), "--n", "0"])
    run_refused(capsys, ["data", "inspect", "/nonexistent"])
    run_refused(capsys, ["score", str(tmp_path / "nope.jsonl")])
    run_refused(capsys, ["model", "tiny", "--family", "nope", "--out", str(out_dir)])


def test_debug_reraises_the_user_error(tmp_path):
    with pytest.raises(UserError):
        main(["--debug", "train", "--config", str(tmp_path / "nope.yaml")])


def test_synth_with_too_small_image_size(capsys, out_dir):
    run_refused(capsys, ["data", "synth", "--out", str(out_dir), "--image-size", "5"])


def test_lora_rank_zero(synth_dir, tiny_model_dir, capsys, out_dir):
    run_refused(
        capsys,
        [
            "train",
            f"data.path={synth_dir}",
            f"model.name_or_path={tiny_model_dir}",
            "model.lora=true",
            "model.lora_r=0",
            f"train.output_dir={out_dir}",
        ],
    )


def _flash_attn_installed() -> bool:
    import importlib.util

    return importlib.util.find_spec("flash_attn") is not None


@pytest.mark.skipif(_flash_attn_installed(), reason="flash-attn is installed here")
def test_flash_attention_without_flash_attn(synth_dir, tiny_model_dir, capsys, out_dir):
    # The Phi-3 configs ask for flash_attention_2; without the package the user should get one
    # line that says to install it or use sdpa.
    err = run_refused(
        capsys,
        [
            "train",
            f"data.path={synth_dir}",
            f"model.name_or_path={tiny_model_dir}",
            "model.attn_implementation=flash_attention_2",
            f"train.output_dir={out_dir}",
        ],
    )
    assert "sdpa" in err


def test_bad_resume_path_writes_nothing(synth_dir, tiny_model_dir, capsys, out_dir, tmp_path):
    err = run_refused(
        capsys,
        [
            "train",
            f"data.path={synth_dir}",
            f"model.name_or_path={tiny_model_dir}",
            f"train.output_dir={out_dir}",
            f"train.resume={tmp_path / 'nowhere'}",
        ],
    )
    assert "train.resume" in err


def test_a_missing_model_that_looks_like_a_hub_id(synth_dir, capsys, out_dir, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)  # read at import time
    err = run_refused(
        capsys,
        ["train", f"data.path={synth_dir}", "model.name_or_path=nobody/no-such-model", f"train.output_dir={out_dir}"],
    )
    assert "nobody/no-such-model" in err
