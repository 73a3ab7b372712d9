"""What the multi-process tests (test_distributed.py, test_fsdp.py, test_deepspeed.py) share: the
launch, the run settings, the runs they all compare against (made once per test session, whichever
pytest-xdist worker needs one first), and "N processes equal one"."""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path
from typing import Callable

import pytest
import torch
from safetensors.torch import load_file

from vqa_grpo.config_load import load_config
from vqa_grpo.training import loop

ROOT = Path(__file__).resolve().parents[2]
TIMINGS = {"step_seconds", "rollout_seconds", "completion_tokens_per_second", "rss_mib"}  # and memory
EVAL = ("data.eval_fraction=0.04", "train.eval_steps=2", "eval.max_new_tokens=3")  # 8 eval questions
SFT = ("train.gradient_accumulation_steps=2", *EVAL)  # a step's first micro-batch skips the gradient reduction
RUN_FILES = ["best", "checkpoint-2", "checkpoint-4", "config.yaml", "final", "metrics.jsonl"]


def common(synth_dir, model_dir, out, *extra: str) -> list[str]:
    return [
        f"model.name_or_path={model_dir}",
        f"data.path={synth_dir}",
        f"train.output_dir={out}",
        "train.device=cpu",
        "train.cpu_threads=1",
        "train.progress=false",
        "data.eval_fraction=0",
        "train.max_steps=4",
        "train.save_steps=2",
        "train.learning_rate=1e-4",
        "train.report_to=none",
        *extra,
    ]


def launch(
    command: str, args: list[str], processes: int = 2, config: str = "ddp", check: bool = True, env: dict | None = None
) -> subprocess.CompletedProcess:
    """``accelerate launch --config_file configs/accelerate/<config>.yaml -m vqa_grpo.cli <command> <args>``
    (``env``: more environment variables; ``check``: assert that it exits 0)."""
    accelerate = Path(sys.executable).parent / "accelerate"
    cmd = [
        str(accelerate),
        "launch",
        "--config_file",
        str(ROOT / "configs" / "accelerate" / f"{config}.yaml"),
        "--num_processes",
        str(processes),
        "--main_process_port",
        str(free_port()),
        "-m",
        "vqa_grpo.cli",
        command,
        *args,
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    errors = [line for line in done.stderr.splitlines() if "Error" in line or line.startswith("error:")]
    assert done.returncode == 0 or not check, "\n".join(errors[:20]) + "\n" + done.stderr[-1500:]
    return done


def free_port() -> int:
    """A free TCP port for the rendezvous (another test session may be using accelerate's 29500)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def steps(run_dir: Path) -> list[dict]:
    lines = [json.loads(s) for s in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k not in TIMINGS} for r in lines if "loss" in r]


def evals(run_dir: Path) -> list[dict]:
    return [r for r in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines()) if "loss" not in r]


def final(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(run_dir / "final" / "model.safetensors")


# ---- runs made once per session ------------------------------------------------------------------


def shared(name: str, tmp_path_factory, make: Callable[[Path], None]) -> Path:
    """``make(folder)`` once per test session, under a lock, so that every xdist worker (each one
    process of the session) gets the same folder; the runs in it take their settings from the
    arguments only (the data and tiny model each worker builds are byte-identical)."""
    base = tmp_path_factory.getbasetemp()
    root = (base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base) / "shared-runs"
    root.mkdir(exist_ok=True)
    out, done, failed = root / name, root / f"{name}.done", root / f"{name}.failed"
    with (root / f"{name}.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if failed.exists():  # another worker's attempt failed: do not run it again, each may take minutes
            pytest.fail(f"the shared run {name} failed in another worker: {failed.read_text()}")
        if not done.exists():
            shutil.rmtree(out, ignore_errors=True)
            try:
                make(out)
            except BaseException as e:
                failed.write_text(f"{type(e).__name__}: {str(e)[:500]}")
                raise
            done.touch()
    return out


def stopping_model(tiny_model_dir, tmp_path_factory) -> Path:
    """The tiny model with "," and "." as stop tokens as well (its generation config), so that rows
    stop at different steps: some within a few tokens, others at the length limit."""

    def make(out: Path) -> None:
        shutil.copytree(tiny_model_dir, out)
        gen = json.loads((out / "generation_config.json").read_text())
        vocab = json.loads((out / "tokenizer.json").read_text())["model"]["vocab"]
        gen["eos_token_id"] = [gen["eos_token_id"], vocab[","], vocab["."]]
        (out / "generation_config.json").write_text(json.dumps(gen))

    return shared("stopping-model", tmp_path_factory, make)


def grpo_run(config: str, synth_dir, tiny_model_dir, tmp_path_factory) -> Path:
    """2 GRPO steps on 2 processes launched with configs/accelerate/<config>.yaml: full fine-tune,
    KL to the reference copy (beta > 0), 2 completions of up to 4 tokens from the stopping model,
    a checkpoint after each step; FSDP and ZeRO-3 score the completions in chunks of 2 positions."""
    model = stopping_model(tiny_model_dir, tmp_path_factory)

    def make(out: Path) -> None:
        args = common(
            synth_dir,
            model,
            out,
            "train.per_device_batch_size=1",
            "train.max_steps=2",
            "train.save_steps=1",
            "grpo.num_generations=2",
            "grpo.max_completion_length=4",
            "grpo.beta=0.04",
            "grpo.sft_coef=0.5",
            # The seed report's composite: with the guard's rewards one weight of 65,536 came out of
            # FSDP2 1.13e-6 from DDP's (AdamW amplifying the reduction order), past the 1e-6 allowed.
            "reward.composite_guard=false",
            # The sharded runs score R x C = 2 x 4 positions in chunks of 2, recomputing the head in
            # backward under gathered weights; DDP, the baseline, in one chunk (the default 256).
            *(() if config == "ddp" else ("grpo.logprob_chunk_size=2",)),
        )
        launch("train", args, config=config)

    return shared(f"grpo-{config}", tmp_path_factory, make)


def one_process_sft(synth_dir, tiny_model_dir, tmp_path_factory) -> Path:
    """4 SFT steps on 1 process x batch 2 x 2 micro-batches (``SFT``), evaluating and saving every 2
    steps: what the FSDP and DeepSpeed runs of 2 processes x batch 1 must equal."""

    def make(out: Path) -> None:
        cfg = load_config(None, common(synth_dir, tiny_model_dir, out, "train.per_device_batch_size=2", *SFT))
        loop.run(cfg, "sft")

    return shared("sft-one-process", tmp_path_factory, make)


# ---- N processes equal one -----------------------------------------------------------------------


def assert_processes_equal_one(one: Path, many: Path, done, start: Path, *, optimizer: bool = True) -> None:
    """The run of several processes ``many`` (its launch ``done``) made the update of the 1-process
    run ``one`` from the model at ``start``: the final weights within 1e-5, every step's loss and
    gradient norm within 1e-5 relative and the same learning rate, one line per step (rank 0 alone
    writes), one "done" line; with ``optimizer``, AdamW's moments at checkpoint-4 in the layout of
    a 1-process run within 1e-6."""
    a, b, s = final(one), final(many), load_file(start / "model.safetensors")
    assert sorted(b) == sorted(a) and any(not torch.equal(a[k], s[k]) for k in a)
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=0, atol=1e-5)
    ones, manys = steps(one), steps(many)
    assert [r["step"] for r in manys] == [1, 2, 3, 4]
    for r1, r2 in zip(ones, manys, strict=True):
        assert r2["loss"] == pytest.approx(r1["loss"], rel=1e-5) and r2["grad_norm"] == pytest.approx(
            r1["grad_norm"], rel=1e-5
        )
        assert r2["lr"] == r1["lr"]
    assert done.stdout.count("done: 4 steps") == 1
    if optimizer:
        opt1, opt2 = (torch.load(o / "checkpoint-4" / "optimizer.pt", weights_only=True) for o in (one, many))
        assert opt2["param_groups"] == opt1["param_groups"] and sorted(opt2["state"]) == sorted(opt1["state"])
        for i, st in opt1["state"].items():
            for moment in ("exp_avg", "exp_avg_sq"):
                torch.testing.assert_close(opt2["state"][i][moment], st[moment], rtol=0, atol=1e-6)
            assert torch.equal(opt2["state"][i]["step"], st["step"])


def assert_resume_ends_bitwise(full: Path, out: Path, synth_dir, tiny_model_dir, config: str) -> None:
    """The settings of ``full`` (SFT on 2 processes x batch 1) resumed from its checkpoint-2 into
    ``out`` end bitwise as ``full`` did, with its last two steps' log lines."""
    args = common(
        synth_dir, tiny_model_dir, out, "train.per_device_batch_size=1", *SFT, f"train.resume={full / 'checkpoint-2'}"
    )
    launch("sft", args, config=config)
    a, b = final(full), final(out)
    assert sorted(a) == sorted(b) and all(torch.equal(a[k], b[k]) for k in a)
    assert steps(out) == steps(full)[2:]


def flat(tree, prefix: str = "") -> dict[str, float]:
    """Nested metrics as {"a/b/c": number} (lists by index)."""
    items = tree.items() if isinstance(tree, dict) else enumerate(tree)
    out: dict[str, float] = {}
    for k, v in items:
        key = f"{prefix}/{k}"
        out.update(flat(v, key) if isinstance(v, (dict, list)) else {key: v})
    return out


def assert_same_scores(got: dict, want: dict) -> None:
    """Equal metrics (flat dicts; text values such as the VQA convention exactly), the semantic
    similarity up to 1e-5: the semantic model's embeddings differ in the 6th-7th digit between
    processes (its batches are padded differently)."""
    assert sorted(got) == sorted(want)
    for k, v in want.items():
        if not isinstance(v, (int, float)) or isinstance(v, bool):
            assert got[k] == v, k
            continue
        assert got[k] == pytest.approx(v, rel=1e-5 if "semantic" in k else 1e-9, abs=1e-9), k


def seven_questions(synth_dir, folder: Path) -> Path:
    """The first 7 rows of ``synth_dir`` with their images, as ``folder``/seven.jsonl."""
    rows = [json.loads(r) for r in (synth_dir / "data.jsonl").read_text().splitlines()[:7]]
    data = folder / "seven.jsonl"
    folder.mkdir(parents=True, exist_ok=True)
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    for r in rows:
        (folder / r["image"]).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(synth_dir / r["image"], folder / r["image"])
    return data


EVALUATE = [
    "train.device=cpu",
    "train.cpu_threads=1",
    "train.progress=false",
    "eval.max_new_tokens=3",
    "eval.batch_size=2",
]


def one_process_evaluate(synth_dir, tiny_model_dir, tmp_path_factory) -> Path:
    """``evaluate`` of the tiny model on the 7 questions in this process: metrics.json, predictions.jsonl."""
    from vqa_grpo.data.loader import load_examples
    from vqa_grpo.evaluation.evaluate import evaluate

    def make(out: Path) -> None:
        data = seven_questions(synth_dir, out / "data")
        cfg = load_config(None, EVALUATE)
        examples, _ = load_examples(str(data), cfg.data)
        evaluate(str(tiny_model_dir), examples, cfg, out / "eval")

    return shared("evaluate-one-process", tmp_path_factory, make) / "eval"


def assert_sharded_evaluate_equals_one_process(config: str, synth_dir, tiny_model_dir, tmp_path, tmp_path_factory):
    """``evaluate`` launched on 2 processes with ``config`` on 7 questions (shares of 4 and 3, the
    second padded for a sharded model) gives the answers and metrics of one process."""
    data = seven_questions(synth_dir, tmp_path)
    launch(
        "evaluate",
        ["--model", str(tiny_model_dir), "--data", str(data), "--out", str(tmp_path / "two"), *EVALUATE],
        config=config,
    )
    one_dir = one_process_evaluate(synth_dir, tiny_model_dir, tmp_path_factory)
    one = json.loads((one_dir / "metrics.json").read_text())
    two = json.loads((tmp_path / "two" / "metrics.json").read_text())
    assert_same_scores(flat(two), flat(one))
    assert two["n"] == one["n"] == 7
    got, ref = (
        [json.loads(r) for r in (d / "predictions.jsonl").read_text().splitlines()] for d in (tmp_path / "two", one_dir)
    )
    assert [(r["id"], r["raw"]) for r in got] == [(r["id"], r["raw"]) for r in ref]
