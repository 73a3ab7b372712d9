"""Augmented rollouts (grpo.augment; grpo/augment.py): the share by step, the perturbed images,
a real GRPO rollout whose chosen rows were sampled on them, and the bad settings refused.

The rollout test samples at temperature 1 and top-p 1, so each row's sampler log-probs are the
model's own: the last k rows of a group match a teacher-forced pass on the perturbed image (and
not the clean one), the first G - k the clean image's.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from plans import for_run

from vqa_grpo.cli import main
from vqa_grpo.config import DataConfig, GRPOConfig
from vqa_grpo.config_load import load_config
from vqa_grpo.data.loader import load_vqa
from vqa_grpo.data.perturb import perturb, perturb_seed
from vqa_grpo.data.prompts import prompt_template, user_texts
from vqa_grpo.grpo.augment import augment_batch, augmented_count
from vqa_grpo.models.loading import load_model
from vqa_grpo.models.plan import PLAIN
from vqa_grpo.models.scoring import completion_logits
from vqa_grpo.training.batches import Batches
from vqa_grpo.training.steps import completion_records, make_rollouts

B, G = 2, 4


def test_share_by_step_for_each_schedule():
    grpo = GRPOConfig(num_generations=4, augment=["jpeg:2"], augment_share=0.5)
    assert [augmented_count(grpo, s, 4) for s in range(5)] == [2, 2, 2, 2, 2]
    decay = GRPOConfig(num_generations=4, augment=["jpeg:2"], augment_share=0.5, augment_schedule="linear_decay")
    # 4 x 0.5 x (1 - s/4) = 2, 1.5, 1, 0.5, 0, rounded half up
    assert [augmented_count(decay, s, 4) for s in range(5)] == [2, 2, 1, 1, 0]
    assert augmented_count(GRPOConfig(num_generations=4), 0, 4) == 0  # off by default
    assert augmented_count(GRPOConfig(num_generations=4, augment=["crop"], augment_share=1.0), 3, 4) == 4


def test_each_question_draws_one_perturbation_seeded_by_step_and_id(synth_dir):
    examples = load_vqa_train(synth_dir)[:6]
    images = [e.load_image() for e in examples]
    grpo = GRPOConfig(num_generations=4, augment=["gaussian_noise:3", "rotate:5"])
    a = augment_batch(grpo, 7, 3, 10, examples, images)
    assert a.count == 2 and set(a.labels) <= {"gaussian_noise:3", "rotate:5"} and len(set(a.labels)) == 2
    for e, image, got, lab in zip(examples, images, a.visuals, a.labels):
        name, severity = lab.split(":")
        want = perturb(image, name, int(severity), perturb_seed(f"{e.id}\0{3}", name, int(severity), 7))
        assert np.array_equal(np.asarray(got), np.asarray(want))
    again = augment_batch(grpo, 7, 3, 10, examples, images)  # no RNG state: the same again
    assert again.labels == a.labels and all(
        np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(again.visuals, a.visuals)
    )
    assert augment_batch(GRPOConfig(augment=["jpeg"], augment_share=0.1), 7, 3, 10, examples, images) is None  # k = 0


def load_vqa_train(synth_dir):
    return load_vqa(DataConfig(path=str(synth_dir)), seed=0).train


def model_logprobs(lm, prompts, ids, mask):  # -> [n, C], the sampler's at temperature 1, top-p 1
    with torch.no_grad():
        logits = completion_logits(lm.model, lm.adapter, prompts, ids, mask, PLAIN).double()
    logits[..., lm.adapter.suppressed_token_ids(lm.processor)] = -float("inf")
    return torch.log_softmax(logits, -1).gather(-1, ids.unsqueeze(-1)).squeeze(-1) * mask


def test_the_chosen_rows_of_a_training_rollout_are_sampled_on_the_perturbed_images(synth_dir, tiny_model_dir):
    cfg = load_config(
        None,
        [
            f"model.name_or_path={tiny_model_dir}",
            "grpo.num_generations=4",
            "grpo.max_completion_length=4",
            "grpo.temperatures=[1.0]",
            "grpo.top_ps=[1.0]",
            "grpo.augment=[gaussian_noise:5]",
            "train.per_device_batch_size=2",
        ],
    )
    lm = load_model(cfg.model, "cpu")
    torch.manual_seed(0)
    pending = make_rollouts(
        cfg, lm, None, Batches(load_vqa_train(synth_dir), B, 0), torch.device("cpu"), for_run(cfg, lm), step=1
    )
    ro = pending.rollouts[0]
    images = [e.load_image() for e in ro.examples]
    aug = augment_batch(cfg.grpo, cfg.train.seed, 1, cfg.train.max_steps, ro.examples, images)
    # what the logs show: the share of perturbed completions, and each row's perturbation
    assert pending.stats["augment/share"] == 0.5 and aug.labels == ["gaussian_noise:5"] * 2
    assert ro.augmented == [None, None, "gaussian_noise:5", "gaussian_noise:5"] * 2
    records = completion_records(2, [ro])
    assert [r["augmented"] for r in records] == [[None, None, "gaussian_noise:5", "gaussian_noise:5"]] * 2
    asked = user_texts(ro.examples, prompt_template(cfg.data, cfg.reward.reasoning))
    clean = lm.adapter.encode_prompts(lm.processor, images, asked)
    noisy = lm.adapter.encode_prompts(lm.processor, aug.visuals, asked)
    C = ro.completion_ids.shape[1]
    ids, mask = ro.completion_ids.view(B, G, C), ro.completion_mask.view(B, G, C)
    sampled = ro.sampling_logprobs.view(B, G, C)
    assert aug.count == 2 and mask.sum() > 0 and ro.plan.sample_shared  # each image's prompt run once per sub-group
    for prompts, cols, other in ((clean, slice(0, 2), noisy), (noisy, slice(2, 4), clean)):
        i, m = ids[:, cols].reshape(-1, C), mask[:, cols].reshape(-1, C)
        want = model_logprobs(lm, lm.adapter.repeat(prompts, 2), i, m)
        assert torch.allclose(sampled[:, cols].reshape(-1, C).double(), want, atol=1e-4)
        assert not torch.allclose(model_logprobs(lm, lm.adapter.repeat(other, 2), i, m), want, atol=1e-3)
    # the loss reads the clean prompts
    assert torch.equal(ro.prompts.input_ids, clean.input_ids)


@pytest.mark.parametrize(
    "override, message",
    [
        ("grpo.augment=[blurry]", "grpo.augment: unknown perturbation 'blurry'"),
        ("grpo.augment=[jpeg:6]", "grpo.augment: perturbation jpeg: severity 6 is outside 1-5"),
        ("grpo.augment_share=1.5", "grpo.augment_share=1.5: must be in [0, 1]"),
    ],
)
def test_bad_settings_are_refused_in_one_line(override, message, capsys):
    assert main(["train", override]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: {message}") and "\n" not in err


def test_augment_with_the_seed_reports_loss_is_refused(capsys):
    assert main(["train", "grpo.augment=[jpeg]", "grpo.loss_type=seed_report"]) == 2
    assert "grpo.augment has no rollouts to perturb for loss_type=seed_report" in capsys.readouterr().err
