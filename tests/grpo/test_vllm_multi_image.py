"""vLLM sampling on questions with several images or none (grpo/vllm_backend.py): the multi-modal
data of each prompt, the engine's per-prompt limit from the data, and videos refused before
anything is written. Pure parts: vLLM is not installed here."""

from __future__ import annotations

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
