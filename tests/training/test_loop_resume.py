"""Checkpoints and resume in the training loop: a saved checkpoint restores its weights, and a run
resumed from a checkpoint path or with train.resume=auto after a kill ends bitwise equal to one
that was never interrupted (sft and grpo); a resumed optimiser keeps its own kernel choice.

Runs the real loop on the tiny Qwen2-VL and the synthetic set, fp32 on the CPU, one thread.
"""

from __future__ import annotations

import copy
import json
import shutil

import pytest
import torch
from test_loop import config, resume_overrides, train_records, weights

from vqa_grpo.config import ModelConfig, TrainConfig
from vqa_grpo.models.loading import load_model
from vqa_grpo.training import loop
from vqa_grpo.training.checkpoint import load_checkpoint, save_checkpoint
from vqa_grpo.training.optim import make_optimizer, make_scheduler


def test_load_checkpoint_restores_the_saved_weights(tiny_model_dir, tmp_path):
    lm = load_model(ModelConfig(name_or_path=str(tiny_model_dir)), "cpu")
    with torch.no_grad():
        for p in lm.model.parameters():
            p.add_(0.5)
    opt = make_optimizer(lm.model.parameters(), TrainConfig())
    sched = make_scheduler(opt, TrainConfig())
    ckpt = save_checkpoint(tmp_path, 1, lm.model, lm.processor, opt, sched, {"data": {}}, limit=2)
    saved = {k: v.clone() for k, v in lm.model.state_dict().items()}

    fresh = load_model(ModelConfig(name_or_path=str(tiny_model_dir)), "cpu")
    opt2 = make_optimizer(fresh.model.parameters(), TrainConfig())
    load_checkpoint(ckpt, fresh.model, opt2, make_scheduler(opt2, TrainConfig()))
    restored = fresh.model.state_dict()
    assert all(torch.equal(saved[k], restored[k]) for k in saved)


@pytest.fixture(scope="module", params=["sft", "grpo"])
def uninterrupted(request, synth_dir, tiny_model_dir, tmp_path_factory):
    mode = request.param
    out = tmp_path_factory.mktemp(f"full_{mode}") / "run"
    loop.run(config(synth_dir, tiny_model_dir, out, *resume_overrides(mode)), mode)
    return mode, out


@pytest.mark.slow
def test_resume_from_a_checkpoint_path_ends_bitwise_equal(uninterrupted, synth_dir, tiny_model_dir, tmp_path):
    mode, full = uninterrupted
    at2 = weights(full / "checkpoint-2")
    assert any(not torch.equal(at2[k], v) for k, v in weights(full / "final").items())  # steps 3-4 trained
    out = tmp_path / "resumed"
    loop.run(
        config(synth_dir, tiny_model_dir, out, *resume_overrides(mode), f"train.resume={full / 'checkpoint-2'}"), mode
    )
    a, b = weights(full / "final"), weights(out / "final")
    assert all(torch.equal(a[k], b[k]) for k in a)
    expected = train_records(full)[2:]
    assert [r["step"] for r in expected] == [3, 4]
    assert train_records(out) == expected  # loss, lr, grad norm, rewards: exactly equal
    if mode == "grpo":  # the sampled completions of steps 3-4 too (the RNG state was restored)
        sampled = [json.loads(s) for s in (full / "completions.jsonl").read_text().splitlines()]
        sampled = [r for r in sampled if r["step"] > 2]  # one line per question group
        assert [json.loads(s) for s in (out / "completions.jsonl").read_text().splitlines()] == sampled


@pytest.mark.slow
def test_resume_auto_after_a_kill_ends_bitwise_equal(uninterrupted, synth_dir, tiny_model_dir, tmp_path):
    # A run killed after checkpoint-2 was written: remove what the last two steps wrote.
    mode, full = uninterrupted
    out = tmp_path / "run"
    shutil.copytree(full, out)
    shutil.rmtree(out / "checkpoint-4")
    shutil.rmtree(out / "final")
    loop.run(config(synth_dir, tiny_model_dir, out, *resume_overrides(mode), "train.resume=auto"), mode)
    a, b = weights(full / "final"), weights(out / "final")
    assert all(torch.equal(a[k], b[k]) for k in a)
    last = {r["step"]: r for r in train_records(out)}  # the resumed run's line for each step
    assert [last[s] for s in (1, 2, 3, 4)] == train_records(full)


def test_resume_keeps_the_optimizers_own_kernel_choice():
    from vqa_grpo.distributed.helpers import load_optimizer_keeping_kind

    torch.manual_seed(0)
    lin = torch.nn.Linear(3, 2)
    old = torch.optim.AdamW(lin.parameters(), lr=0.1, foreach=False)  # an older checkpoint's kind
    lin(torch.randn(4, 3)).sum().backward()
    old.step()
    new = torch.optim.AdamW(lin.parameters(), lr=0.1, fused=True)
    plain = copy.deepcopy(new)
    plain.load_state_dict(old.state_dict())
    assert plain.param_groups[0]["fused"] is None  # what torch alone does: the saved flags win
    load_optimizer_keeping_kind(new, old.state_dict())
    assert new.param_groups[0]["fused"] is True and new.param_groups[0]["foreach"] is None
    for p in lin.parameters():
        assert torch.equal(new.state[p]["exp_avg"], old.state[p]["exp_avg"])
