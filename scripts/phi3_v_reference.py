"""Reference outputs from Microsoft's original Phi-3-vision remote code.

This harness runs the *original* trust_remote_code implementation of
Phi-3-vision-128k-instruct (Phi3VProcessor, Phi3VImageProcessor,
Phi3VForCausalLM) under transformers 4.40.2 and writes what it computes to a
JSON file plus two safetensors files.  The project's native implementation is
compared against these numbers (tests/models/), on the shared deterministic
inputs of tests/models/phi3_v_reference_inputs.py: noise images, the seed
report's prompt, the real config.json with the text model reduced to 2 layers
of width 192, and weights that depend only on each parameter's name.

Nothing of the remote code is part of this project: the harness imports it
from the folder given by --code and never from the project, and it does not
import vqa_grpo; the model half (build, run a case, save and reload) is in
phi3_v_reference_model.py beside it.  It needs:

* the remote files, assembled as a package (any folder name; relative imports
  must work) -- modeling_phi3_v.py from TIGER-AI-Lab/VLM2Vec@968e4915
  (src/vlm_backbone/phi3_v/), configuration_phi3_v.py and processing_phi3_v.py
  from lamm-mit/Cephalo-Phi-3-Vision-MoE@6dda8302 (Phi_3V_MoE/), and
  image_processing_phi3_v.py and image_embedding_phi3_v.py from
  Aritra02091998/Phi-3-vision-128k-instruct-Improvised-for-QLORA-Training@31ce181e
  (in the last one delete the lines between and including the two
  "FORCE FLASHATTN-COMPATIBLE DTYPE" comment rulers; that code only runs
  with flash attention);
* the checkpoint's config/tokenizer/processor files (no weights) in
  ../shared/models/phi-3-vision-128k-instruct/ next to the repository;
* a separate venv with transformers 4.40.2 (the remote code does not run on
  the project's transformers).

Set up and run (from the repository root)::

    mkdir -p /tmp/ref/phi3v && touch /tmp/ref/phi3v/__init__.py
    # copy the five remote files into /tmp/ref/phi3v/ as described above
    python3 -m venv /tmp/ref-venv
    /tmp/ref-venv/bin/pip install transformers==4.40.2 torch torchvision \
        numpy pillow safetensors sentencepiece protobuf
    # quick run: CLIP tower cut to 2 layers (through the remote config constant)
    /tmp/ref-venv/bin/python scripts/phi3_v_reference.py --code /tmp/ref/phi3v \
        --vision-layers 2 --out /tmp/ref/reference_L2.json \
        --logits-out /tmp/ref/logits_L2.safetensors --save /tmp/ref/ckpt_L2
    # full 24-layer CLIP tower (several minutes on one CPU thread)
    /tmp/ref-venv/bin/python scripts/phi3_v_reference.py --code /tmp/ref/phi3v \
        --out /tmp/ref/reference_L24.json --logits-out /tmp/ref/logits_L24.safetensors
    # show that a checkpoint saved by the native code loads in the official code
    /tmp/ref-venv/bin/python scripts/phi3_v_reference.py --code /tmp/ref/phi3v \
        --load /path/to/native/checkpoint --out /tmp/ref/reference_loaded.json \
        --logits-out /tmp/ref/logits_loaded.safetensors --skip-processor

What it records (JSON):

* "processor": for num_crops K in (1, 4, 16) and every IMAGE_SIZES entry,
  the full input_ids, pixel_values shape / float64 sum, abs-sum, sum of
  squares and per-crop sums, image_sizes and the number of image tokens.
  All pixel_values tensors go to --pixel-out keyed "{K}_{w}x{h}".
* "model": the remote Phi3VForCausalLM (eager attention, fp32) with
  fill_weights() values (or the --load checkpoint); per case the logits
  shape, float64 sum / abs-sum, top-5 at the last position, the loss with
  reference_labels(), and 8 greedy tokens (eos disabled).  The logits of the
  last 3 positions go to --logits-out keyed like the pixel values.
* versions, the CLIP depth used, sha256 of the remote files, wall times.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib
import importlib.util
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch
from phi3_v_reference_model import build_model, case_key, f64_stats, run_case, save_and_reload  # beside this script

REPO = Path(__file__).resolve().parents[1]
INPUTS_FILE = REPO / "tests" / "models" / "phi3_v_reference_inputs.py"

CROPS = (1, 4, 16)
DEFAULT_CASES = ((4, (200, 120)), (1, (336, 336)), (16, (500, 375)))
REMOTE_FILES = (
    "configuration_phi3_v.py",
    "modeling_phi3_v.py",
    "image_embedding_phi3_v.py",
    "processing_phi3_v.py",
    "image_processing_phi3_v.py",
)


def load_inputs_module():
    spec = importlib.util.spec_from_file_location("phi3_v_reference_inputs", INPUTS_FILE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def load_remote(code_dir: Path):
    """Import the remote package from code_dir (its parent goes first on sys.path)."""
    code_dir = code_dir.resolve()
    if not (code_dir / "__init__.py").exists():
        raise SystemExit(f"{code_dir} is not a package (no __init__.py)")
    sys.path.insert(0, str(code_dir.parent))
    pkg = code_dir.name
    mods = {
        name: importlib.import_module(f"{pkg}.{name}")
        for name in (
            "configuration_phi3_v",
            "image_embedding_phi3_v",
            "modeling_phi3_v",
            "image_processing_phi3_v",
            "processing_phi3_v",
        )
    }
    for name, mod in mods.items():
        if not Path(mod.__file__).resolve().is_relative_to(code_dir):
            raise SystemExit(f"{name} was imported from {mod.__file__}, not from {code_dir}")
    return mods


def build_processor(remote, tokenizer, pre_cfg: dict, num_crops: int):
    image_processor = remote["image_processing_phi3_v"].Phi3VImageProcessor(
        num_crops=num_crops,
        image_mean=pre_cfg["image_mean"],
        image_std=pre_cfg["image_std"],
        num_img_tokens=pre_cfg["num_img_tokens"],
    )
    return remote["processing_phi3_v"].Phi3VProcessor(image_processor=image_processor, tokenizer=tokenizer)


def run_processor(ri, processors, pixel_out: Path, timings: dict) -> dict:
    from safetensors.torch import save_file

    t0 = time.perf_counter()
    records, tensors = {}, {}
    for k in CROPS:
        for w, h in ri.IMAGE_SIZES:
            inputs = processors[k](ri.PROMPT, [ri.make_image(w, h)], return_tensors="pt")
            ids = inputs["input_ids"]
            pv = inputs["pixel_values"]
            key = case_key(k, (w, h))
            records[key] = {
                "num_crops": k,
                "width": w,
                "height": h,
                "input_ids": ids[0].tolist(),
                "seq_len": ids.shape[1],
                "num_image_tokens": int((ids < 0).sum()),
                "attention_mask_sum": int(inputs["attention_mask"].sum()),
                "image_sizes": inputs["image_sizes"].tolist(),
                "pixel_values_shape": list(pv.shape),
                "pixel_values_dtype": str(pv.dtype),
                "pixel_values": f64_stats(pv),
                "pixel_values_crop_sums": pv.to(torch.float64).sum(dim=(0, 2, 3, 4)).tolist(),
            }
            tensors[key] = pv.contiguous()
    pixel_out.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(pixel_out))
    timings["processor_s"] = time.perf_counter() - t0
    return records


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--code", type=Path, required=True, help="folder of the remote package (has __init__.py)")
    parser.add_argument("--out", type=Path, required=True, help="JSON output")
    parser.add_argument("--vision-layers", type=int, default=None, help="CLIP depth (default: the remote 24)")
    parser.add_argument("--load", type=Path, default=None, help="load this checkpoint with the remote from_pretrained")
    parser.add_argument("--save", type=Path, default=None, help="save_pretrained the reference model here")
    parser.add_argument("--pixel-out", type=Path, default=Path("/tmp/ref/pixel_values.safetensors"))
    parser.add_argument("--logits-out", type=Path, default=None, help="default: logits.safetensors beside --out")
    parser.add_argument("--skip-processor", action="store_true", help="skip the processor sweep")
    parser.add_argument("--cases", default=None, help='model cases, e.g. "4:200x120,1:336x336"')
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    if args.load is not None and args.save is not None:
        parser.error("--load and --save are exclusive")
    logits_out = args.logits_out or args.out.parent / "logits.safetensors"

    torch.set_num_threads(args.threads)
    t_start = time.perf_counter()
    ri = load_inputs_module()
    remote = load_remote(args.code)

    import PIL
    import transformers
    from safetensors.torch import save_file
    from transformers import AutoTokenizer

    cases = DEFAULT_CASES
    if args.cases:
        cases = []
        for item in args.cases.split(","):
            k, wh = item.split(":")
            w, h = wh.split("x")
            cases.append((int(k), (int(w), int(h))))

    result: dict = {
        "versions": {
            "python": platform.python_version(),
            "transformers": transformers.__version__,
            "torch": torch.__version__,
            "numpy": np.__version__,
            "pillow": PIL.__version__,
        },
        "torch_threads": torch.get_num_threads(),
        "remote_code": {
            "dir": str(args.code.resolve()),
            "sha256": {f: hashlib.sha256((args.code / f).read_bytes()).hexdigest() for f in REMOTE_FILES},
        },
        "prompt": ri.PROMPT,
        "image_sizes": [list(s) for s in ri.IMAGE_SIZES],
    }
    timings: dict = {}

    tokenizer = AutoTokenizer.from_pretrained(str(ri.SHARED))
    pre_cfg = json.loads((ri.SHARED / "preprocessor_config.json").read_text())
    result["tokenizer"] = {"class": type(tokenizer).__name__, "len": len(tokenizer)}
    processors = {k: build_processor(remote, tokenizer, pre_cfg, k) for k in sorted(set(CROPS) | {c[0] for c in cases})}

    if not args.skip_processor:
        result["processor"] = run_processor(ri, processors, args.pixel_out, timings)
        result["pixel_values_file"] = str(args.pixel_out)

    model_info: dict = {}
    model = build_model(ri, remote, args, model_info)
    result["model"] = model_info
    result["vision_layers"] = model_info["vision_layers"]

    logits_store: dict = {}
    model_info["cases"] = {}
    for k, size in cases:
        t0 = time.perf_counter()
        model_info["cases"][case_key(k, size)] = run_case(ri, model, processors[k], k, size, logits_store, timings)
        timings[f"case_{case_key(k, size)}_s"] = time.perf_counter() - t0
        print(f"case {case_key(k, size)}: {time.perf_counter() - t0:.1f}s", flush=True)
    logits_out.parent.mkdir(parents=True, exist_ok=True)
    save_file(logits_store, str(logits_out))
    result["logits_file"] = str(logits_out)

    if args.save is not None:
        result["save"] = save_and_reload(ri, remote, model, processors, cases[0], logits_store, args.save, timings)

    timings["total_s"] = time.perf_counter() - t_start
    result["timings"] = timings
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    print(f"wrote {args.out} and {logits_out}", flush=True)


if __name__ == "__main__":
    main()
