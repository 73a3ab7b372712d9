"""The demo's pretrained tiny base: where it lives, how it is checked, and the recipe that makes it.

It stands in for a pretrained VLM: a 2.8M-parameter Qwen2-VL (real transformers classes and
processor) whose vision tower is first pretrained alone (``VISION_STAGE``, vision_pretrain.py),
then trained by SFT on synthetic questions that are not the demo's (``DATA_SEED``), with
the replies of ``replies.py``: a sentence about the answer for a share of each family's questions
(``SENTENCE_SHARE``), the bare answer otherwise. It sees (``recognised`` in its model card) and
it talks, which is the gap the demo's GRPO closes.

Rebuild it (never in CI) with::

    .venv/bin/python scripts/build_demo_base.py

which writes ``src/vqa_grpo/demo/base_model/`` and prints the ``SHA256`` table to paste below.
docs/demo.md gives its time and the bases that the recipe's constants were chosen against.
"""

from __future__ import annotations

import hashlib
import json
import random
import shutil
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import torch

from vqa_grpo.config_load import load_config
from vqa_grpo.data.loader import load_vqa
from vqa_grpo.data.synthetic import VOCABULARY, synthesize
from vqa_grpo.demo.card import model_card
from vqa_grpo.demo.recognised import FAMILY_OF_QUESTION_TYPE, recognised_share
from vqa_grpo.demo.replies import REPLY_WORDS, base_reply
from vqa_grpo.demo.vision_pretrain import pretrain_vision
from vqa_grpo.errors import UserError
from vqa_grpo.evaluation.evaluate import evaluate
from vqa_grpo.models.tiny import build_tiny_qwen2_vl
from vqa_grpo.models.tiny_parts import PROMPT_WORDS
from vqa_grpo.training.loop import run

BASE_DIR = Path(__file__).with_name("base_model")
RECIPE = "scripts/build_demo_base.py"

DATA_SEED = 10_000
"""Seed of the base's first training questions (stage i uses DATA_SEED + i); the demo's own data
use seeds 0, 1, 2, ..."""
EVAL_SEED = 20_000
"""Seed of the held-out questions the model card's figures come from."""
N_QUESTIONS = 40_000
IMAGE_SIZE = 112
"""Side of the synthetic images, the base's and the demo's; 168 px recognised less in all
(docs/demo.md, Rebuilding the base)."""
N_EVAL = 1_000
VISION_STAGE = (2_000, 1e-3, 100)
"""Stage 0 (steps, peak learning rate, warmup steps): the vision tower alone names each cell's
object (demo/vision_pretrain.py) on the scenes of ``VISION_QUESTIONS`` questions of data seed
``DATA_SEED - 1``. Without it SFT alone never learns shapes (docs/demo.md)."""
VISION_QUESTIONS = 20_000
STAGES = ((4_500, 1e-3, 200),)
"""SFT stages (steps, peak learning rate, warmup steps), each a cosine schedule from the last
stage's model on new questions (data seed ``DATA_SEED + i``)."""
FREEZE_VISION = True
"""The SFT stages leave the pretrained tower (and its merger) as it is (``model.freeze_vision``):
trained with the language model, the tower forgets shapes (``scripts/probe_vision.py`` shows it;
docs/demo.md has the figures)."""
STEPS = VISION_STAGE[0] + sum(steps for steps, _, _ in STAGES)
BATCH = 32
MODEL_SEED = 0
COMMON = ["train.device=cpu", "train.cpu_threads=2", "train.progress=false", "eval.max_new_tokens=16"]
"""Overrides of every run the recipe makes, training and the held-out evaluation."""
SIZES = dict(hidden=192, layers=4, vision_dim=128, vision_depth=4, heads=4, vision_heads=4)

SENTENCE_SHARE: dict[str, float] = {
    "existence": 0.3,
    "count": 0.7,
    "color": 0.6,
    "shape": 0.6,
    "relation": 0.4,
}
"""Per question family, the share of the base's training replies that are sentences. Chat VLMs
answer a yes/no question with a bare "Yes." more often than a count or an attribute."""

SHA256: dict[str, str] = {
    "chat_template.jinja": "e28d5c05b920873d6244180f96ea79bb85572bdaa0544ed31ba580a27e530b83",
    "config.json": "1562b8bb34a57593a7798b41e84e25530f5f1fc078ec2c8268bfe01bbacb520e",
    "generation_config.json": "aa12bb9e74aa5422db16a1a47a6c3973999d7b24d148d0b3822aa943404c2fa7",
    "model.safetensors": "67871c37deff452c7d0891cdc739309132414cc063b0a895cf9adf1b2cf75c52",
    "processor_config.json": "aa279fd981a24ef48717123c1c85015a4dddef9a02ecf2de89259b2b33b0ff18",
    "tokenizer.json": "553d2abc479859a8e1979d98b7da7456b8f284537d8b1a4a9d5e69ae302a790a",
    "tokenizer_config.json": "2e8cb263a161416ff860c9164b564712f897d3ef0293453442ff27322e0e0350",
}
"""sha256 of each shipped file but the model card (README.md, which records the wall time), as the
recipe printed it."""


def file_hashes(directory: Path) -> dict[str, str]:
    """sha256 of every file in ``directory`` (not recursive) but the model card, by name."""
    files = [p for p in sorted(directory.iterdir()) if p.is_file() and p.name != "README.md"]
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in files}


def base_model_dir() -> Path:
    """The shipped base, checked against ``SHA256``; UserError naming the recipe when missing or damaged."""
    rebuild = (
        f"reinstall vqa-grpo, or rebuild it from a clone of the repository with `.venv/bin/python {RECIPE}` "
        f"(about 40 minutes on 2 cores) and record the sha256 it prints in SHA256 of {__file__}"
    )
    if not SHA256:
        raise UserError(f"the demo's base model has no recorded hashes in {__file__}; {rebuild}")
    for name, expected in SHA256.items():
        path = BASE_DIR / name
        if not path.is_file():
            raise UserError(f"the demo's base model is missing {path}; {rebuild}")
        actual = hashlib.sha256(path.read_bytes()).hexdigest()
        if actual != expected:
            raise UserError(
                f"the demo's base model is damaged: {path} has sha256 {actual[:12]}..., expected {expected[:12]}...; "
                f"{rebuild}"
            )
    return BASE_DIR


def _talkative_data(data_dir: Path, seed: int) -> None:
    """Replace each row's SFT target (``answer``) by the base's reply; ``answers`` keep the bare answer."""
    rng = random.Random(seed)
    path = data_dir / "data.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    for row in rows:
        share = SENTENCE_SHARE[FAMILY_OF_QUESTION_TYPE[row["question_type"]]]
        row["answer"] = base_reply(row["question"], row["question_type"], row["answers"][0], rng, share)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def _finished(stage_dir: Path, key: str) -> bool:
    """Whether an earlier call with this --work finished the stage with these settings (training is
    deterministic) and recorded its wall time (a stage of an older recipe without one runs again)."""
    key_file = stage_dir / "stage.json"
    return key_file.is_file() and key_file.read_text() == key and (stage_dir / "seconds.txt").is_file()


def _mark_finished(stage_dir: Path, key: str, started: float) -> None:
    """Record the stage's settings and its wall time (seconds.txt), which a later call that reuses it counts."""
    (stage_dir / "seconds.txt").write_text(f"{round(time.time() - started)}\n")
    (stage_dir / "stage.json").write_text(key)


def _seconds(stage_dir: Path) -> int:
    return int((stage_dir / "seconds.txt").read_text())


def _vision_stage(model: Path, work: Path) -> Path:
    """Stage 0: the vision tower of ``model`` pretrained alone (kept in ``work``/vision and reused by a
    later call with the same settings)."""
    out, stage = work / "vision", json.dumps([VISION_STAGE, VISION_QUESTIONS, IMAGE_SIZE, SIZES, BATCH, MODEL_SEED])
    if _finished(out, stage):
        return out
    started = time.time()
    shutil.rmtree(out, ignore_errors=True)
    data = synthesize(work / "vision-data", n=VISION_QUESTIONS, seed=DATA_SEED - 1, image_size=IMAGE_SIZE).parent
    steps, lr, warmup = VISION_STAGE
    torch.set_num_threads(2)  # as train.cpu_threads=2 of the SFT stages (COMMON)
    pretrain_vision(
        model, data, out, steps=steps, lr=lr, warmup=warmup, batch=BATCH, seed=MODEL_SEED, image_size=IMAGE_SIZE
    )
    _mark_finished(out, stage, started)
    return out


def build_base(out_dir: str | Path = BASE_DIR, work_dir: str | Path | None = None) -> dict:
    """The recipe: build the tiny Qwen2-VL, pretrain its vision tower (``VISION_STAGE``), then
    synthesise, make the replies talkative and SFT in ``STAGES`` (each from the last one's model, on
    its own questions), measure, save.

    Writes the model and processor files and ``README.md`` (the model card) to ``out_dir``; returns
    the card's figures and the files' sha256.
    """
    out_dir, work = Path(out_dir), Path(work_dir or tempfile.mkdtemp(prefix="vqa-grpo-base-"))
    words = [*VOCABULARY, *PROMPT_WORDS, *REPLY_WORDS]
    model = build_tiny_qwen2_vl(work / "init", seed=MODEL_SEED, words=words, **SIZES)
    model = _vision_stage(model, work)
    for i, (steps, lr, warmup) in enumerate(STAGES):
        data_seed, run_dir = DATA_SEED + i, work / f"sft-{i + 1}"
        stage = [VISION_STAGE, VISION_QUESTIONS, STAGES[: i + 1], N_QUESTIONS, IMAGE_SIZE, SIZES, BATCH]
        stage = json.dumps([*stage, FREEZE_VISION, SENTENCE_SHARE])
        if _finished(run_dir, stage):
            model = run_dir / "final"
            continue
        shutil.rmtree(run_dir, ignore_errors=True)
        started = time.time()
        train_dir = synthesize(work / f"train-{i + 1}", n=N_QUESTIONS, seed=data_seed, image_size=IMAGE_SIZE).parent
        _talkative_data(train_dir, data_seed)
        overrides = [
            f"data.path={train_dir}",
            "data.eval_fraction=0.01",
            f"model.name_or_path={model}",
            f"train.output_dir={run_dir}",
            f"train.max_steps={steps}",
            f"train.per_device_batch_size={BATCH}",
            f"train.learning_rate={lr}",
            f"train.warmup_steps={warmup}",
            "train.lr_scheduler=cosine",
            "train.logging_steps=50",
            "train.report_to=none",
            f"train.seed={MODEL_SEED}",
            f"model.freeze_vision={str(FREEZE_VISION).lower()}",
        ]
        model = run(load_config(None, [*overrides, *COMMON]), "sft", desc=f"demo base, stage {i + 1}").final_dir
        _mark_finished(run_dir, stage, started)
    seconds = _seconds(work / "vision") + sum(_seconds(work / f"sft-{i + 1}") for i in range(len(STAGES)))
    return finish(model, out_dir, work, seconds)


def finish(model: str | Path, out_dir: str | Path, work: str | Path, train_seconds: int) -> dict:
    """Measure ``model`` on the held-out questions, copy it to ``out_dir`` with its model card, and
    return the card's figures and the files' sha256 (the recipe's last part)."""
    out_dir, work = Path(out_dir), Path(work)
    eval_dir = synthesize(work / "eval", n=N_EVAL, seed=EVAL_SEED, image_size=IMAGE_SIZE).parent
    eval_cfg = load_config(None, [f"data.path={eval_dir}", "data.eval_fraction=0", *COMMON])
    held_out = load_vqa(eval_cfg.data, seed=0).train
    metrics = evaluate(str(model), held_out, eval_cfg, work / "eval-out")
    rows = [json.loads(line) for line in (work / "eval-out" / "predictions.jsonl").read_text().splitlines()]
    figures = {
        "recognised": round(recognised_share(rows), 4),
        "vqa_accuracy": round(metrics["vqa_accuracy"], 4),
        "n_eval": len(rows),
        "train_seconds": train_seconds,
    }
    if out_dir.exists() and any(out_dir.iterdir()) and not (out_dir / "config.json").is_file():
        raise UserError(f"{out_dir} is not empty and holds no model; give --out an empty folder or a base to replace")
    shutil.rmtree(out_dir, ignore_errors=True)
    out_dir.mkdir(parents=True)
    for f in Path(model).iterdir():
        if f.is_file():
            shutil.copy2(f, out_dir / f.name)
    recipe = SimpleNamespace(**{k: v for k, v in globals().items() if k.isupper()})
    (out_dir / "README.md").write_text(model_card(figures, rows, recipe))
    return {**figures, "sha256": file_hashes(out_dir)}
