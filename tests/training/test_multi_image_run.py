"""Runs on questions with 0, 1, 2 or 3 images of different sizes, or a video: GRPO on the fused
prefill, the shared prefix, the plain path and with LoRA, and SFT, then an evaluation; a family
that cannot take the data's images refused in one line before anything is written; a bad image in
a list skipping its question. And what shows a question's visuals besides the model: the report's
gallery, and the perturbed copies of augmentation and ``evaluate --perturb``. And the synthetic
multi-image and video tasks through the CLI, from ``data synth`` to ``train`` and ``evaluate``.

The real loop on the tiny Qwen2-VL (its real processor), fp32 on the CPU, one thread; the data is
a JSONL of ``images`` lists and PNGs written here.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from safetensors.torch import load_file
from test_loop import config, records

import vqa_grpo
from vqa_grpo.cli import main
from vqa_grpo.config import DataConfig, GRPOConfig
from vqa_grpo.config_load import load_config
from vqa_grpo.data.loader import load_examples
from vqa_grpo.data.perturb import perturb, perturb_seed
from vqa_grpo.data.types import Video, VQAExample
from vqa_grpo.errors import UserError
from vqa_grpo.evaluation.report import write_report
from vqa_grpo.evaluation.robustness import perturbed
from vqa_grpo.grpo import plan as plan_module
from vqa_grpo.grpo.augment import augment_batch
from vqa_grpo.training.batches import Batches

SIZES = [(56, 84), (112, 56), (84, 84), (70, 98), (98, 70)]
COUNTS = [0, 1, 2, 3]  # images per question, row i has COUNTS[i % 4]
ROWS = 16
VIDEOS = 4  # and 4 more questions with a video
STEP = ("train.max_steps=2", "train.gradient_accumulation_steps=2", "train.per_device_batch_size=2")
GRPO = ("grpo.num_generations=2", "grpo.max_completion_length=3")


def shown(data: Path) -> dict[str, str]:
    """id -> what the question shows: its number of images, then "+video" when it has one."""
    rows = map(json.loads, data.read_text().splitlines())
    return {r["id"]: f"{len(r['images'])}" + ("+video" if r.get("video") else "") for r in rows}


@pytest.fixture(scope="module")
def mixed(tmp_path_factory) -> Path:
    """data.jsonl: ROWS questions, row i with COUNTS[i % 4] images, each image of another size; then
    VIDEOS questions with a video and 0 or 1 image."""
    folder = tmp_path_factory.mktemp("mixed")
    rows = []
    for i in range(ROWS):
        names = []
        for j in range(COUNTS[i % 4]):
            name = f"q{i}_{j}.png"
            Image.new("RGB", SIZES[(i + j) % len(SIZES)], (60 * j, 20 * (i % 8), 200)).save(folder / name)
            names.append(name)
        rows.append({"id": f"q{i}", "question": "How many images are shown?", "answer": "red", "images": names})
    for i in range(ROWS, ROWS + VIDEOS):  # a clip of 4 frames (a list of images), after 0 or 1 image
        frames = []
        for t in range(4):
            frames.append(f"v{i}_{t}.png")
            Image.new("RGB", (56, 56), (50 * t, 90, 30 * (i % 4))).save(folder / frames[-1])
        names = [f"q{i}_0.png"] if i % 2 else []
        for name in names:
            Image.new("RGB", (84, 56), (10, 10, 10)).save(folder / name)
        rows.append({"id": f"q{i}", "question": "Does it move?", "answer": "red", "images": names, "video": frames})
    path = folder / "data.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def characters(completions, **kwargs) -> list[float]:
    """A reward that differs within a group (the answers, never sampled, would give 0 to all)."""
    return [float(len(c)) for c in completions]


def odd_characters(completions, id, **kwargs) -> list[float | None]:
    """``characters`` on the odd-numbered questions, 0 on the others (groups dynamic sampling drops)."""
    return [float(len(c)) if int(q[1:]) % 2 else 0.0 for c, q in zip(completions, id)]


def run(mixed: Path, model_dir: Path, out: Path, mode: str, *extra: str, reward=characters):
    cfg = config(mixed, model_dir, out, *STEP, "data.eval_fraction=0.25", "train.learning_rate=1e-3", *extra)
    return vqa_grpo.train(cfg, reward_funcs=[reward]) if mode == "grpo" else vqa_grpo.sft(cfg)


def check_trained(result, model_dir: Path, steps: int = 2) -> list[dict]:
    """The step lines: finite losses, nothing skipped, an evaluation at the end, weights moved."""
    lines = [r for r in records(result.run_dir) if "loss" in r]
    assert [r["step"] for r in lines] == list(range(1, steps + 1))
    assert all(math.isfinite(r["loss"]) and r["skipped_images"] == 0 for r in lines)
    assert [r["step"] for r in result.eval_history] == [steps] and "eval/vqa_accuracy" in result.eval_history[0]
    if (result.final_dir / "adapter_model.safetensors").is_file():  # LoRA: B starts at zero, and moved
        adapter = load_file(result.final_dir / "adapter_model.safetensors")
        assert any(bool(v.any()) for k, v in adapter.items() if "lora_B" in k)
    else:
        before, after = load_file(model_dir / "model.safetensors"), load_file(result.final_dir / "model.safetensors")
        assert any(not after[k].equal(before[k]) for k in before if k in after)
    return lines


PATHS = {  # name -> the loss's path in the forward plan (grpo/plan.py), and the settings that choose it
    "fused prefill": (
        "fused prefill",
        "grpo.shared_prefix=on",
        "train.gradient_accumulation_steps=1",
        "train.per_device_batch_size=4",
    ),
    "shared prefix": ("shared prefix", "grpo.shared_prefix=on"),  # with accumulation: no fused prefill
    "plain": ("plain", "grpo.shared_prefix=off"),
    "LoRA": ("shared prefix", "grpo.shared_prefix=on", "model.lora=true"),
}


@pytest.mark.parametrize("name", PATHS)
def test_grpo_trains_on_mixed_image_counts(name, mixed, tiny_model_dir, tmp_path, caplog):
    loss, *settings = PATHS[name]
    plan_module._logged.clear()  # each distinct plan is logged once per process
    with caplog.at_level(logging.INFO, logger="vqa_grpo.prefix"):
        result = run(mixed, tiny_model_dir, tmp_path / "run", "grpo", *GRPO, *settings)
    (plan,) = [r.getMessage() for r in caplog.records if r.getMessage().startswith("GRPO forward plan")]
    assert f"; loss: {loss};" in plan
    lines = check_trained(result, tiny_model_dir)
    assert [r["shared_prefix"] for r in lines] == [0.0 if loss == "plain" else 1.0] * 2
    # 2 steps x 4 questions (2 micro-batches of 2, or 1 of 4), every group logged (log_completion_groups
    # null): each count of images was trained on
    logged = [json.loads(s) for s in (result.run_dir / "completions.jsonl").read_text().splitlines()]
    assert len(logged) == 8
    assert {shown(mixed)[r["id"]] for r in logged} == {"0", "1", "2", "3", "0+video", "1+video"}


def test_dynamic_sampling_packs_kept_groups_of_mixed_image_counts(mixed, tiny_model_dir, tmp_path):
    # the even questions' groups are dropped: the kept ones, from several draws, are encoded again
    result = run(
        mixed, tiny_model_dir, tmp_path / "run", "grpo", *GRPO, "grpo.dynamic_sampling=true", reward=odd_characters
    )
    lines = check_trained(result, tiny_model_dir)
    # step 1 drew 4 odd questions; step 2 kept 4 of 8 groups, packed from 4 draws
    assert [(r["dynamic/groups_sampled"], r["dynamic/groups_kept"]) for r in lines] == [(4.0, 4.0), (8.0, 4.0)]


def test_augmented_rollouts_perturb_mixed_image_counts(mixed, tiny_model_dir, tmp_path):
    result = run(mixed, tiny_model_dir, tmp_path / "run", "grpo", *GRPO, "grpo.augment=[gaussian_noise:3]")
    lines = check_trained(result, tiny_model_dir)
    assert [r["augment/share"] for r in lines] == [0.5, 0.5]  # 1 of each group's 2 completions


def test_sft_trains_then_evaluates_and_reports_mixed_image_counts(mixed, tiny_model_dir, tmp_path):
    result = run(mixed, tiny_model_dir, tmp_path / "run", "sft")
    check_trained(result, tiny_model_dir)
    perturbing = load_config(None, ["eval.perturb=[gaussian_noise:1]", "eval.max_new_tokens=4", "train.device=cpu"])
    metrics = vqa_grpo.evaluate(result.final_dir, mixed, perturbing, out=tmp_path / "eval")
    assert metrics["n"] == ROWS + VIDEOS and metrics["skipped"] == 0
    robust = metrics["robustness"]["gaussian_noise:1"]  # every image and frame perturbed, none failing
    assert (robust["n"], robust["skipped"]) == (ROWS + VIDEOS, 0)
    predicted = [json.loads(s)["id"] for s in (tmp_path / "eval" / "predictions.jsonl").read_text().splitlines()]
    assert sorted(predicted) == sorted(shown(mixed))
    # the report's gallery: a thumbnail of every image, three frames of a clip of 4 (1, 3 and 4)
    page = write_report(str(result.run_dir), after=str(tmp_path / "eval"), data_path=str(mixed)).read_text()
    per_kind = {"0": 0, "1": 1, "2": 2, "3": 3, "0+video": 3, "1+video": 4}
    tags = {i: page.count(f'alt="image of {i}"') + page.count(f'alt="image of {i}, ') for i in shown(mixed)}
    assert tags == {i: per_kind[kind] for i, kind in shown(mixed).items()}
    assert page.count("no image</span>") == ROWS // 4  # the text-only questions


@pytest.mark.parametrize("task", ["multi-image", "video"])
def test_the_synthetic_tasks_train_and_evaluate_through_the_cli(task, tiny_model_dir, tmp_path, capsys):
    """`data synth --task multi-image` (2-3 images) and `--task video` (MP4 clips), then `train` and
    `evaluate` as a user runs them: every question kept, trained on and scored."""
    data = tmp_path / "data"
    extra = ["--video-format", "mp4", "--frames", "4"] if task == "video" else []
    assert main(["data", "synth", "--task", task, "--out", str(data), "--n", "12", "--image-size", "56", *extra]) == 0
    rows = [json.loads(s) for s in (data / "data.jsonl").read_text().splitlines()]
    capsys.readouterr()
    assert main(["data", "inspect", str(data / "data.jsonl"), "--json"]) == 0
    loaded = json.loads(capsys.readouterr().out)
    shows = {"multi-image": (3, 0), "video": (0, 12)}[task]  # the most images of a question; questions with a video
    assert (loaded["kept"], loaded["max_images"], loaded["videos"]) == (12, *shows)
    settings = [f"model.name_or_path={tiny_model_dir}", f"data.path={data / 'data.jsonl'}", "train.device=cpu"]
    run = [f"train.output_dir={tmp_path / 'run'}", "train.progress=false", "train.cpu_threads=1"]
    assert main(["train", *settings, *run, *STEP, *GRPO, "data.eval_fraction=0.25", "eval.max_new_tokens=3"]) == 0
    lines = [r for r in records(tmp_path / "run") if "loss" in r]
    assert len(lines) == 2 and all(math.isfinite(r["loss"]) and r["skipped_images"] == 0 for r in lines)
    logged = [json.loads(s) for s in (tmp_path / "run" / "completions.jsonl").read_text().splitlines()]
    assert len(logged) == 8 and {r["id"] for r in logged} <= {r["id"] for r in rows}
    final = tmp_path / "run" / "final"
    args = ["evaluate", "--model", str(final), "--data", str(data / "data.jsonl"), "--out", str(tmp_path / "eval")]
    assert main([*args, "train.device=cpu", "eval.max_new_tokens=3"]) == 0
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert metrics["n"] == len(rows) == 12 and metrics["skipped"] == 0


def test_a_family_that_cannot_take_the_images_is_refused_before_writing(mixed, tiny_model_dir, tmp_path, capsys):
    refused = (
        f"error: data {mixed}: the generic adapter shows at most 1 image per question, not 3 images and a video's "
        "frames: it cannot tell how this model's processor lays out several; where the checkpoint's family has an "
        "adapter of its own (docs/models.md lists them), set model.family=auto or its name"
    )
    out = tmp_path / "run"
    args = [f"model.name_or_path={tiny_model_dir}", "model.family=generic", f"data.path={mixed}"]
    for command in ("train", "sft"):
        code = main([command, *args, f"train.output_dir={out}", "train.device=cpu", "train.progress=false"])
        err = capsys.readouterr().err.strip()
        assert code == 2 and err == refused
        assert not out.exists()
    evaluation = tmp_path / "eval"
    code = main(["evaluate", "--model", str(tiny_model_dir), "--data", str(mixed), "--out", str(evaluation), args[1]])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err == refused
    assert not evaluation.exists()


def test_a_bad_image_in_a_list_skips_its_question_and_is_counted():
    def good():
        return Image.new("RGB", (56, 56))

    def broken():
        raise OSError("truncated file")

    def example(i: int, loaders) -> VQAExample:
        return VQAExample(id=f"q{i}", question="?", answers=["a"], answer="a", image_loaders=loaders)

    four = [example(0, (good, good)), example(1, (good, broken, good)), example(2, ()), example(3, (good,))]
    batches = Batches(four, 3, seed=0)
    examples, visuals = batches.next()  # 3 of 4 questions: every one drawn, once
    assert sorted(e.id for e in examples) == ["q0", "q2", "q3"]
    assert sorted(len(v) for v in visuals) == [0, 1, 2]
    assert batches.skipped == 1 and batches.bad == {
        "q1": {"reason": "corrupt_image", "detail": "image 2 of 3 failed to load: OSError: truncated file"}
    }
    with pytest.raises(UserError, match="^no training question can be used"):  # a one-line error, exit 2
        Batches([example(1, (good, broken))], 1, seed=0).next()


def test_every_image_and_frame_is_perturbed_with_the_questions_seed(mixed):
    examples, _ = load_examples(str(mixed), DataConfig())
    three, clip = (next(e for e in examples if shown(mixed)[e.id] == kind) for kind in ("3", "1+video"))
    for e in (three, clip):
        clean, got = e.load_visuals(), perturbed(e, "gaussian_noise", 3, seed=7).load_visuals()
        assert len(got) == len(clean)
        for x, y in zip(clean, got):
            if isinstance(x, Video):
                assert y.fps == x.fps and len(y.frames) == len(x.frames) == 4
                pairs = list(zip(x.frames, y.frames))
            else:
                pairs = [(x, y)]
            for a, b in pairs:
                assert np.array_equal(np.asarray(b), np.asarray(perturb(a, "gaussian_noise", 3, 7)))
    grpo = GRPOConfig(num_generations=2, augment=["rotate:2"], augment_share=0.5)
    clean = clip.load_visuals()
    (got,) = augment_batch(grpo, 7, 1, 10, [clip], [clean]).visuals
    seed = perturb_seed(f"{clip.id}\0{1}", "rotate", 2, 7)
    assert np.array_equal(np.asarray(got[0]), np.asarray(perturb(clean[0], "rotate", 2, seed)))
    assert all(
        np.array_equal(np.asarray(b), np.asarray(perturb(a, "rotate", 2, seed)))
        for a, b in zip(clean[1].frames, got[1].frames)
    )
