"""Questions whose prompt (text, images, a video's frames) and what follows it overflow the model's
context are refused in one line before anything is written (models/fit.py), by ``vqa-grpo train``,
``sft`` and ``evaluate``; with fewer frames the run goes on.

The tiny Qwen2-VL (its real processor, 2048 positions): a 224 px frame is 16 x 16 patches, merged
2 x 2 and paired in time, so a clip of 64 such frames takes 32 * 64 = 2048 video tokens, and with
the prompt's text 2068 (measured); 8 frames take 256.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from PIL import Image
from transformers import AutoProcessor, PretrainedConfig

from vqa_grpo.cli import main
from vqa_grpo.config import Config, ModelConfig
from vqa_grpo.data.report import LoadReport
from vqa_grpo.data.synthetic_video import write_mp4
from vqa_grpo.data.types import BadExample, Video, VQAExample
from vqa_grpo.data.video import VideoLoader
from vqa_grpo.errors import UserError
from vqa_grpo.evaluation.answering import answer_and_score
from vqa_grpo.models.adapters import adapter_for
from vqa_grpo.models.fit import After, Split, _frames_sampled, check_fit, context_length, prompt_guard
from vqa_grpo.models.loading import CheckedVideoLoader, load_model
from vqa_grpo.training.batches import Batches

FRAMES = 64


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> Path:
    """data.jsonl: question "brief", a clip of 2 frames (it fits); "clip", a video of FRAMES frames
    of 224 x 224 (the most frames: the one measured up front, not the first clip); "wordy", a clip of
    2 frames and a question of 2000 more tokens (2075 in all: past the context, met only at run
    time, as its frames are few); "still", one image."""
    folder = tmp_path_factory.mktemp("clip")
    Image.new("RGB", (224, 224), (200, 30, 30)).save(folder / "frame.png")
    Image.new("RGB", (56, 56), (20, 30, 200)).save(folder / "still.png")
    rows = [
        {"id": "brief", "question": "Does it move?", "answer": "no", "video": ["frame.png"] * 2},
        {"id": "clip", "question": "Does it move?", "answer": "red", "video": ["frame.png"] * FRAMES},
        {"id": "wordy", "question": "Does it move?" + " Really?" * 1000, "answer": "no", "video": ["frame.png"] * 2},
        {"id": "still", "question": "What color?", "answer": "blue", "image": "still.png"},
    ]
    path = folder / "data.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def refused(data: Path, follows: str, budget: str | None = None) -> str:
    """The error for question "clip" of ``data``: its 2068 prompt tokens, ``follows`` them, the fix
    (``budget``: the setting of the new tokens, at 16)."""
    settings = f"data.video_frames ({FRAMES} now), data.max_image_pixels (1000000 now) or {budget} (16 now)"
    if budget is None:
        settings = f"data.video_frames ({FRAMES} now) or data.max_image_pixels (1000000 now)"
    return (
        f"error: data {data}: question clip (a video of {FRAMES} frames) needs 2068 prompt tokens + {follows}, more "
        f"than the model's 2048 (max_position_embeddings); lower {settings}"
    )


def cli(capsys, *args: str) -> tuple[int, list[str]]:
    """The exit code and the lines of the library's errors on stderr (transformers may warn there too)."""
    code = main(list(args))
    err = capsys.readouterr().err.strip().splitlines()
    return code, [line for line in err if line.startswith("error:")] + err[-1:]


def test_train_and_sft_refuse_a_clip_past_the_context_before_writing(clip, tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "run"
    args = [
        f"model.name_or_path={tiny_model_dir}",
        f"data.path={clip}",
        "data.eval_fraction=0",
        f"train.output_dir={out}",
        "train.device=cpu",
        "train.progress=false",
    ]
    grpo = refused(clip, "16 new ones (grpo.max_completion_length) = 2084 positions", "grpo.max_completion_length")
    code, errors = cli(capsys, "train", *args, f"data.video_frames={FRAMES}")
    assert code == 2 and errors == [grpo, grpo]  # one error line, and the last line
    assert not out.exists()
    sft = refused(clip, "2 of its answer and stop token = 2070 positions")  # "red" and <|im_end|>
    code, errors = cli(capsys, "sft", *args, f"data.video_frames={FRAMES}")
    assert code == 2 and errors == [sft, sft]
    assert not out.exists()
    # 8 frames fit: the run goes on to its forward plan, refused here by a setting (grpo/plan.py) before writing
    code, errors = cli(capsys, "train", *args, "data.video_frames=8", "grpo.static_decode=on", "grpo.shared_prefix=off")
    plan = "error: grpo.static_decode=on cannot run: no shared-prefix sampler; set grpo.static_decode=auto or off"
    assert code == 2 and errors == [plan, plan]
    assert not out.exists()


def test_evaluate_refuses_a_clip_past_the_context_before_the_model_loads(clip, tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "eval"
    base = ["evaluate", "--model", str(tiny_model_dir), "--data", str(clip), "--out", str(out)]
    expected = refused(clip, "16 new ones (eval.max_new_tokens) = 2084 positions", "eval.max_new_tokens")
    code, errors = cli(capsys, *base, f"data.video_frames={FRAMES}")
    assert code == 2 and errors == [expected, expected]
    assert not out.exists()
    # 8 frames: the widest clip fits; "wordy" is skipped when answered, counted and never scored
    code = main([*base, "data.video_frames=8", "train.device=cpu", "train.progress=false"])
    told = [line for line in capsys.readouterr().err.splitlines() if line.startswith("evaluate:")]
    metrics = json.loads((out / "metrics.json").read_text())
    assert code == 0 and metrics["n"] == 3 and metrics["skipped"] == 1
    assert metrics["skipped_by_reason"] == {"past_context": 1}
    assert told == ["evaluate: 1 of 4 questions skipped when answered (past_context 1); not scored, 3 scored"]
    scored = [json.loads(line)["id"] for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert scored == ["brief", "clip", "still"]


def test_the_widest_question_is_measured_and_one_that_fails_to_load_passed_over(tiny_model_dir):
    """Three images of 224 px take 3 * 64 image tokens (two, 2 * 64: they fit); in a context of 200
    positions the first question with three is refused, after one whose second image fails to load."""
    processor = AutoProcessor.from_pretrained(tiny_model_dir)
    adapter = adapter_for("qwen2_vl", "auto")

    def image():
        return Image.new("RGB", (224, 224), (0, 128, 0))

    def broken():
        raise OSError("truncated file")

    decoded = []

    def counted():
        decoded.append(1)
        return image()

    def example(name: str, loaders) -> VQAExample:
        return VQAExample(name, "Same shape?", ["yes"], "yes", answer_type="yes/no", image_loaders=tuple(loaders))

    examples = [
        example("two", [image, image]),  # measured (two images), fits
        example("broken", [image, broken, image]),  # passed over: its second image fails
        example("three", [image, image, image]),  # the widest: refused
        example("later", [counted, counted, counted]),  # never decoded
    ]
    report = LoadReport(max_images=3)
    with pytest.raises(BadExample):
        examples[1].load_visuals()
    split = Split("data pairs.jsonl", examples, After(4, "grpo.max_completion_length"))
    with pytest.raises(UserError) as e:
        check_fit(adapter, processor, 200, Config(), [split], report)
    head = str(e.value).split(" prompt tokens")[0]
    assert head.startswith("data pairs.jsonl: question three (3 images) needs ")
    prompt = int(head.rsplit(" ", 1)[1])
    assert prompt == 3 * (64 + 2) + 17  # each image's 64 tokens between vision start and end; the chat's text
    assert str(e.value).endswith(
        f"+ 4 new ones (grpo.max_completion_length) = {prompt + 4} positions, more than the model's 200 "
        "(max_position_embeddings); lower data.max_image_pixels (1000000 now) or grpo.max_completion_length "
        "(4 now); or give the question fewer images"
    )
    check_fit(adapter, processor, prompt + 4, Config(), [split], report)  # exactly full: fits
    assert decoded == []  # the measuring stopped at the first question with report.max_images
    check_fit(adapter, processor, None, Config(), [split], report)  # no context known: no check
    single = LoadReport(max_images=1)
    check_fit(adapter, processor, 10, Config(), [split], single)  # one image a question: not measured
    # vLLM's engine length, tighter than the model's: the widest question (three images) is the one named
    engine = Split(
        "data pairs.jsonl", examples, After(4, "grpo.max_completion_length"), (150, "grpo.vllm_max_model_len")
    )
    with pytest.raises(UserError) as e:
        check_fit(adapter, processor, 2048, Config(), [engine], report)
    assert str(e.value) == (
        f"data pairs.jsonl: question three (3 images) needs {prompt} prompt tokens + 4 new ones "
        f"(grpo.max_completion_length) = {prompt + 4} positions, more than vLLM's 150 (grpo.vllm_max_model_len); "
        "lower data.max_image_pixels (1000000 now) or grpo.max_completion_length (4 now); "
        "or give the question fewer images; or raise grpo.vllm_max_model_len"
    )


def test_the_context_is_the_config_s_or_its_text_model_s(tiny_model_dir):
    from transformers import AutoConfig

    assert context_length(AutoConfig.from_pretrained(tiny_model_dir)) == 2048  # Qwen2-VL: text_config's
    assert context_length(PretrainedConfig(max_position_embeddings=4096)) == 4096
    assert context_length(PretrainedConfig()) is None


def test_a_later_longer_clip_is_skipped_measured_once_and_never_scored(tiny_model_dir):
    """A clip whose loader is not a VideoLoader cannot be counted without decoding, so the up-front
    check may miss it; a longer one (64 frames: 2068 prompt tokens) is skipped when its batch is
    drawn, with its reason, and the run goes on with the others. Each question is encoded once (its
    verdict kept) and a refused one is not decoded again in later epochs. Evaluation skips it the
    same way and counts it as past_context, never scored. Single-image data gets no such check."""
    lm = load_model(ModelConfig(name_or_path=str(tiny_model_dir)), torch.device("cpu"))
    decoded = []

    def clip(name: str, frames: int):
        return lambda: decoded.append(name) or Video([Image.new("RGB", (224, 224), (200, 30, 30))] * frames, fps=1.0)

    def example(name: str, frames: int) -> VQAExample:
        return VQAExample(name, "Does it move?", ["red"], "red", answer_type="other", video_loader=clip(name, frames))

    examples = [example("short", 8), example("long", FRAMES), example("short2", 8)]
    cfg = Config()
    guard = prompt_guard(lm, cfg, "grpo", LoadReport(videos=3))
    encoded, encode = [], guard.adapter.encode_prompts
    guard.adapter = SimpleNamespace(encode_prompts=lambda *a: encoded.append(1) or encode(*a))
    batches = Batches(examples, batch_size=2, seed=0, guard=guard)
    drawn = [ex.id for _ in range(3) for ex in batches.next()[0]]  # three epochs of two usable questions
    assert set(drawn) == {"short", "short2"} and len(drawn) == 6
    assert len(encoded) == 3 and decoded.count("long") == 1 and batches.skipped == 2
    budget = cfg.grpo.max_completion_length
    assert batches.bad == {
        "long": {
            "reason": "past_context",
            "detail": f"prompt of 2068 tokens (a video of {FRAMES} frames) + {budget} (grpo.max_completion_length) > "
            f"the model's context 2048 (max_position_embeddings); lower data.video_frames (8 now), "
            f"data.max_image_pixels (1000000 now) or grpo.max_completion_length ({budget} now)",
        }
    }
    assert prompt_guard(lm, cfg, "grpo", LoadReport(max_images=1)) is None
    cfg = Config(eval=dataclasses.replace(cfg.eval, max_new_tokens=2))
    got = answer_and_score(lm, examples, cfg, torch.device("cpu"))
    assert [e.id for e in got.examples] == ["short", "short2"] and got.positions == [0, 2]
    assert got.skipped == 1 and got.skipped_by_reason == {"past_context": 1}


def test_frames_are_counted_from_a_list_s_length_and_a_file_s_header(tmp_path):
    """The up-front check ranks clips by the frames they sample, without decoding one: a list's
    length (capped at data.video_frames), a file's duration x data.video_fps from its header
    (ceil, at least one, capped); a loader it does not know counts 0 and is measured last."""
    still = Image.new("RGB", (32, 32), (9, 9, 9))
    write_mp4(tmp_path / "two.mp4", [still] * 8, fps=4)  # 2 s
    write_mp4(tmp_path / "five.mp4", [still] * 20, fps=4)  # 5 s
    frames = tuple(tmp_path / "two.mp4" for _ in range(12))  # (a list's frames are not opened)
    assert _frames_sampled(VideoLoader(tmp_path / "two.mp4", max_frames=8, fps=1.0)) == (2, 8)
    assert _frames_sampled(VideoLoader(tmp_path / "five.mp4", max_frames=8, fps=1.0)) == (5, 8)
    assert _frames_sampled(VideoLoader(tmp_path / "five.mp4", max_frames=8, fps=0.5)) == (3, 8)  # 2.5 -> 3
    assert _frames_sampled(VideoLoader(tmp_path / "five.mp4", max_frames=3, fps=1.0)) == (3, 3)
    assert _frames_sampled(VideoLoader(tmp_path / "five.mp4", max_frames=30, fps=8.0)) == (20, 30)  # each frame once
    assert _frames_sampled(VideoLoader(frames, max_frames=8)) == (8, 8)
    assert _frames_sampled(VideoLoader(frames[:5], max_frames=8)) == (5, 8)
    checked = CheckedVideoLoader(VideoLoader(frames[:5], max_frames=8), lambda image: None, "q")
    assert _frames_sampled(checked) == (5, 8)  # a processor-checked loader: the one it wraps
    assert _frames_sampled(lambda: Video([still], 1.0)) == (0, math.inf)
