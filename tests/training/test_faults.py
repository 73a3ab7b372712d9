"""Faults a long run meets: SIGKILL at any moment, a kill in the middle of a save, SIGINT/SIGTERM,
a device out-of-memory error.

The kills are real: `vqa-grpo sft` runs in a child process (forked from the test's), and the test
sends it SIGKILL (at a random step after a checkpoint), SIGTERM or SIGINT; the kill during a save is a SIGKILL the child
sends itself while it writes a checkpoint. The resumed runs must end with bitwise the weights and
exactly the per-step metrics of an uninterrupted run. The OOM test wraps the real ``load_model``
to make one forward pass of the real model raise ``torch.OutOfMemoryError``.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch
from forked_cli import Child
from safetensors.torch import load_file

from vqa_grpo.errors import RewardFunctionError, TrainingStopped
from vqa_grpo.training import loop
from vqa_grpo.training.checkpoint import list_checkpoints

TIMINGS = {"step_seconds", "rollout_seconds", "completion_tokens_per_second", "rss_mib"}  # and memory
STEPS, SAVE_EVERY = 24, 4


def overrides(synth_dir, model_dir, out, *extra: str) -> list[str]:
    """24 SFT steps of batch 2, a checkpoint every 4; warmup + cosine so the scheduler state matters."""
    return [
        f"model.name_or_path={model_dir}",
        f"data.path={synth_dir}",
        f"train.output_dir={out}",
        "train.device=cpu",
        "train.cpu_threads=1",
        "train.progress=false",
        "data.eval_fraction=0",
        f"train.max_steps={STEPS}",
        f"train.save_steps={SAVE_EVERY}",
        "train.per_device_batch_size=2",
        "train.learning_rate=1e-3",
        "train.lr_scheduler=cosine",
        "train.warmup_steps=2",
        "train.report_to=none",
        *extra,
    ]


def run_inline(args: list[str]):
    from vqa_grpo.config_load import load_config

    return loop.run(load_config(None, args), "sft")


def start_cli(args: list[str], *, prelude: str = "") -> Child:
    """`vqa-grpo sft ARGS` in a child process (``prelude`` runs first, in the child)."""
    return Child(args, prelude)


def step_lines(run_dir: Path) -> list[dict]:
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return []
    lines = [json.loads(s) for s in path.read_text().splitlines() if s.strip()]
    return [{k: v for k, v in r.items() if k not in TIMINGS} for r in lines if "loss" in r]


def wait_for_steps(proc: subprocess.Popen, run_dir: Path, n: int, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while len(step_lines(run_dir)) < n:
        assert proc.poll() is None, f"the run ended before step {n}: {proc.communicate()[1][-2000:]}"
        assert time.time() < deadline, f"no step {n} after {timeout} s"
        time.sleep(0.005)


def final_weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(run_dir / "final" / "model.safetensors")


def assert_same_run(a: Path, b: Path) -> None:
    wa, wb = final_weights(a), final_weights(b)
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    last = {r["step"]: r for r in step_lines(b)}  # the resumed run's line for each step
    assert [last[s] for s in range(1, STEPS + 1)] == step_lines(a)


@pytest.mark.slow
def test_sigkill_at_a_random_step_then_resume_auto_is_bitwise_the_uninterrupted_run(
    uninterrupted, synth_dir, tiny_model_dir, tmp_path
):
    kill_after = random.randint(SAVE_EVERY + 1, STEPS - 6)  # a checkpoint exists by then
    out = tmp_path / "run"
    proc = start_cli(overrides(synth_dir, tiny_model_dir, out))
    wait_for_steps(proc, out, kill_after)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL, f"killed after step {kill_after}"
    assert not (out / "final").exists() and list_checkpoints(out)
    run_inline(overrides(synth_dir, tiny_model_dir, out, "train.resume=auto"))
    assert_same_run(uninterrupted, out)


KILL_IN_SAVE = """
import os, signal, torch
_save = torch.save
def save(obj, f, *a, **k):  # die while checkpoint-8 is half written (its weights are already on disk)
    if str(getattr(f, "name", f)).endswith(os.path.join(".tmp-checkpoint-8", "optimizer.pt")):  # a path or a file
        os.kill(os.getpid(), signal.SIGKILL)
    return _save(obj, f, *a, **k)
torch.save = save
"""


@pytest.mark.slow
def test_a_kill_during_a_save_leaves_the_previous_checkpoint_to_resume_from(
    uninterrupted, synth_dir, tiny_model_dir, tmp_path
):
    out = tmp_path / "run"
    proc = start_cli(overrides(synth_dir, tiny_model_dir, out), prelude=KILL_IN_SAVE)
    assert proc.wait(timeout=300) == -signal.SIGKILL
    assert (out / ".tmp-checkpoint-8" / "model.safetensors").is_file()  # the half-written one
    assert not (out / ".tmp-checkpoint-8" / "trainer_state.json").exists()
    assert [p.name for p in list_checkpoints(out)] == ["checkpoint-4"]  # never mistaken for a checkpoint
    assert json.loads((out / "checkpoint-4" / "trainer_state.json").read_text())["step"] == 4
    run_inline(overrides(synth_dir, tiny_model_dir, out, "train.resume=auto"))
    assert not (out / ".tmp-checkpoint-8").exists()
    assert_same_run(uninterrupted, out)


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_sigterm_and_sigint_save_a_checkpoint_and_exit_cleanly(sig, synth_dir, tiny_model_dir, tmp_path):
    out = tmp_path / "run"
    proc = start_cli(overrides(synth_dir, tiny_model_dir, out, "train.max_steps=100000", "train.save_steps=0"))
    wait_for_steps(proc, out, 3)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + sig
    message = err.strip().splitlines()[-1]
    (ckpt,) = list_checkpoints(out)
    step = json.loads((ckpt / "trainer_state.json").read_text())["step"]
    assert message == (
        f"stopped: stopped by {signal.Signals(sig).name} after step {step}; checkpoint-{step} "
        f"saved in {out}; continue with train.resume=auto"
    )
    assert [r["step"] for r in step_lines(out)] == list(range(1, step + 1))  # the steps it took, each logged
    assert "Traceback" not in err


# ---- device out of memory ----------------------------------------------------------------------


@pytest.fixture
def oom_on_forward(monkeypatch):
    """``when["now"](model)``: whether this forward pass of the real model raises ``when["error"]()``
    (torch.OutOfMemoryError unless the test sets another)."""
    when = {
        "now": lambda model: False,
        "error": lambda: torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB"),
    }
    real_load = loop.load_model

    def load_with_hook(*args, **kwargs):
        lm = real_load(*args, **kwargs)

        def hook(module, inputs):
            if when["now"](module):
                raise when["error"]()

        lm.model.register_forward_pre_hook(hook)
        return lm

    monkeypatch.setattr(loop, "load_model", load_with_hook)
    return when


def once_after_the_first_update():
    """True for the first forward pass that sees updated weights: the start of step 2."""
    state = {"start": None, "fired": False}

    def now(model) -> bool:
        param = next(model.parameters())
        if state["start"] is None:
            state["start"] = param.detach().clone()
        if state["fired"] or torch.equal(param, state["start"]):
            return False
        state["fired"] = True
        return True

    return now


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["sft", "grpo"])
def test_an_out_of_memory_batch_is_skipped_with_advice_and_the_run_goes_on(
    mode, oom_on_forward, synth_dir, tiny_model_dir, tmp_path, capsys
):
    from vqa_grpo.config_load import load_config

    oom_on_forward["now"] = once_after_the_first_update()  # SFT: step 2's forward; GRPO: step 2's rollout
    out = tmp_path / "run"
    extra = ["train.max_steps=3", "train.save_steps=3"]
    if mode == "grpo":
        extra += ["grpo.num_generations=2", "grpo.max_completion_length=2", "grpo.sft_coef=0.5"]
    result = loop.run(load_config(None, overrides(synth_dir, tiny_model_dir, out, *extra)), mode)
    assert result.steps == 3
    lines = [json.loads(s) for s in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r for r in lines if "skipped_oom" in r] == [{"step": 2, "skipped_oom": 1}]  # attempted as step 2
    assert [r["step"] for r in lines if "loss" in r] == [1, 2, 3]
    state = json.loads((out / "checkpoint-3" / "trainer_state.json").read_text())
    assert state["data"]["pos"] == 4 * 2  # 3 steps trained + 1 batch skipped, 2 questions each
    assert state["bad_steps"] == 0  # the steps after it were good
    err = capsys.readouterr().err
    assert "out of memory at step 2; batch skipped" in err and "train.per_device_batch_size" in err


@pytest.mark.slow
def test_out_of_memory_on_every_batch_stops_the_run_with_a_checkpoint(
    oom_on_forward, synth_dir, tiny_model_dir, tmp_path
):
    from vqa_grpo.config_load import load_config

    oom_on_forward["now"] = lambda model: True
    out = tmp_path / "run"
    with pytest.raises(TrainingStopped, match="3 out-of-memory steps in a row .*train.per_device_batch_size"):
        loop.run(load_config(None, overrides(synth_dir, tiny_model_dir, out, "train.max_bad_steps=2")), "sft")
    assert [p.name for p in list_checkpoints(out)] == ["checkpoint-0"]


@pytest.mark.parametrize(
    "error",
    [RewardFunctionError("reward f: the GPU ran out of memory"), TrainingStopped("peer out of memory", exit_code=1)],
    ids=["RewardFunctionError", "TrainingStopped"],
)
def test_the_out_of_memory_catch_lets_the_packages_own_errors_through(
    error, oom_on_forward, synth_dir, tiny_model_dir, tmp_path
):
    """The package's errors are no RuntimeErrors (errors.py): the step's OOM catch, which skips a
    batch on torch's out-of-memory error, passes them on as they are, "out of memory" in the
    message or not. Skipped, the run would go on and stop with "3 out-of-memory steps in a row"."""
    oom_on_forward["now"] = lambda model: True
    oom_on_forward["error"] = lambda: error
    out = tmp_path / "run"
    with pytest.raises(type(error)) as raised:
        run_inline(overrides(synth_dir, tiny_model_dir, out, "train.max_steps=3", "train.max_bad_steps=2"))
    assert raised.value is error
    metrics = out / "metrics.jsonl"
    assert not metrics.is_file() or "skipped_oom" not in metrics.read_text()


# ---- one bad example ---------------------------------------------------------------------------


@pytest.mark.slow
def test_an_image_that_fails_to_decode_mid_run_skips_that_example_only(synth_dir, tiny_model_dir, tmp_path):
    """The file is there when the data loads (so the row is kept) but is cut short later."""
    data = tmp_path / "data"
    shutil.copytree(synth_dir, data)
    rows = (data / "data.jsonl").read_text().splitlines()[:8]
    (data / "data.jsonl").write_text("\n".join(rows) + "\n")
    out = tmp_path / "run"
    from vqa_grpo.config_load import load_config

    cfg = load_config(None, overrides(data, tiny_model_dir, out, "train.max_steps=4", "train.save_steps=0"))
    bad = data / json.loads(rows[3])["image"]
    real_run = loop.load_vqa

    def load_then_corrupt(*args, **kwargs):
        loaded = real_run(*args, **kwargs)
        bad.write_bytes(bad.read_bytes()[:40])  # a truncated PNG
        return loaded

    loop.load_vqa = load_then_corrupt
    try:
        result = loop.run(cfg, "sft")
    finally:
        loop.load_vqa = real_run
    assert result.steps == 4  # 8 questions a pass, batches of 2: the bad one is met and skipped
    lines = step_lines(out)
    assert lines[-1]["skipped_images"] == 1  # met once in the first pass over the 8
    assert all(r["loss"] == r["loss"] for r in lines)  # finite (not NaN)


@pytest.mark.slow
def test_gradient_checkpointing_trains_the_same_weights(synth_dir, tiny_model_dir, tmp_path):
    """Non-reentrant activation checkpointing recomputes the forward in backward: same update."""
    extra = ["train.max_steps=2", "train.save_steps=0"]
    run_inline(overrides(synth_dir, tiny_model_dir, tmp_path / "a", *extra))
    run_inline(overrides(synth_dir, tiny_model_dir, tmp_path / "b", *extra, "model.gradient_checkpointing=true"))
    a, b = final_weights(tmp_path / "a"), final_weights(tmp_path / "b")
    assert any(not torch.equal(a[k], load_file(tiny_model_dir / "model.safetensors")[k]) for k in a)
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=1e-5, atol=1e-6)


# ---- signal semantics and run-directory reuse ----------------------------------------------------


def test_one_process_takes_a_second_ctrl_c_at_once_a_launched_one_absorbs_it():
    from vqa_grpo.training.faults import StopSignals

    # As Python sets it up in a terminal; a process started in the background by a shell without
    # job control inherits SIGINT ignored, and StopSignals then puts back "ignored".
    original = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with StopSignals(repeat_stops=False) as stops:  # under a launcher: repeats are absorbed
            os.kill(os.getpid(), signal.SIGINT)
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.05)
            assert stops.received == signal.SIGINT  # the first one is the reason reported
        with pytest.raises(KeyboardInterrupt):
            with StopSignals() as stops:  # one process: the first is a request, the second Python's own
                os.kill(os.getpid(), signal.SIGINT)
                time.sleep(0.05)
                assert stops.received == signal.SIGINT
                os.kill(os.getpid(), signal.SIGINT)
                time.sleep(0.05)
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # put back
    finally:
        signal.signal(signal.SIGINT, original)


def test_a_launched_process_leaving_on_an_error_outlives_the_agents_sigterm():
    """The agent SIGTERMs the other ranks as soon as one dies; the rank whose collective failed has
    left the loop by then and must still print why it stopped (tests/training/test_distributed.py
    failed this way in CI: rank 0 died of the SIGTERM before its one-line stop)."""
    from vqa_grpo.training.faults import StopSignals

    original = {s: signal.signal(s, signal.SIG_DFL) for s in StopSignals.SIGNALS}
    try:
        with StopSignals(repeat_stops=False):  # a run that ends normally puts the handlers back
            pass
        assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
        with pytest.raises(RuntimeError, match="gloo"):
            with StopSignals(repeat_stops=False) as stops:
                raise RuntimeError("[../gloo/transport/tcp/pair.cc:534] Connection closed by peer")
        assert signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL
        os.kill(os.getpid(), signal.SIGTERM)  # the default action would end pytest here
        time.sleep(0.05)
        assert stops.received == signal.SIGTERM
    finally:  # both are still absorbed: put back this worker's own
        for s, handler in original.items():
            signal.signal(s, handler)


@pytest.mark.slow
def test_a_new_run_refuses_an_output_dir_that_holds_a_run(uninterrupted, synth_dir, tiny_model_dir, capsys, tmp_path):
    from vqa_grpo.cli import main

    run = tmp_path / "run"  # a copy: the uninterrupted run is shared with other tests
    shutil.copytree(uninterrupted, run)
    before = sorted(p.name for p in run.iterdir())
    assert main(["sft", *overrides(synth_dir, tiny_model_dir, run)]) == 2
    assert capsys.readouterr().err.strip() == (
        f"error: train.output_dir={run} already holds a run; continue it with train.resume=auto, "
        "or choose a new train.output_dir"
    )
    assert sorted(p.name for p in run.iterdir()) == before
