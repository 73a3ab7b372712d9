"""grpo.augment under resume: a GRPO run with augmented rollouts (linear decay: steps 1-3 augment,
step 4 no longer) resumed from its checkpoint-2 ends bitwise equal to the uninterrupted run; the
perturbed images come from (seed, step, id) alone, so no RNG state is added to the checkpoint."""

from __future__ import annotations

import json

import pytest
import torch
from test_loop import config, resume_overrides, train_records, weights

from vqa_grpo.training import loop

AUGMENTED = ("gaussian_noise:4", "rotate:3")
AUGMENT = ["grpo.augment=[gaussian_noise:4,rotate:3]", "grpo.augment_share=0.5", "grpo.augment_schedule=linear_decay"]


@pytest.mark.slow
def test_resume_with_augmented_rollouts_ends_bitwise_equal(synth_dir, tiny_model_dir, tmp_path):
    settings = [*resume_overrides("grpo"), *AUGMENT]  # G = 2: k = 1, 1, 1, 0 at steps 1-4
    full = tmp_path / "full"
    loop.run(config(synth_dir, tiny_model_dir, full, *settings), "grpo")
    out = tmp_path / "resumed"
    loop.run(config(synth_dir, tiny_model_dir, out, *settings, f"train.resume={full / 'checkpoint-2'}"), "grpo")
    a, b = weights(full / "final"), weights(out / "final")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert train_records(out) == train_records(full)[2:]
    assert [r["augment/share"] for r in train_records(full)] == [0.5, 0.5, 0.5, 0.0]  # k / G
    sampled = [json.loads(s) for s in (full / "completions.jsonl").read_text().splitlines()]
    marked = [r.get("augmented", [None, None]) for r in sampled]  # G = 2: the second row perturbed
    assert {r["step"] for r, m in zip(sampled, marked) if m[0] is None and m[1] in AUGMENTED} == {1, 2, 3}
    assert all("augmented" not in r for r in sampled if r["step"] == 4)  # k = 0: every row clean
    assert [json.loads(s) for s in (out / "completions.jsonl").read_text().splitlines()] == [
        r for r in sampled if r["step"] > 2
    ]
