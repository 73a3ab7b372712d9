"""A video on Qwen2-VL and Qwen2.5-VL's native video path, with the tiny models and real processors
of tests/models/test_several_images.py (its module fixture and helpers): the prompt, the
per-video tensors, the temporal positions, and the shared prefix and fused prefill against the
plain path (log-probs within 1e-5, gradients within 1e-4).

Shapes: B prompts, G = 2 completions each, C = 3 completion tokens.
"""

from __future__ import annotations

import pytest
import torch
from test_prefix import assert_grads_close
from test_several_images import SQUARE, completions, image, logprobs_and_grads, models  # noqa: F401 (fixture)

from vqa_grpo.data.types import Video

G = 2


def test_qwen2_vl_takes_a_video_natively_and_the_shared_prefix_equals_the_plain_path(models):
    lm = models("qwen2_vl")
    frames = [image(56, 56, (60 * i, 40, 40)) for i in range(4)]
    visuals = [[Video(frames, fps=2.0)], [SQUARE, Video(frames, fps=2.0)], []]
    questions = ["What color is the circle?", "Is <video> the same as <image>?", "Is there a red circle?"]
    text = lm.adapter.prompt_text(lm.processor, questions[1], visuals[1])
    assert text == (
        "<|im_start|>user\nIs <|vision_start|><|video_pad|><|vision_end|> the same as "
        "<|vision_start|><|image_pad|><|vision_end|>?<|im_end|>\n<|im_start|>assistant\n"
    )
    prompts = lm.adapter.encode_prompts(lm.processor, visuals, questions)
    assert (prompts.images_per_prompt, prompts.videos_per_prompt) == ((0, 1, 0), (1, 1, 0))
    # 4 frames of 56 px: 2 temporal patches of 4 x 4, 8 video tokens after the 2 x 2 merge, per video.
    assert prompts.extra["video_grid_thw"].tolist() == [[2, 4, 4], [2, 4, 4]]
    assert prompts.extra["pixel_values_videos"].shape[0] == 2 * 32
    assert (prompts.extra["mm_token_type_ids"] == 2).sum(1).tolist() == [8, 8, 0]
    repeated = lm.adapter.repeat(prompts, 2)
    direct = lm.adapter.encode_prompts(
        lm.processor, [v for v in visuals for _ in range(2)], [q for q in questions for _ in range(2)]
    )
    for key, value in direct.extra.items():
        assert torch.equal(repeated.extra[key], value), key

    ids, mask = completions(lm, 3 * G, seed=3)
    weights = torch.linspace(-1.0, 1.0, ids.numel()).view_as(ids)
    plain_logp, plain_grads = logprobs_and_grads(lm, prompts, ids, mask, "plain", weights)
    logp, grads = logprobs_and_grads(lm, prompts, ids, mask, "shared prefix", weights)
    assert (logp - plain_logp).abs().max() < 1e-5
    assert_grads_close(plain_grads, grads)


def test_qwen2_5_vl_video_positions_follow_the_frames_rate(models):
    """Qwen2.5-VL spaces a video's temporal positions by tokens_per_second * temporal_patch_size / fps:
    the clip's rate must reach the processor (its default would be 24 fps)."""
    lm = models("qwen2_5_vl")
    frames = [image(56, 56, (60 * i, 40, 40)) for i in range(4)]
    prompts = lm.adapter.encode_prompts(lm.processor, [[Video(frames, fps=0.5)]], ["What moves?"])
    assert prompts.extra["second_per_grid_ts"].tolist() == [4.0]  # 2 frames a temporal patch at 0.5 fps
    inner = lm.model.model
    positions, _ = inner.get_rope_index(
        prompts.input_ids, **{k: v for k, v in prompts.extra.items() if k != "pixel_values_videos"}
    )
    video = prompts.extra["mm_token_type_ids"][0] == 2
    temporal = positions[0, 0, video].unique().tolist()
    step = lm.model.config.vision_config.tokens_per_second * 4
    assert temporal == [temporal[0], temporal[0] + step]


@pytest.mark.parametrize("family", ["qwen2_vl", "qwen2_5_vl"])
def test_a_long_clip_on_the_shared_prefix_and_fused_prefill_equals_the_plain_path(family, models):
    """8 frames at 0.5 fps: Qwen2.5-VL's temporal positions step by tokens_per_second * 4 s and end
    past the prompt's text, whose last position the completion continues from (as the full
    forward numbers it), not from the largest position (generate's rope_deltas)."""
    lm = models(family)
    frames = [image(56, 56, (15 * i, 40, 40)) for i in range(8)]
    prompts = lm.adapter.encode_prompts(lm.processor, [[Video(frames, fps=0.5)], [SQUARE]], ["What moves?", "Red?"])
    positions, _ = lm.model.model.get_rope_index(
        prompts.input_ids, **{k: v for k, v in prompts.extra.items() if "pixel" not in k}
    )
    last, largest = positions[0, 0, -1].item(), positions[:, 0].max().item()
    assert largest > last if family == "qwen2_5_vl" else largest == last  # Qwen2-VL: no temporal scaling
    ids, mask = completions(lm, 2 * G, seed=3)
    weights = torch.linspace(-1.0, 1.0, ids.numel()).view_as(ids)
    plain_logp, plain_grads = logprobs_and_grads(lm, prompts, ids, mask, "plain", weights)
    for path in ("shared prefix", "fused prefill"):
        logp, grads = logprobs_and_grads(lm, prompts, ids, mask, path, weights)
        assert (logp - plain_logp).abs().max() < 1e-5, path
        assert_grads_close(plain_grads, grads)
