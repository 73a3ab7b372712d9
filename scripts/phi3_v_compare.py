"""Compare the native Phi-3-vision with what the official code gave (scripts/phi3_v_reference.py).

  .venv/bin/python scripts/phi3_v_compare.py /tmp/ref/reference_L2.json [--checkpoint DIR]

Reads the reference JSON and the files it names (the official pixel_values and the last
positions' logits), rebuilds the same inputs and weights (tests/models/phi3_v_reference_inputs.py)
in the project's venv, and prints, case by case: image-token counts, whether input_ids and
image_sizes are equal, the elementwise pixel difference, the logits' max difference, the loss
and whether the greedy tokens are equal. ``--checkpoint DIR``: also load DIR (a checkpoint the
official code saved with ``--save``) with the native class and compare its weights.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "models"))

import phi3_v_reference_inputs as R  # noqa: E402

from vqa_grpo.models.phi3_v import Phi3VConfig, Phi3VForCausalLM  # noqa: E402
from vqa_grpo.models.phi3_v.configuration import CLIP_VIT_L14_336  # noqa: E402
from vqa_grpo.models.phi3_v.processing import Phi3VProcessor  # noqa: E402


def encode(num_crops: int, width: int, height: int):
    return Phi3VProcessor.from_pretrained(R.SHARED, num_crops=num_crops)(R.PROMPT, [R.make_image(width, height)])


def compare_processor(ref: dict, pixels: str | None = None) -> None:
    pix = load_file(pixels or ref["pixel_values_file"])
    worst, all_equal = 0.0, True
    for key, p in ref["processor"].items():
        enc = encode(p["num_crops"], p["width"], p["height"])
        official = json.loads(p["input_ids"]) if isinstance(p["input_ids"], str) else p["input_ids"]
        same = enc["input_ids"][0].tolist() == official and enc["image_sizes"].tolist() == p["image_sizes"]
        diff = float((enc["pixel_values"] - pix[key]).abs().max())
        worst, all_equal = max(worst, diff), all_equal and same
        print(
            f"{key:>12}: {int((enc['input_ids'] < 0).sum()):>5} image tokens (official {p['num_image_tokens']}), "
            f"ids and sizes {'equal' if same else 'DIFFER'}, pixel max diff {diff:.3g}"
        )
    print(f"processor: {len(ref['processor'])} cases, ids/sizes all equal: {all_equal}, pixel max diff: {worst:.3g}")


def reference_model(vision_layers: int, attn: str) -> Phi3VForCausalLM:
    cfg = R.reference_config()
    cfg.pop("_attn_implementation", None)
    if vision_layers != 24:
        cfg["img_processor"] = dict(
            cfg["img_processor"], vision_config=dict(CLIP_VIT_L14_336, num_hidden_layers=vision_layers)
        )
    config = Phi3VConfig(**cfg)
    config._attn_implementation = attn
    model = Phi3VForCausalLM(config).eval()
    model.load_state_dict(R.fill_weights(dict(model.state_dict())), strict=True)
    return model


def compare_model(ref: dict, model: Phi3VForCausalLM) -> None:
    logits = load_file(ref["logits_file"])
    for key, c in ref["model"]["cases"].items():
        enc = encode(c["num_crops"], c["width"], c["height"])
        with torch.no_grad():
            out = model(**enc, labels=R.reference_labels(enc["input_ids"]))
            new = model.generate(**enc, max_new_tokens=8, min_new_tokens=8, do_sample=False)
        diff = float((out.logits[0, -3:] - logits[key].reshape(3, -1)).abs().max())
        greedy = new[0, enc["input_ids"].shape[1] :].tolist() == c["greedy_new_tokens"]
        print(
            f"{key:>12}: logits (last 3 positions) max diff {diff:.2g}, loss {float(out.loss):.6f} "
            f"(official {c['loss']:.6f}), greedy tokens {'equal' if greedy else 'DIFFER'}"
        )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("reference", help="the JSON scripts/phi3_v_reference.py wrote")
    p.add_argument("--attn", default="eager", help="attention of the native model: eager or sdpa")
    p.add_argument("--pixels", help="the official pixel_values file, if not where the JSON says")
    p.add_argument("--checkpoint", help="a checkpoint the official code saved (--save): load it natively")
    a = p.parse_args()
    torch.set_num_threads(1)
    ref = json.loads(Path(a.reference).read_text())
    compare_processor(ref, a.pixels)
    model = reference_model(ref["vision_layers"], a.attn)
    if a.checkpoint:
        # The official config.json has no CLIP depth (the remote code takes 24 from a constant):
        # the reference run's depth comes from this model's config.
        loaded = Phi3VForCausalLM.from_pretrained(
            a.checkpoint, config=model.config, attn_implementation=a.attn, dtype=torch.float32
        ).eval()
        theirs, ours = loaded.state_dict(), model.state_dict()
        diff = max(float((theirs[k] - ours[k]).abs().max()) for k in ours)
        print(
            f"checkpoint {a.checkpoint}: {len(theirs)} weights, names "
            f"{'equal' if theirs.keys() == ours.keys() else 'DIFFER'}, "
            f"max weight diff {diff:.3g}"
        )
    compare_model(ref, model)


if __name__ == "__main__":
    main()
