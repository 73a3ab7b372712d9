"""Several processes through accelerate: `accelerate launch --config_file configs/accelerate/ddp.yaml
--num_processes 2 -m vqa_grpo.cli ...` on the CPU (DDP over gloo), against one process in this one.

2 processes x batch 1 must give the update of 1 process x batch 2 (within 1e-5 in fp32), the run
directory must be written once (by rank 0), a run whose rank 1 is killed mid-step must stop
within a minute with its last checkpoint intact and, resumed on 2 processes, end bitwise as the
uninterrupted one, and `evaluate` on 2 processes must give the metrics of one.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
import torch
from launches import (
    assert_processes_equal_one,
    assert_sharded_evaluate_equals_one_process,
    common,
    final,
    grpo_run,
    launch,
    steps,
)

from vqa_grpo.config_load import load_config
from vqa_grpo.errors import UserError
from vqa_grpo.training import integrity, loop


@pytest.fixture(scope="module")
def two_processes(synth_dir, tiny_model_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("ddp") / "run"
    done = launch("sft", common(synth_dir, tiny_model_dir, out, "train.per_device_batch_size=1"))
    return out, done


@pytest.mark.slow
def test_two_processes_of_batch_one_equal_one_process_of_batch_two(two_processes, synth_dir, tiny_model_dir, tmp_path):
    out2, done = two_processes
    out1 = tmp_path / "one"
    loop.run(load_config(None, common(synth_dir, tiny_model_dir, out1, "train.per_device_batch_size=2")), "sft")
    assert_processes_equal_one(out1, out2, done, tiny_model_dir)
    assert "sft: 2 processes, MULTI_CPU on cpu" in done.stderr


@pytest.mark.slow
def test_the_run_directory_is_written_once_with_every_rank_rng(two_processes):
    out, _ = two_processes
    assert sorted(p.name for p in out.iterdir()) == [
        "checkpoint-2",
        "checkpoint-4",
        "config.yaml",
        "final",
        "metrics.jsonl",
    ]
    ckpt = out / "checkpoint-4"
    assert (ckpt / "rng.pt").is_file() and (ckpt / "rng-rank1.pt").is_file()
    state = json.loads((ckpt / "trainer_state.json").read_text())
    assert state["world_size"] == 2 and state["data"]["pos"] == 4 * 2  # 4 global batches of 2


def launch_with_hook(args: list[str], hook: str, folder: Path, env: dict | None = None):
    """``vqa-grpo sft ARGS`` on 2 processes with ``hook`` as the workers' sitecustomize (written to
    ``folder``; it injects a fault into one rank); the launch is expected to fail."""
    folder.mkdir()
    (folder / "sitecustomize.py").write_text(hook)
    path = os.pathsep.join([str(folder), *filter(None, [os.environ.get("PYTHONPATH")])])
    done = launch("sft", args, check=False, env={"PYTHONPATH": path, **(env or {})})
    assert done.returncode != 0
    return done


KILL_RANK_1 = """
import os
if os.environ.get("RANK") == "1":  # sitecustomize of the launched workers: rank 1 dies in its third micro-batch
    import signal, time
    from vqa_grpo.training import steps
    _real, _calls = steps.sft_micro_loss, []
    def sft_micro_loss(*args, **kwargs):
        _calls.append(1)
        if len(_calls) == 3:  # step 3, after checkpoint-2; rank 0 is then in the step's gradient all-reduce
            open(os.environ["KILLED_AT"], "w").write(repr(time.time()))
            os.kill(os.getpid(), signal.SIGKILL)
        return _real(*args, **kwargs)
    steps.sft_micro_loss = sft_micro_loss
if os.environ.get("RANK") == "0":  # rank 0 takes a second to see its collective fail: the agent's SIGTERM comes first
    import time
    from vqa_grpo.training import loop
    _peer_lost = loop.peer_lost
    def peer_lost(*args, **kwargs):
        time.sleep(1.0)
        return _peer_lost(*args, **kwargs)
    loop.peer_lost = peer_lost
"""


RANK_1_DISK_FULL = """
import os
if os.environ.get("RANK") == "1":  # sitecustomize of the launched workers: rank 1's disk fills at checkpoint-4
    import errno
    from vqa_grpo.training import checkpoint
    _real = checkpoint._save
    def _save(obj, path):
        if path.parent.name == ".tmp-checkpoint-4" and path.name == "rng-rank1.pt":
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        _real(obj, path)
    checkpoint._save = _save
"""


@pytest.mark.slow
def test_a_dead_rank_then_a_full_disk_on_rank_1_stop_both_and_two_processes_resume_bitwise(
    two_processes, synth_dir, tiny_model_dir, tmp_path
):
    """Three launches of the uninterrupted run's settings: rank 1 SIGKILLed in step 3; resumed, rank
    1's disk full while checkpoint-4 is saved; resumed again, to the end."""
    full, _ = two_processes
    out = tmp_path / "run"
    args = common(synth_dir, tiny_model_dir, out, "train.per_device_batch_size=1", "train.collective_timeout=30")
    done = launch_with_hook(args, KILL_RANK_1, tmp_path / "kill", env={"KILLED_AT": str(tmp_path / "killed_at")})
    assert time.time() - float((tmp_path / "killed_at").read_text()) < 60
    said = [line for line in done.stderr.splitlines() if line.startswith("stopped: rank 0: a collective")]
    assert len(said) == 1 and said[0].endswith(
        f"another process died or hung; the last checkpoint is checkpoint-2 in {out}; "
        "continue with train.resume=auto on 2 processes"
    ), done.stderr[-3000:]
    assert sorted(p.name for p in out.iterdir()) == ["checkpoint-2", "config.yaml", "metrics.jsonl"]
    assert integrity.check(out / "checkpoint-2") is None and [r["step"] for r in steps(out)] == [1, 2]
    resume = [*args, "train.resume=auto"]
    with pytest.raises(UserError, match="saved by 2 processes, this run has 1"):
        loop.run(load_config(None, resume), "sft")

    done = launch_with_hook(resume, RANK_1_DISK_FULL, tmp_path / "disk")
    said = [line for line in done.stderr.splitlines() if line.startswith("stopped: ")]
    assert said == [
        f"stopped: no space left while saving checkpoint-4 in {out}; the last good checkpoint is checkpoint-2"
    ], done.stderr[-3000:]
    assert sorted(p.name for p in out.iterdir()) == [
        "checkpoint-2",
        "config.yaml",
        "metrics.jsonl",
    ]  # no half directory
    assert integrity.check(out / "checkpoint-2") is None

    launch("sft", resume)
    a, b = final(full), final(out)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert steps(out) == steps(full)


@pytest.mark.slow
def test_grpo_on_two_processes_logs_each_step_once(synth_dir, tiny_model_dir, tmp_path_factory):
    out = grpo_run("ddp", synth_dir, tiny_model_dir, tmp_path_factory)
    lines = steps(out)
    assert [r["step"] for r in lines] == [1, 2] and all("reward" in r for r in lines)
    samples = [json.loads(s) for s in (out / "completions.jsonl").read_text().splitlines()]
    # every group of a step, both processes' (one question each), written once
    assert [s["step"] for s in samples] == [1, 1, 2, 2] and len({(s["step"], s["id"]) for s in samples}) == 4


@pytest.mark.slow
def test_evaluate_on_two_processes_gives_the_metrics_of_one(synth_dir, tiny_model_dir, tmp_path, tmp_path_factory):
    assert_sharded_evaluate_equals_one_process("ddp", synth_dir, tiny_model_dir, tmp_path, tmp_path_factory)
