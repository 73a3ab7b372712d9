"""FSDP2 on several processes: `accelerate launch --config_file configs/accelerate/fsdp.yaml
--num_processes 2 -m vqa_grpo.cli ...` on the CPU (gloo), against one process or DDP.

Each rank must hold half of every weight; 2 processes x batch 1 must make the update of 1 process x
batch 2 (within 1e-5 in fp32) and write the files of a 1-process run, once; a resumed run must end
bitwise as the uninterrupted one; GRPO must sample in step when one rank's rows stop first and
make DDP's update; LoRA must train as on one process; `evaluate` must give the answers of one process.
"""

from __future__ import annotations

import json
import math

import pytest
import torch
from launches import (
    EVAL,
    RUN_FILES,
    SFT,
    assert_processes_equal_one,
    assert_resume_ends_bitwise,
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
from vqa_grpo.distributed import FSDP2, FSDPSettings, wrap_targets
from vqa_grpo.errors import UserError
from vqa_grpo.training import loop


def same_scores(records: list[dict]):
    """Evaluation records equal to ``records`` up to the semantic model's embeddings, which may differ
    in the 6th-7th digit between processes (its batches are padded differently)."""
    return [pytest.approx(r, rel=1e-5, abs=1e-9) for r in records]


@pytest.fixture(scope="module")
def fsdp_sft(synth_dir, tiny_model_dir, tmp_path_factory):
    """4 SFT steps under FSDP, 2 processes x batch 1 x 2 micro-batches, evaluating and saving every 2 steps."""
    out = tmp_path_factory.mktemp("fsdp") / "run"
    done = launch("sft", common(synth_dir, tiny_model_dir, out, "train.per_device_batch_size=1", *SFT), config="fsdp")
    return out, done


@pytest.mark.slow
def test_fsdp_two_processes_of_batch_one_equal_one_process_of_batch_two(
    fsdp_sft, synth_dir, tiny_model_dir, tmp_path_factory
):
    out2, done = fsdp_sft
    out1 = one_process_sft(synth_dir, tiny_model_dir, tmp_path_factory)
    # the optimizer file too: the layout of a 1-process run (parameters by index)
    assert_processes_equal_one(out1, out2, done, tiny_model_dir)
    assert [r["step"] for r in evals(out2)] == [2, 4] and evals(out2) == same_scores(evals(out1))
    assert sorted(p.name for p in out2.iterdir()) == RUN_FILES


@pytest.mark.slow
def test_fsdp_keeps_half_of_every_weight_on_each_process(fsdp_sft, tiny_model_dir):
    from transformers import AutoModelForImageTextToText

    model = AutoModelForImageTextToText.from_pretrained(tiny_model_dir)
    params = list(model.parameters())  # tied weights once
    full = sum(p.numel() for p in params)
    rank0 = sum(math.ceil(p.shape[0] / 2) * p[0].numel() for p in params)  # dim 0 split in 2, rank 0 the larger half
    units = 1 + len(wrap_targets(model, ()))  # one per decoder layer and vision block, and the root
    assert units == 1 + model.config.text_config.num_hidden_layers + model.config.vision_config.depth
    _, done = fsdp_sft
    assert (
        f"sft: 2 processes, FSDP2 on cpu, {units} sharded units, {rank0:,} of {full:,} parameters on this process"
        in done.stderr
    )


@pytest.mark.slow
def test_fsdp_resume_ends_bitwise_equal(fsdp_sft, synth_dir, tiny_model_dir, tmp_path):
    assert_resume_ends_bitwise(fsdp_sft[0], tmp_path / "resumed", synth_dir, tiny_model_dir, "fsdp")


@pytest.mark.slow
def test_fsdp_grpo_samples_in_step_and_makes_the_update_of_ddp(synth_dir, tiny_model_dir, tmp_path_factory):
    ddp = grpo_run("ddp", synth_dir, tiny_model_dir, tmp_path_factory)
    fsdp = grpo_run("fsdp", synth_dir, tiny_model_dir, tmp_path_factory)
    a, b = steps(ddp), steps(fsdp)
    assert [r["step"] for r in b] == [1, 2]
    # Step 1: the same completions (each rank samples its own, seeded as under DDP); some rows
    # stopped before the 4-token limit and others ran to it, so a rank kept stepping for the other.
    assert 0 < b[0]["truncated_fraction"] < 1 and b[0]["kl"] == 0.0  # the sharded reference copy = the policy
    assert b[0] == pytest.approx(a[0], rel=1e-6, abs=1e-9)
    w_ddp, w_fsdp = (load_file(r / "checkpoint-1" / "model.safetensors") for r in (ddp, fsdp))
    for k in w_ddp:
        torch.testing.assert_close(w_fsdp[k], w_ddp[k], rtol=0, atol=1e-6)
    # Step 2 samples the same completions too: a rank whose rows all stopped steps with the other
    # without drawing, so its random stream stays the one it has under DDP (models/prefix.py).
    assert b[1] == pytest.approx(a[1], rel=1e-5, abs=1e-8)
    w_ddp, w_fsdp = (load_file(r / "final" / "model.safetensors") for r in (ddp, fsdp))
    for k in w_ddp:
        torch.testing.assert_close(w_fsdp[k], w_ddp[k], rtol=0, atol=1e-5)


@pytest.mark.slow
def test_fsdp_lora_makes_the_update_of_one_process(synth_dir, tiny_model_dir, tmp_path):
    lora = (
        "model.lora=true",
        "train.merge_lora=true",
        "train.max_steps=2",
        "train.save_steps=0",
        "train.learning_rate=1e-4",
        *EVAL,
    )
    launch(
        "sft",
        common(synth_dir, tiny_model_dir, tmp_path / "two", "train.per_device_batch_size=1", *lora),
        config="fsdp",
    )
    loop.run(
        load_config(None, common(synth_dir, tiny_model_dir, tmp_path / "one", "train.per_device_batch_size=2", *lora)),
        "sft",
    )
    evals = [
        [r for r in map(json.loads, (tmp_path / o / "metrics.jsonl").read_text().splitlines()) if "loss" not in r]
        for o in ("one", "two")
    ]
    assert [r["step"] for r in evals[1]] == [2] and evals[1] == same_scores(
        evals[0]
    )  # generate through the PEFT wrapper
    for name in ("final/adapter_model.safetensors", "merged/model.safetensors"):
        a, b = (load_file(tmp_path / run / name) for run in ("one", "two"))
        assert sorted(a) == sorted(b)
        for k in a:  # LoRA's B starts at 0: AdamW's first steps amplify rounding differences to ~lr / 10
            torch.testing.assert_close(b[k], a[k], rtol=0, atol=2e-5)


@pytest.mark.slow
def test_fsdp_evaluate_gives_the_answers_of_one_process(synth_dir, tiny_model_dir, tmp_path, tmp_path_factory):
    assert_sharded_evaluate_equals_one_process("fsdp", synth_dir, tiny_model_dir, tmp_path, tmp_path_factory)


# ---- the launch's FSDP settings ----------------------------------------------------------------

BASE = {
    "ACCELERATE_USE_FSDP": "true",
    "FSDP_VERSION": "2",
    "FSDP_AUTO_WRAP_POLICY": "TRANSFORMER_BASED_WRAP",
    "FSDP_STATE_DICT_TYPE": "FULL_STATE_DICT",
    "FSDP_RESHARD_AFTER_FORWARD": "false",
    "FSDP_OFFLOAD_PARAMS": "false",
    "FSDP_TRANSFORMER_CLS_TO_WRAP": "Qwen2VLDecoderLayer",
    "ACCELERATE_MIXED_PRECISION": "no",
}


def test_fsdp_settings_are_read_from_what_accelerate_exports():
    assert FSDPSettings.from_env({}) is None
    s = FSDPSettings.from_env(BASE)
    assert s == FSDPSettings(
        ("Qwen2VLDecoderLayer",), wrap_layers=True, reshard_after_forward=False, offload_params=False
    )
    assert FSDPSettings.from_env({**BASE, "FSDP_AUTO_WRAP_POLICY": "NO_WRAP"}).wrap_layers is False


@pytest.mark.parametrize(
    "key,value,fix",
    [
        ("FSDP_VERSION", "1", "set fsdp_version: 2"),
        ("FSDP_AUTO_WRAP_POLICY", "SIZE_BASED_WRAP", "set fsdp_auto_wrap_policy: TRANSFORMER_BASED_WRAP"),
        ("FSDP_STATE_DICT_TYPE", "SHARDED_STATE_DICT", "set fsdp_state_dict_type: FULL_STATE_DICT"),
        ("FSDP_ACTIVATION_CHECKPOINTING", "true", "model.gradient_checkpointing=true"),
        ("FSDP_CPU_RAM_EFFICIENT_LOADING", "true", "set fsdp_cpu_ram_efficient_loading: false"),
        ("ACCELERATE_MIXED_PRECISION", "bf16", "train.mixed_precision=bf16"),
    ],
)
def test_fsdp_settings_that_cannot_run_are_one_line_errors(key, value, fix):
    with pytest.raises(UserError, match=fix) as err:
        FSDPSettings.from_env({**BASE, key: value})
    assert "\n" not in str(err.value)


def test_a_wrap_class_the_model_lacks_names_the_ones_it_has(tiny_model_dir):
    from transformers import AutoModelForImageTextToText

    model = AutoModelForImageTextToText.from_pretrained(tiny_model_dir)
    with pytest.raises(
        UserError, match=r"fsdp_transformer_layer_cls_to_wrap=Phi3DecoderLayer: no such module .*Qwen2VLDecoderLayer"
    ):
        wrap_targets(model, ("Phi3DecoderLayer",))


def test_quantized_or_vllm_runs_are_refused_under_fsdp():
    dist = FSDP2(FSDPSettings((), True, True, False))
    with pytest.raises(UserError, match="model.quantization=4bit weights cannot be sharded"):
        dist.check_config(load_config(None, ["model.quantization=4bit", "model.lora=true"]))
    with pytest.raises(UserError, match="grpo.generation_backend=vllm needs the full weights"):
        dist.check_config(load_config(None, ["grpo.generation_backend=vllm"]))
