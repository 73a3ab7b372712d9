"""Stage 0 of the demo base's recipe: its vision tower pretrained alone, as a real VLM's is.

Trained with the rest of the model on the questions alone, the tiny Qwen2-VL's vision tower does
not learn shapes (docs/demo.md, Rebuilding the base): the answer's gradient reaches the image
through a language model that does not yet know where to look. Real VLMs start
from a vision encoder pretrained on its own; so does the demo base. Each of the tower's output
tokens (one per 2x2 merged patch, a 28 px cell of the image) learns to name the shape and the
colour of the object whose box centre falls in its cell, or "none", from the synthetic scenes'
boxes (``scene`` of data/synthetic.py), with two linear heads that are then dropped. The language
model and the merger's weights other than the tower's are untouched.
"""

from __future__ import annotations

import json
import math
import random
import shutil
from pathlib import Path

import torch
from PIL import Image
from transformers import AutoModelForImageTextToText, AutoProcessor, get_cosine_schedule_with_warmup

from vqa_grpo.data.synthetic import COLORS, SHAPES


def cell_targets(scene: list[dict], image_size: int, cells: int) -> tuple[list[int], list[int]]:
    """Per output token (``cells`` x ``cells`` in raster order): the shape and the colour of the
    object whose box centre falls in that cell, as 1 + index (0: none; of two, the later one)."""
    shape, color = [0] * cells * cells, [0] * cells * cells
    side = image_size / cells
    for obj in scene:
        x0, y0, x1, y1 = obj["box"]
        row, col = min(cells - 1, int((y0 + y1) / 2 // side)), min(cells - 1, int((x0 + x1) / 2 // side))
        shape[row * cells + col] = 1 + SHAPES.index(obj["shape"])
        color[row * cells + col] = 1 + list(COLORS).index(obj["color"])
    return shape, color


def _rows(data_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (data_dir / "data.jsonl").read_text().splitlines()]


def _heads(hidden: int):
    """The two linear heads on the tower's output tokens: shape and colour, each with a "none" class."""
    return torch.nn.ModuleList([torch.nn.Linear(hidden, 1 + len(SHAPES)), torch.nn.Linear(hidden, 1 + len(COLORS))])


def _cell_batch(processor, data_dir: Path, rows: list[dict], image_size: int):
    """The tower's inputs for the rows' images, and each output token's shape and colour targets."""
    images = [Image.open(data_dir / r["image"]).convert("RGB") for r in rows]
    inputs = processor.image_processor(images=images, return_tensors="pt")
    grid = inputs["image_grid_thw"]
    cells = int(grid[0, 2]) // processor.image_processor.merge_size
    targets = [cell_targets(r["scene"], image_size, cells) for r in rows]
    shape = torch.tensor([t for s, _ in targets for t in s])
    color = torch.tensor([t for _, c in targets for t in c])
    return {"hidden_states": inputs["pixel_values"], "grid_thw": grid}, shape, color


def _head_loss(heads, tokens, shape, color):
    """The heads' logits on the tower's output tokens and their summed cross-entropy to the targets."""
    shape_logits, color_logits = heads[0](tokens), heads[1](tokens)
    loss = torch.nn.functional.cross_entropy(shape_logits, shape) + torch.nn.functional.cross_entropy(
        color_logits, color
    )
    return loss, shape_logits, color_logits


def pretrain_vision(
    model_dir: Path,
    data_dir: Path,
    out_dir: Path,
    *,
    steps: int,
    lr: float,
    warmup: int,
    batch: int,
    seed: int,
    image_size: int,
    log=print,
) -> Path:
    """Train the vision tower of the Qwen2-VL in ``model_dir`` on the scenes of ``data_dir``
    (data.jsonl and its images) for ``steps`` steps of ``batch`` images (AdamW, cosine schedule
    after ``warmup`` steps, gradient clipping 1.0); save the model and its processor to ``out_dir``."""
    torch.manual_seed(seed)
    rng = random.Random(seed)
    model = AutoModelForImageTextToText.from_pretrained(model_dir, dtype=torch.float32)
    processor = AutoProcessor.from_pretrained(model_dir)
    tower = model.model.visual
    hidden = model.config.text_config.hidden_size
    heads = _heads(hidden)
    params = [*tower.parameters(), *heads.parameters()]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    schedule = get_cosine_schedule_with_warmup(opt, warmup, steps)
    rows = _rows(data_dir)
    tower.train()
    seen = hit = 0
    for step in range(1, steps + 1):
        inputs, shape, color = _cell_batch(processor, data_dir, rng.sample(rows, batch), image_size)
        tokens = tower(**inputs).pooler_output  # [batch * cells^2, hidden]
        loss, shape_logits, color_logits = _head_loss(heads, tokens, shape, color)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        schedule.step()
        objects = shape > 0
        seen += int(objects.sum())
        hit += int((shape_logits.argmax(-1) == shape)[objects].sum())
        if step % 100 == 0 or step == steps:
            log(
                f"vision stage, step {step}: loss {loss.item():.3f}, shape right on {hit / max(seen, 1):.3f} of objects"
            )
            seen = hit = 0
        if not math.isfinite(loss.item()):
            raise RuntimeError(f"the vision stage's loss is {loss.item()} at step {step}")
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    for f in Path(model_dir).iterdir():  # the processor and tokenizer files, as they were
        if f.is_file() and not (out_dir / f.name).exists():
            shutil.copy2(f, out_dir / f.name)
    return out_dir


def probe_vision(
    model_dir: Path,
    data_dir: Path,
    *,
    steps: int = 400,
    lr: float = 3e-3,
    batch: int = 32,
    seed: int = 0,
    image_size: int,
) -> dict[str, float]:
    """A linear probe of what the (frozen) vision tower of ``model_dir`` still encodes: fresh heads as
    in ``pretrain_vision`` trained alone on its output tokens for ``steps`` steps (AdamW at ``lr``);
    the share of the objects whose shape and colour they name over the last 100 steps."""
    torch.manual_seed(seed)
    rng = random.Random(seed)
    model = AutoModelForImageTextToText.from_pretrained(model_dir, dtype=torch.float32).eval()
    processor = AutoProcessor.from_pretrained(model_dir)
    heads = _heads(model.config.text_config.hidden_size)
    opt = torch.optim.AdamW(heads.parameters(), lr=lr)
    rows = _rows(data_dir)
    seen = shapes = colors = 0
    for step in range(1, steps + 1):
        inputs, shape, color = _cell_batch(processor, data_dir, rng.sample(rows, batch), image_size)
        with torch.no_grad():
            tokens = model.model.visual(**inputs).pooler_output
        loss, shape_logits, color_logits = _head_loss(heads, tokens, shape, color)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step > steps - 100:
            objects = shape > 0
            seen += int(objects.sum())
            shapes += int((shape_logits.argmax(-1) == shape)[objects].sum())
            colors += int((color_logits.argmax(-1) == color)[objects].sum())
    return {"shape": round(shapes / seen, 3), "color": round(colors / seen, 3), "objects": seen}
