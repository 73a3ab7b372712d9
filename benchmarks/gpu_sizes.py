"""The GRPO step at the sizes users train, on one GPU: every figure in one run.

For each size, random weights built offline from the real architecture, bf16, G = 8, 2 questions,
8 new tokens, `benchmarks/grpo_step.py`'s methods in turns (vqa_grpo with ``grpo.static_decode``,
TRL's GRPOTrainer, the bare-model limit), then one step of vqa_grpo and of the limit under
torch.profiler (the device's busy time):

    size            model                                         images             fine-tune
    qwen2-vl-0.5b   Qwen2-VL, Qwen2-0.5B's text model (H100 docs) 224 px, 64 tokens  full, LoRA
    qwen2.5-vl-3b   Qwen2.5-VL-3B's architecture                  448 px, 256 tokens full, LoRA
    qwen2.5-vl-7b   Qwen2.5-VL-7B's architecture                  448 px, 256 tokens LoRA
    phi3-vision     Phi-3-vision's (4.2B, native), num_crops 4    448 px             LoRA (no TRL, no limit)

It prints each size's figures as it goes and writes ``--out`` (default
benchmarks/results/gpu-<date>.json): ``device``, ``commit``, ``date`` and ``sizes``, each size's
``vqa_grpo_step_s``, ``trl_step_s``, ``limit_device_s`` (the device's busy time in the limit's
step), ``device_busy_fraction`` (the device's busy time in vqa_grpo's profiled step over that
step's wall time), ``peak_mem_gib`` (vqa_grpo's), the ratio to TRL and the same for LoRA under
``lora``; ``raw`` holds grpo_step.py's whole output per run. A run that fails is recorded with its
error and the others go on; the file is rewritten after each run, so a timeout keeps what ran.

    python benchmarks/gpu_sizes.py                      # on the GPU machine, about 8 minutes
    python benchmarks/gpu_sizes.py --smoke --device cpu # the plumbing, at tiny sizes, on the CPU
"""

from __future__ import annotations

import argparse
import datetime
import json
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

ROOT = Path(__file__).resolve().parents[1]

QWEN2_5_VL = {
    # The text and vision dimensions of Qwen/Qwen2.5-VL-3B-Instruct and -7B-Instruct (config.json).
    "qwen2.5-vl-3b": dict(
        text=dict(hidden_size=2048, intermediate_size=11008, num_hidden_layers=36, num_attention_heads=16,
                  num_key_value_heads=2, vocab_size=151936, rope_theta=1e6),
        vision=dict(depth=32, hidden_size=1280, intermediate_size=3420, num_heads=16, out_hidden_size=2048,
                    window_size=112, fullatt_block_indexes=[7, 15, 23, 31]),
        tie=True,
    ),
    "qwen2.5-vl-7b": dict(
        text=dict(hidden_size=3584, intermediate_size=18944, num_hidden_layers=28, num_attention_heads=28,
                  num_key_value_heads=4, vocab_size=152064, rope_theta=1e6),
        vision=dict(depth=32, hidden_size=1280, intermediate_size=3420, num_heads=16, out_hidden_size=3584,
                    window_size=112, fullatt_block_indexes=[7, 15, 23, 31]),
        tie=False,
    ),
}  # fmt: skip
MROPE_SECTION = [16, 24, 24]
"""Qwen2.5-VL's split of each head's 64 rotary pairs into temporal, height and width."""


def build_qwen2_5_vl(name: str, out: Path, *, seed: int = 0, device: str = "cpu", shrink: int = 1) -> Path:
    """A Qwen2.5-VL of ``name``'s architecture with random weights (bf16, initialised on ``device``)
    and the tests' word-level processor; ``shrink`` divides the layer counts (the CPU smoke run)."""
    import torch
    from transformers import AutoConfig, Qwen2_5_VLForConditionalGeneration

    from vqa_grpo.models.tiny import build_tiny_qwen2_5_vl

    path = build_tiny_qwen2_5_vl(out, seed=seed)  # the processor, the tokenizer, the special token ids
    spec, tiny = QWEN2_5_VL[name], AutoConfig.from_pretrained(path)
    config = type(tiny)(
        text_config={
            **{k: v for k, v in tiny.text_config.to_dict().items() if k != "layer_types"},  # derived again
            **{k: v for k, v in spec["text"].items() if k != "rope_theta"},
            "num_hidden_layers": max(1, spec["text"]["num_hidden_layers"] // shrink),
            "max_position_embeddings": 128000,
            "rope_parameters": {"rope_type": "default", "rope_theta": spec["text"]["rope_theta"],
                                "mrope_section": MROPE_SECTION},
        },
        vision_config={
            **tiny.vision_config.to_dict(),
            **spec["vision"],
            "depth": max(2, spec["vision"]["depth"] // shrink),
            "fullatt_block_indexes": [i // shrink for i in spec["vision"]["fullatt_block_indexes"]],
        },
        image_token_id=tiny.image_token_id,
        video_token_id=tiny.video_token_id,
        vision_start_token_id=tiny.vision_start_token_id,
        vision_end_token_id=tiny.vision_end_token_id,
        tie_word_embeddings=spec["tie"],
    )  # fmt: skip
    torch.manual_seed(seed)
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)
    try:
        with torch.device(device):
            model = Qwen2_5_VLForConditionalGeneration(config)
    finally:
        torch.set_default_dtype(default)
    model.generation_config = type(model.generation_config).from_pretrained(path)
    for stale in path.glob("model*.safetensors*"):
        stale.unlink()
    model.save_pretrained(path)
    return path


# ---- the runs --------------------------------------------------------------------------------------

COMMON = ["--group-size", "8", "--questions", "2", "--max-new-tokens", "8", "--dtype", "bf16", "--profile", "1"]
RUNS = [  # (size, LoRA, grpo_step.py arguments)
    ("qwen2-vl-0.5b", 0, ["--model", "qwen2-vl-0.5b", "--image-size", "224"]),
    ("qwen2-vl-0.5b", 1, ["--model", "qwen2-vl-0.5b", "--image-size", "224"]),
    ("qwen2.5-vl-3b", 0, ["--model", "qwen2.5-vl-3b", "--image-size", "448"]),
    ("qwen2.5-vl-3b", 1, ["--model", "qwen2.5-vl-3b", "--image-size", "448"]),
    ("qwen2.5-vl-7b", 1, ["--model", "qwen2.5-vl-7b", "--image-size", "448"]),
    ("phi3-vision", 1, ["--model", "phi3-v-full", "--image-size", "448", "--num-crops", "4"]),
]
TARGETS = {"qwen2-vl-0.5b": 1 / 2, "qwen2.5-vl-3b": 1 / 3}
"""vqa-grpo's step at most this fraction of TRL's (full fine-tune); device busy at least 0.6 at 3B."""


def figures(raw: dict) -> dict:
    """The issue's figures of one grpo_step.py output."""
    methods = raw.get("methods", {})
    ours, limit = methods.get("vqa_grpo", {}), methods.get("limit", {})
    busy = ours.get("device_busy_s")
    return {
        "vqa_grpo_step_s": raw.get("vqa_grpo_step_s"),
        "trl_step_s": raw.get("trl_step_s"),
        "vqa_grpo_over_trl": (raw.get("ratios") or {}).get("vqa_grpo_over_trl"),
        "limit_step_s": raw.get("limit_step_s"),
        "limit_device_s": limit.get("device_busy_s"),
        "device_busy_fraction": busy / ours["profiled_step_s"] if busy and ours.get("profiled_step_s") else None,
        "kernel_launches": ours.get("kernel_launches"),
        "peak_mem_gib": ours["peak_mib"] / 1024 if "peak_mib" in ours else None,
        "path": ours.get("path"),
        "errors": {m: r["error"] for m, r in methods.items() if "error" in r} or raw.get("error"),
    }


def git_commit() -> str:
    done = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    return done.stdout.strip() or "unknown"


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda")
    p.add_argument("--out", default=None, help="the JSON file (default: benchmarks/results/gpu-<date>.json)")
    p.add_argument("--steps", type=int, default=3, help="measured steps per method (after 1 warm-up step)")
    p.add_argument("--static-decode", default="on", choices=["auto", "on", "off"], help="vqa_grpo's grpo.static_decode")
    p.add_argument("--only", default="", help="sizes to run, comma-separated (default: all)")
    p.add_argument("--timeout", type=int, default=150, help="seconds per run")
    p.add_argument("--smoke", action="store_true", help="tiny stand-ins of every size (the plumbing, on the CPU)")
    a = p.parse_args(argv)
    import torch

    device = torch.cuda.get_device_name(0) if a.device == "cuda" else f"cpu ({a.device})"
    date = datetime.date.today().isoformat()
    out_path = Path(a.out or ROOT / "benchmarks" / "results" / f"gpu-{date}.json")
    out_path.parent.mkdir(parents=True, exist_ok=True)
    result = {"device": device, "commit": git_commit(), "date": date, "static_decode": a.static_decode, "sizes": {}}
    result["raw"] = {}
    only = set(filter(None, a.only.split(",")))
    t_all = time.time()
    for size, lora, args in RUNS:
        if only and size not in only:
            continue
        methods = "vqa_grpo" if size == "phi3-vision" else "vqa_grpo,trl,limit"
        cmd = [sys.executable, str(ROOT / "benchmarks" / "grpo_step.py"), *COMMON, *args, "--lora", str(lora)]
        cmd += ["--device", a.device, "--steps", str(a.steps), "--warmup", "1", "--methods", methods]
        cmd += ["--static-decode", a.static_decode, "--json"]
        if a.smoke:
            cmd = smoke(cmd, size)
        t0 = time.time()
        try:
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=a.timeout)
            raw = json.loads(done.stdout.strip().splitlines()[-1]) if done.returncode == 0 else None
            raw = raw or {"error": (done.stderr.strip().splitlines() or [f"exit {done.returncode}"])[-1]}
        except subprocess.TimeoutExpired:
            raw = {"error": f"timed out after {a.timeout} s"}
        raw["wall_s"] = time.time() - t0
        key = f"{size}{' lora' if lora else ''}"
        result["raw"][key] = raw
        fig = figures(raw)
        entry = result["sizes"].setdefault(size, {})
        if lora:
            entry["lora"] = fig
            for k, v in fig.items():
                entry.setdefault(k, v)  # a size measured with LoRA alone reports its LoRA figures
        else:
            entry.update(fig)
        print(f"{key}: {json.dumps(fig)} ({raw['wall_s']:.0f} s)", flush=True)
        out_path.write_text(json.dumps(result, indent=2) + "\n")
    result["wall_s"] = time.time() - t_all
    result["targets"] = targets(result["sizes"])
    out_path.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result["targets"], indent=2))
    print(f"wrote {out_path} ({result['wall_s']:.0f} s)")


def targets(sizes: dict) -> dict:
    """Each target of the issue: the figure, the bound, whether it is met (None: not measured)."""
    out = {}
    for size, bound in TARGETS.items():
        r = (sizes.get(size) or {}).get("vqa_grpo_over_trl")
        out[f"{size} vqa_grpo/trl <= {bound:.3f}"] = {"value": r, "met": None if r is None else r <= bound}
    busy = (sizes.get("qwen2.5-vl-3b") or {}).get("device_busy_fraction")
    out["qwen2.5-vl-3b device busy >= 0.6"] = {"value": busy, "met": None if busy is None else busy >= 0.6}
    return out


def smoke(cmd: list[str], size: str) -> list[str]:
    """The CPU run of the plumbing: stand-ins with a twelfth of the layers (Phi-3-vision: its tiny
    text model), fp32, G = 2, 2 tokens, 112 px (no figure of it means anything). The later
    occurrence of an option wins."""
    model = {"qwen2-vl-0.5b": "tiny", "phi3-vision": "phi3-v"}.get(size, f"{size}-smoke")
    return [*cmd, "--model", model, "--dtype", "fp32", "--image-size", "112", "--group-size", "2",
            "--max-new-tokens", "2", "--num-crops", "1", "--profile", "0"]  # fmt: skip


if __name__ == "__main__":
    main()
