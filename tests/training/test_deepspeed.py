"""DeepSpeed ZeRO-2 and ZeRO-3 on several processes: `accelerate launch --config_file
configs/accelerate/deepspeed_zero{2,3}.yaml --num_processes 2 -m vqa_grpo.cli ...` on the CPU (gloo),
against one process or DDP.

2 processes x batch 1 must make the update of 1 process x batch 2 (within 1e-5 in fp32) and write
the files of a 1-process run, once, with AdamW's moments gathered into its optimizer.pt; ZeRO-3
must hold half of every weight on each rank; a resumed run must end bitwise as the uninterrupted
one; GRPO under ZeRO-3 must sample in step and make DDP's update; `evaluate` under ZeRO-3 must give
the answers of one process.
"""

from __future__ import annotations

import importlib.util
import math

import pytest
import torch
from launches import (
    RUN_FILES,
    SFT,
    assert_processes_equal_one,
    assert_resume_ends_bitwise,
    assert_same_scores,
    assert_sharded_evaluate_equals_one_process,
    common,
    evals,
    grpo_run,
    launch,
    one_process_sft,
    steps,
)
from safetensors.torch import load_file

from vqa_grpo.config_load import load_config
from vqa_grpo.distributed import DeepSpeed, DeepSpeedSettings
from vqa_grpo.errors import UserError

# find_spec, not importorskip: collecting this file (on every pytest-xdist worker) need not import DeepSpeed
pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("deepspeed") is None, reason="the deepspeed extra is not installed"
)

# SFT: DeepSpeed's accumulation boundary every second backward


@pytest.fixture(scope="module")
def one_process(synth_dir, tiny_model_dir, tmp_path_factory):
    """The same 4 SFT steps on 1 process x batch 2 (made once for this file, test_fsdp.py's and others)."""
    return one_process_sft(synth_dir, tiny_model_dir, tmp_path_factory)


@pytest.fixture(scope="module", params=[2, 3], ids=["zero2", "zero3"])
def zero_sft(request, synth_dir, tiny_model_dir, tmp_path_factory):
    """4 SFT steps under ZeRO-<stage>, 2 processes x batch 1 x 2 micro-batches, evaluating and saving every 2 steps."""
    stage = request.param
    out = tmp_path_factory.mktemp(f"zero{stage}") / "run"
    done = launch(
        "sft",
        common(synth_dir, tiny_model_dir, out, "train.per_device_batch_size=1", *SFT),
        config=f"deepspeed_zero{stage}",
    )
    return stage, out, done


@pytest.mark.slow
def test_two_processes_of_batch_one_equal_one_process_of_batch_two(zero_sft, one_process, tiny_model_dir):
    stage, out2, done = zero_sft
    out1 = one_process
    # DeepSpeed's clipping norm is logged, the loop's schedule sets the rate; AdamW's moments are
    # gathered into an optimizer.pt of a 1-process run's layout (parameters by index)
    assert_processes_equal_one(out1, out2, done, tiny_model_dir)
    assert "shm_comm" not in done.stdout + done.stderr  # the CPU inference all-reduce, neither built nor loaded
    assert [r["step"] for r in evals(out2)] == [2, 4]
    for got, want in zip(evals(out2), evals(out1), strict=True):
        assert_same_scores(got, want)
    assert sorted(p.name for p in out2.iterdir()) == RUN_FILES
    assert sorted(p.name for p in (out2 / "final").iterdir()) == sorted(p.name for p in (out1 / "final").iterdir())


@pytest.mark.slow
def test_the_processes_hold_the_weights_as_the_stage_says(zero_sft, tiny_model_dir):
    from transformers import AutoModelForImageTextToText

    stage, _, done = zero_sft
    params = list(AutoModelForImageTextToText.from_pretrained(tiny_model_dir).parameters())  # tied weights once
    full = sum(p.numel() for p in params)
    held = (
        sum(math.ceil(p.numel() / 2) for p in params) if stage == 3 else full
    )  # ZeRO-3: each weight in 2 equal (padded) parts
    assert held < full or stage == 2
    assert (
        f"sft: 2 processes, DeepSpeed ZeRO-{stage} on cpu, {held:,} of {full:,} parameters on this process"
        in done.stderr
    )


@pytest.mark.slow
def test_resume_ends_bitwise_equal(zero_sft, synth_dir, tiny_model_dir, tmp_path):
    stage, full, _ = zero_sft
    assert_resume_ends_bitwise(full, tmp_path / "resumed", synth_dir, tiny_model_dir, f"deepspeed_zero{stage}")


@pytest.mark.slow
def test_zero3_grpo_samples_in_step_and_makes_the_update_of_ddp(synth_dir, tiny_model_dir, tmp_path_factory):
    ddp = grpo_run("ddp", synth_dir, tiny_model_dir, tmp_path_factory)
    zero3 = grpo_run("deepspeed_zero3", synth_dir, tiny_model_dir, tmp_path_factory)
    a, b = steps(ddp), steps(zero3)
    assert [r["step"] for r in b] == [1, 2]
    # Some rows stopped before the 4-token limit and others ran to it, so a rank kept stepping for
    # the other; the partitioned reference copy equals the policy at step 1.
    assert 0 < b[0]["truncated_fraction"] < 1 and b[0]["kl"] == 0.0
    for r1, r2 in zip(a, b):
        assert r2 == pytest.approx(r1, rel=1e-5, abs=1e-8)
    for name in ("checkpoint-1", "final"):
        w_ddp, w_zero = (load_file(r / name / "model.safetensors") for r in (ddp, zero3))
        assert sorted(w_zero) == sorted(w_ddp)
        for k in w_ddp:
            torch.testing.assert_close(w_zero[k], w_ddp[k], rtol=0, atol=1e-5)


@pytest.mark.slow
def test_zero3_evaluate_gives_the_answers_of_one_process(synth_dir, tiny_model_dir, tmp_path, tmp_path_factory):
    assert_sharded_evaluate_equals_one_process("deepspeed_zero3", synth_dir, tiny_model_dir, tmp_path, tmp_path_factory)


# ---- the launch's DeepSpeed settings -------------------------------------------------------------

BASE = {
    "ACCELERATE_USE_DEEPSPEED": "true",
    "ACCELERATE_DEEPSPEED_ZERO_STAGE": "3",
    "ACCELERATE_DEEPSPEED_OFFLOAD_OPTIMIZER_DEVICE": "none",
    "ACCELERATE_DEEPSPEED_OFFLOAD_PARAM_DEVICE": "none",
    "ACCELERATE_DEEPSPEED_ZERO3_INIT": "false",
    "ACCELERATE_DEEPSPEED_ZERO3_SAVE_16BIT_MODEL": "true",
    "ACCELERATE_MIXED_PRECISION": "no",
}


def test_deepspeed_settings_are_read_from_what_accelerate_exports():
    assert DeepSpeedSettings.from_env({}) is None
    assert DeepSpeedSettings.from_env(BASE) == DeepSpeedSettings(3, accumulation=None, clipping=None)
    named = {
        **BASE,
        "ACCELERATE_DEEPSPEED_ZERO_STAGE": "2",
        "ACCELERATE_GRADIENT_ACCUMULATION_STEPS": "4",
        "ACCELERATE_GRADIENT_CLIPPING": "0.5",
    }
    assert DeepSpeedSettings.from_env(named) == DeepSpeedSettings(2, accumulation=4, clipping=0.5)
    train = load_config(
        None, ["train.per_device_batch_size=3", "train.gradient_accumulation_steps=4", "train.max_grad_norm=0.5"]
    ).train
    config = DeepSpeedSettings(3, None, None).config(train)
    assert (
        config["train_micro_batch_size_per_gpu"],
        config["gradient_accumulation_steps"],
        config["gradient_clipping"],
    ) == (3, 4, 0.5)
    assert config["zero_optimization"] == {"stage": 3, "stage3_param_persistence_threshold": 0}


@pytest.mark.parametrize(
    "key,value,fix",
    [
        ("ACCELERATE_DEEPSPEED_ZERO_STAGE", "1", "set zero_stage: 2 or 3"),
        ("ACCELERATE_DEEPSPEED_OFFLOAD_OPTIMIZER_DEVICE", "cpu", "set offload_optimizer_device: none"),
        ("ACCELERATE_DEEPSPEED_OFFLOAD_PARAM_DEVICE", "nvme", "set offload_param_device: none"),
        ("ACCELERATE_DEEPSPEED_ZERO3_INIT", "true", "set zero3_init_flag: false"),
        ("ACCELERATE_DEEPSPEED_CONFIG_FILE", "ds.json", "remove it and set zero_stage"),
        ("ACCELERATE_MIXED_PRECISION", "bf16", "train.mixed_precision=bf16"),
    ],
)
def test_deepspeed_settings_that_cannot_run_are_one_line_errors(key, value, fix):
    with pytest.raises(UserError, match=fix) as err:
        DeepSpeedSettings.from_env({**BASE, key: value})
    assert "\n" not in str(err.value)


@pytest.mark.parametrize(
    "overrides,env,message",
    [
        (
            ["train.gradient_accumulation_steps=2"],
            {"ACCELERATE_GRADIENT_ACCUMULATION_STEPS": "1"},
            "gradient_accumulation_steps=1 in the accelerate config but train.gradient_accumulation_steps=2",
        ),
        (
            ["train.max_grad_norm=0.3"],
            {"ACCELERATE_GRADIENT_CLIPPING": "1.0"},
            "gradient_clipping=1 in the accelerate config but train.max_grad_norm=0.3",
        ),
        (
            ["model.quantization=4bit", "model.lora=true"],
            {},
            "model.quantization=4bit is not supported under DeepSpeed",
        ),
        (["grpo.generation_backend=vllm"], {}, "grpo.generation_backend=vllm needs the full weights"),
    ],
)
def test_runs_deepspeed_cannot_take_are_refused_before_loading(overrides, env, message):
    dist = DeepSpeed(DeepSpeedSettings.from_env({**BASE, **env}))
    with pytest.raises(UserError, match=message):
        dist.check_config(load_config(None, overrides))
