"""The training loop shared by `sft` and `train`: run directory, accumulation, learning-rate
schedule and non-finite steps; and the helpers the other loop tests import (config, records,
weights, resume_overrides). Checkpoints and resume: test_loop_resume.py.

Everything runs the real loop (``vqa_grpo.training.loop.run``) on the tiny Qwen2-VL and the
synthetic set, fp32 on the CPU, one thread. The NaN tests wrap the real ``load_model`` to add a
gradient hook to one parameter of the real model; nothing else is replaced.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from vqa_grpo.config import TrainConfig
from vqa_grpo.config_load import load_config
from vqa_grpo.data.benchmarks import resolve as resolve_benchmark
from vqa_grpo.errors import TrainingStopped
from vqa_grpo.training import loop
from vqa_grpo.training.optim import lr_factor, make_optimizer, make_scheduler

CHECKPOINT_FILES = {"model.safetensors", "optimizer.pt", "scheduler.pt", "rng.pt", "trainer_state.json", "config.yaml"}
# Every step of these runs is skipped, so the scheduler steps while the optimizer never does.
NO_OPTIMIZER_STEP = pytest.mark.filterwarnings("ignore:Detected call of `lr_scheduler.step\\(\\)` before:UserWarning")
TIMINGS = {"step_seconds", "rollout_seconds", "completion_tokens_per_second", "rss_mib"}  # and memory


def config(synth_dir, model_dir, out, *overrides: str):
    """The tiny CPU config: one thread, no progress bar, short greedy evaluation."""
    return load_config(
        None,
        [
            f"model.name_or_path={model_dir}",
            f"data.path={synth_dir}",
            f"train.output_dir={out}",
            "train.device=cpu",
            "train.cpu_threads=1",
            "train.progress=false",
            "data.max_eval_samples=4",
            "eval.max_new_tokens=4",
            "eval.batch_size=4",
            *overrides,
        ],
    )


def records(run_dir: Path) -> list[dict]:
    return [json.loads(s) for s in (run_dir / "metrics.jsonl").read_text().splitlines()]


def train_records(run_dir: Path) -> list[dict]:
    """Step lines (not eval lines), without the wall-clock timings."""
    return [{k: v for k, v in r.items() if k not in TIMINGS} for r in records(run_dir) if "loss" in r]


def weights(model_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(model_dir / "model.safetensors")


def resume_overrides(mode: str) -> list[str]:
    """4 steps, a checkpoint every 2; warmup + cosine so the scheduler state matters. GRPO samples
    its completions (the RNG state matters) and adds the answer's NLL (sft_coef) so that every step
    moves the weights even when a random model earns no reward."""
    common = [
        "train.max_steps=4",
        "train.save_steps=2",
        "train.per_device_batch_size=2",
        "train.learning_rate=1e-3",
        "train.lr_scheduler=cosine",
        "train.warmup_steps=1",
    ]
    if mode == "grpo":
        common += ["grpo.num_generations=2", "grpo.max_completion_length=4", "grpo.sft_coef=0.5"]
    return common


# ---- the run directory -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sft_run(synth_dir, tiny_model_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("sft") / "run"
    cfg = config(
        synth_dir,
        tiny_model_dir,
        out,
        "train.max_steps=6",
        "train.save_steps=2",
        "train.eval_steps=3",
        "train.save_total_limit=2",
        "train.per_device_batch_size=2",
        "train.learning_rate=1e-3",
    )
    return cfg, loop.run(cfg, "sft")


@pytest.mark.slow
def test_sft_run_writes_the_fixed_run_directory(sft_run, tiny_model_dir):
    from transformers import AutoModelForImageTextToText, AutoProcessor

    cfg, result = sft_run
    run_dir = result.run_dir
    assert result.steps == 6 and result.final_dir == run_dir / "final"
    assert load_config(run_dir / "config.yaml") == resolve_benchmark(cfg)

    lines = records(run_dir)
    assert [r["step"] for r in lines if "loss" in r] == [1, 2, 3, 4, 5, 6]  # logging_steps = 1
    # eval_steps = 3: at step 3, then the final evaluation at step 6 (not twice at 6).
    evals = [r for r in lines if "eval/vqa_accuracy" in r]
    assert [r["step"] for r in evals] == [3, 6]
    assert [r["step"] for r in result.eval_history] == [3, 6]
    for r in lines:
        if "loss" in r:
            assert math.isfinite(r["loss"]) and r["lr"] == 1e-3 and r["grad_norm"] > 0 and "skipped_nonfinite" not in r

    # save_steps = 2 wrote 2, 4, 6; save_total_limit = 2 kept the last two; no temporary left over.
    names = sorted(p.name for p in run_dir.iterdir())
    assert names == ["best", "checkpoint-4", "checkpoint-6", "config.yaml", "final", "metrics.jsonl", "tensorboard"]
    for step in (4, 6):
        ckpt = run_dir / f"checkpoint-{step}"
        assert CHECKPOINT_FILES <= {p.name for p in ckpt.iterdir()}
        state = json.loads((ckpt / "trainer_state.json").read_text())
        assert state["step"] == step and load_config(ckpt / "config.yaml") == resolve_benchmark(cfg)
        assert state["best_metric"] == max(r["eval/vqa_accuracy"] for r in evals if r["step"] <= step)
        assert state["data"] == {"epoch": 0, "pos": 2 * step, "skipped": 0, "bad": {}}  # 2 questions a step
    # The last checkpoint and final/ hold the same weights (both after step 6), not the start.
    start, last, final = weights(tiny_model_dir), weights(run_dir / "checkpoint-6"), weights(run_dir / "final")
    assert all(torch.equal(last[k], final[k]) for k in final)
    assert all(not torch.equal(start[k], final[k]) for k in final if start[k].ndim >= 2)

    for d in ("best", "final"):
        model = AutoModelForImageTextToText.from_pretrained(run_dir / d)
        AutoProcessor.from_pretrained(run_dir / d)
        assert model.config.model_type == "qwen2_vl"


@pytest.mark.slow
def test_tensorboard_holds_the_scalars_of_metrics_jsonl(sft_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    _, result = sft_run
    events = EventAccumulator(str(result.run_dir / "tensorboard")).Reload()
    lines = records(result.run_dir)
    for key in ("loss", "lr", "grad_norm", "eval/vqa_accuracy"):
        logged = [r for r in lines if key in r]
        scalars = events.Scalars(key)
        assert [e.step for e in scalars] == [r["step"] for r in logged]
        assert [e.value for e in scalars] == pytest.approx([r[key] for r in logged], rel=1e-6)  # float32 on disk


@pytest.mark.slow
def test_final_carries_a_model_card_with_base_model_data_config_and_metrics(sft_run, tiny_model_dir):
    import yaml

    cfg, result = sft_run
    card = (result.final_dir / "README.md").read_text()
    header = yaml.safe_load(card.split("---")[1])
    assert header["base_model"] == str(tiny_model_dir) and header["library_name"] == "transformers"
    last = result.eval_history[-1]
    assert f"| vqa_accuracy | {last['eval/vqa_accuracy']:.4f} |" in card
    assert f"`{cfg.data.path}`" in card and "6 optimiser steps" in card
    assert 'AutoModelForImageTextToText.from_pretrained("path/to/this/directory")' in card  # the family's auto class
    config_block = card.split("```yaml\n")[1].split("```")[0]
    assert yaml.safe_load(config_block) == yaml.safe_load((result.run_dir / "config.yaml").read_text())


@pytest.mark.slow
def test_sft_loss_falls_on_a_repeated_batch(synth_dir, tiny_model_dir, tmp_path):
    # Two training questions, batch 2: every step sees the same two answers.
    cfg = config(
        synth_dir,
        tiny_model_dir,
        tmp_path / "run",
        "data.max_train_samples=2",
        "data.eval_fraction=0",
        "train.max_steps=10",
        "train.per_device_batch_size=2",
        "train.learning_rate=1e-3",
    )
    loop.run(cfg, "sft")
    nll = [r["nll"] for r in train_records(tmp_path / "run")]
    assert len(nll) == 10
    assert nll[-1] < 0.5 * nll[0], nll  # a random model starts near log(60) = 4.1 nats a token
    assert nll[-1] < min(nll[:5])


# ---- gradient accumulation ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def two_answers(synth_dir, tmp_path_factory):
    """Two questions whose answers differ in length (3 and 2 tokens with the stop token), so the
    per-token normalisation of the step matters: averaging per micro-batch would weight them
    differently. Images are the synthetic set's."""
    rows = [json.loads(s) for s in (synth_dir / "data.jsonl").read_text().splitlines()[:2]]
    rows[0].update(answer="blue circle", answers=["blue circle"])
    rows[1].update(answer="no", answers=["no"])
    path = tmp_path_factory.mktemp("two") / "data.jsonl"
    path.write_text("".join(json.dumps({k: v for k, v in r.items() if k != "scene"}) + "\n" for r in rows))
    return path


def accumulation_run(two_answers, synth_dir, tiny_model_dir, out, batch, accumulation):
    cfg = config(
        two_answers,
        tiny_model_dir,
        out,
        f"data.image_root={synth_dir}",
        "data.eval_fraction=0",
        "train.max_steps=1",
        f"train.per_device_batch_size={batch}",
        f"train.gradient_accumulation_steps={accumulation}",
        "train.learning_rate=1e-5",
    )
    loop.run(cfg, "sft")
    return weights(out / "final"), train_records(out)[0]


@pytest.mark.slow
def test_two_micro_batches_of_one_equal_one_batch_of_two(two_answers, synth_dir, tiny_model_dir, tmp_path):
    # One optimiser step over the same two questions (the data order is one permutation of both).
    # lr 1e-5: AdamW's first step moves each weight by about lr * sign(g); fp32 differences of the
    # two layouts (padding, summation order) move the few weights whose gradient is near AdamW's
    # eps by ~1e-7 here, while normalising each micro-batch by its own tokens moves weights by up to
    # ~2e-5 (measured: 2e-4 at lr 1e-4).
    big, big_log = accumulation_run(two_answers, synth_dir, tiny_model_dir, tmp_path / "b2", 2, 1)
    acc, acc_log = accumulation_run(two_answers, synth_dir, tiny_model_dir, tmp_path / "b1x2", 1, 2)
    start = weights(tiny_model_dir)
    assert max(float((big[k] - start[k]).abs().max()) for k in big) > 5e-6  # the step did move
    assert max(float((big[k] - acc[k]).abs().max()) for k in big) < 1e-6
    assert acc_log["loss"] == pytest.approx(big_log["loss"], abs=1e-6)  # the step's token-mean NLL
    assert acc_log["grad_norm"] == pytest.approx(big_log["grad_norm"], rel=1e-5)


@pytest.mark.slow
def test_logged_nll_does_not_depend_on_the_accumulation_layout(two_answers, synth_dir, tiny_model_dir, tmp_path):
    _, big_log = accumulation_run(two_answers, synth_dir, tiny_model_dir, tmp_path / "b2", 2, 1)
    _, acc_log = accumulation_run(two_answers, synth_dir, tiny_model_dir, tmp_path / "b1x2", 1, 2)
    assert acc_log["nll"] == pytest.approx(big_log["nll"], abs=1e-6)


# ---- learning-rate schedule --------------------------------------------------------------------


@pytest.mark.parametrize(
    "schedule, expected",
    [
        # warmup 2 of 6 steps: (step + 1) / 3 for steps 0-1, then the peak at step 2; after warmup
        # progress = (step - 2) / 4.
        ("constant", [1 / 3, 2 / 3, 1.0, 1.0, 1.0, 1.0]),
        ("linear", [1 / 3, 2 / 3, 1.0, 0.75, 0.5, 0.25]),
        # 0.5 * (1 + cos(pi * progress)): 1, (2 + sqrt 2) / 4, 1/2, (2 - sqrt 2) / 4
        ("cosine", [1 / 3, 2 / 3, 1.0, (2 + math.sqrt(2)) / 4, 0.5, (2 - math.sqrt(2)) / 4]),
    ],
)
def test_lr_factor_by_hand(schedule, expected):
    cfg = TrainConfig(max_steps=6, warmup_steps=2, lr_scheduler=schedule)
    assert [lr_factor(s, cfg) for s in range(6)] == pytest.approx(expected, abs=1e-12)
    # No warmup: the first step is at the peak.
    assert lr_factor(0, TrainConfig(max_steps=6, lr_scheduler=schedule)) == 1.0


def test_scheduler_gives_the_optimizer_those_factors_times_the_peak():
    cfg = TrainConfig(max_steps=6, warmup_steps=2, lr_scheduler="linear", learning_rate=0.3)
    opt = make_optimizer([torch.nn.Parameter(torch.zeros(2))], cfg)
    sched = make_scheduler(opt, cfg)
    used = []
    for _ in range(6):
        used.append(opt.param_groups[0]["lr"])  # the lr the step would use
        opt.step()
        sched.step()
    assert used == pytest.approx([0.1, 0.2, 0.3, 0.225, 0.15, 0.075], abs=1e-12)


@pytest.mark.slow
def test_metrics_log_the_lr_each_step_used(synth_dir, tiny_model_dir, tmp_path):
    cfg = config(
        synth_dir,
        tiny_model_dir,
        tmp_path / "run",
        "train.max_steps=3",
        "train.warmup_steps=2",
        "train.per_device_batch_size=1",
        "train.learning_rate=0.3",
        "data.eval_fraction=0",
    )
    loop.run(cfg, "sft")
    assert [r["lr"] for r in train_records(tmp_path / "run")] == pytest.approx([0.1, 0.2, 0.3], abs=1e-12)


# ---- non-finite gradients ----------------------------------------------------------------------


@pytest.fixture
def nan_on_backward(monkeypatch):
    """``set(bad)``: the backward passes (1-based) whose gradient of one real parameter is NaN."""
    bad: set[int] = set()
    real_load = loop.load_model

    def load_with_hook(*args, **kwargs):
        lm = real_load(*args, **kwargs)
        param = next(p for p in lm.model.parameters() if p.requires_grad)
        calls = [0]

        def hook(grad):
            calls[0] += 1
            return grad * float("nan") if calls[0] in bad else grad

        param.register_hook(hook)
        return lm

    monkeypatch.setattr(loop, "load_model", load_with_hook)
    return bad


@pytest.mark.slow
def test_a_nonfinite_gradient_skips_that_optimizer_step(nan_on_backward, synth_dir, tiny_model_dir, tmp_path):
    nan_on_backward.add(2)  # step 2 of 3 (one backward a step)
    out = tmp_path / "run"
    cfg = config(
        synth_dir,
        tiny_model_dir,
        out,
        "train.max_steps=3",
        "train.save_steps=1",
        "train.save_total_limit=3",
        "train.per_device_batch_size=1",
        "train.learning_rate=1e-3",
        "data.eval_fraction=0",
    )
    result = loop.run(cfg, "sft")
    assert result.steps == 3
    logged = train_records(out)
    assert [r.get("skipped_nonfinite") for r in logged] == [None, 1, None]
    # A skipped step logs grad_norm null (strict JSON has no NaN).
    assert logged[1]["grad_norm"] is None and math.isfinite(logged[2]["grad_norm"])
    w1, w2, w3 = (weights(out / f"checkpoint-{s}") for s in (1, 2, 3))
    assert all(torch.equal(w1[k], w2[k]) for k in w1)  # step 2 changed nothing ...
    assert any(not torch.equal(w2[k], w3[k]) for k in w2)  # ... step 3 trained again
    adam = [
        torch.load(out / f"checkpoint-{s}" / "optimizer.pt", weights_only=True)["state"][0]["step"] for s in (1, 2, 3)
    ]
    assert [float(s) for s in adam] == [1.0, 1.0, 2.0]  # AdamW's moments did not take the NaN step


@pytest.mark.slow
@NO_OPTIMIZER_STEP
def test_more_than_max_bad_steps_in_a_row_stop_the_run(nan_on_backward, synth_dir, tiny_model_dir, tmp_path):
    nan_on_backward.update(range(1, 100))
    cfg = config(
        synth_dir,
        tiny_model_dir,
        tmp_path / "run",
        "train.max_steps=10",
        "train.max_bad_steps=2",
        "train.per_device_batch_size=1",
        "data.eval_fraction=0",
    )
    with pytest.raises(TrainingStopped, match="3 non-finite steps in a row"):
        loop.run(cfg, "sft")
    # Steps 1, 2 and 3 were skipped and logged; the third also stops the run.
    assert [r.get("skipped_nonfinite") for r in train_records(tmp_path / "run")] == [1, 1, 1]


@pytest.mark.slow
@NO_OPTIMIZER_STEP
def test_a_run_stopped_by_bad_steps_leaves_a_checkpoint(nan_on_backward, synth_dir, tiny_model_dir, tmp_path):
    nan_on_backward.update(range(1, 100))
    out = tmp_path / "run"
    cfg = config(
        synth_dir,
        tiny_model_dir,
        out,
        "train.max_steps=10",
        "train.max_bad_steps=1",
        "train.per_device_batch_size=1",
        "data.eval_fraction=0",
    )
    with pytest.raises(TrainingStopped):
        loop.run(cfg, "sft")
    assert list(out.glob("checkpoint-*/trainer_state.json"))
