"""GRPO moves the policy toward what the reward prefers, on the real tiny model.

A short SFT warm start teaches the answer format; then the reward is replaced by a preference
the data does not hold (1 for "yes", 0 otherwise, on yes/no questions) and GRPO must raise the
share of "yes" among sampled answers. It fails if the sign of the policy gradient is wrong, if
advantages are mis-assigned to rows, or if the update does not reach the answer token.
"""

from __future__ import annotations

import pytest
import torch
from plans import rollout

from vqa_grpo.config_load import load_config
from vqa_grpo.data.loader import load_vqa
from vqa_grpo.grpo.math import group_advantages
from vqa_grpo.grpo.rollout import grpo_objective
from vqa_grpo.models.loading import load_model
from vqa_grpo.training.loop import run

CPU = torch.device("cpu")


@pytest.mark.slow
def test_grpo_raises_the_share_of_the_rewarded_answer(synth_dir, tiny_model_dir, tmp_path):
    base = [f"data.path={synth_dir}", "data.eval_fraction=0", "train.cpu_threads=1", "train.progress=false"]
    warm = load_config(
        None,
        [
            *base,
            f"model.name_or_path={tiny_model_dir}",
            f"train.output_dir={tmp_path / 'warm'}",
            "train.max_steps=60",
            "train.per_device_batch_size=8",
            "train.learning_rate=3e-4",
        ],
    )
    warm_dir = run(warm, "sft").final_dir
    cfg = load_config(
        None,
        [
            *base,
            f"model.name_or_path={warm_dir}",
            "grpo.num_generations=8",
            "grpo.temperatures=[1.0]",
            "grpo.top_ps=[1.0]",
            "grpo.max_completion_length=3",
        ],
    )
    torch.manual_seed(0)
    lm = load_model(cfg.model, CPU)
    examples = [e for e in load_vqa(cfg.data).train if e.answer_type == "yes/no"][:8]
    images = [e.load_image() for e in examples]
    opt = torch.optim.AdamW([p for p in lm.model.parameters() if p.requires_grad], lr=3e-4)
    shares = []
    for _ in range(25):
        ro = rollout(lm.model, lm.adapter, lm.processor, examples, images, cfg.grpo, cfg.reward, CPU)
        ro.rewards = torch.tensor([1.0 if a == "yes" else 0.0 for a in ro.answers])
        ro.advantages = group_advantages(ro.rewards, ro.group_size)
        shares.append(float(ro.rewards.mean()))
        loss, _ = grpo_objective(lm.model, lm.adapter, lm.processor, ro, cfg.grpo)
        loss.backward()
        opt.step()
        opt.zero_grad()
    first, last = sum(shares[:3]) / 3, sum(shares[-3:]) / 3
    assert 0.05 < first < 0.95, shares  # the warm start samples both answers: the groups carry signal
    assert last > first + 0.25, shares
