"""What a demo model's vision tower encodes: a linear probe of its output tokens (vqa_grpo/demo/vision_pretrain.py).

    .venv/bin/python scripts/probe_vision.py MODEL_DIR [MODEL_DIR ...] [--steps 400] [--work DIR]

Fresh linear heads, trained alone on the frozen tower's output tokens over the scenes the base's
vision stage uses (``VISION_QUESTIONS`` questions of data seed ``DATA_SEED - 1``), name each
object's shape and colour; prints the shares over the last 100 steps, one JSON line per model.
About 30 s per model on 2 cores (the scenes take a few more seconds, once).
"""

import argparse
import json
import tempfile
from pathlib import Path

import torch

from vqa_grpo.data.synthetic import synthesize
from vqa_grpo.demo.base import DATA_SEED, IMAGE_SIZE, VISION_QUESTIONS
from vqa_grpo.demo.vision_pretrain import probe_vision

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("models", nargs="+", help="model directories (a Qwen2-VL and its processor)")
parser.add_argument("--steps", type=int, default=400, help="probe steps (default: 400)")
parser.add_argument("--work", default=None, help="where the scenes are written (default: a new temporary folder)")
args = parser.parse_args()
torch.set_num_threads(2)
work = Path(args.work or tempfile.mkdtemp(prefix="vqa-grpo-probe-"))
data = synthesize(work / "scenes", n=VISION_QUESTIONS, seed=DATA_SEED - 1, image_size=IMAGE_SIZE).parent
for model in args.models:
    print(json.dumps({"model": model, **probe_vision(Path(model), data, steps=args.steps, image_size=IMAGE_SIZE)}))
