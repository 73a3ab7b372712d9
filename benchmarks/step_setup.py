"""What the GRPO step benchmark's parent and workers share (grpo_step.py): the settings, the
model and data built offline, and the measuring of a worker's steps."""

from __future__ import annotations

import dataclasses
import json
import sys
import time
from pathlib import Path

METHODS = ("vqa_grpo", "trl", "seed_loop", "limit", "plain")
PHI3_V_METHODS = ("vqa_grpo", "plain", "seed_loop")
"""--model phi3-v: the library's step with and without the shared prefix, and the seed's loop."""


@dataclasses.dataclass
class Settings:
    group_size: int = 8
    image_size: int = 224
    questions: int = 2
    max_new_tokens: int = 8
    steps: int = 10
    warmup: int = 2
    threads: int = 1
    device: str = "cpu"
    dtype: str = "fp32"
    """fp32, or bf16 (weights and AdamW states in bf16 for every method: the GPU run)."""
    model: str = "tiny"
    """tiny: the ~1M-parameter Qwen2-VL of the tests; qwen2-vl-0.5b: the same architecture at ~0.5B
    parameters (random weights); qwen2.5-vl-3b, qwen2.5-vl-7b: Qwen2.5-VL's real 3B and 7B
    architectures (random weights, bf16, built on ``device``: gpu_sizes.py); phi3-v: Phi-3-vision-
    shaped (the real CLIP ViT-L/14-336 tower, Phi-3's text model at hidden 256, 2 layers; random
    weights); phi3-v-full: Phi-3-vision's real
    size (4.2B, for a GPU); or the directory of an existing Qwen2-VL model, used as is."""
    num_crops: int = 4
    """phi3-v: the processor's crops per image (Phi-3-vision: 16; Phi-3.5-vision suggests 4)."""
    lora: int = 0
    """1: LoRA (r 16, the family's default targets) for vqa_grpo, plain and seed_loop."""
    seed: int = 0
    cudnn_attention: int = 1
    """0: keep PyTorch's scaled-dot-product attention off its cuDNN kernels (every method alike)."""
    static_decode: str = "off"
    """vqa_grpo's ``grpo.static_decode`` (auto, on, off): its decode on a static KV cache, CUDA graphs on CUDA."""
    profile: int = 0
    """1 (CUDA): after the measured steps, one more step of vqa_grpo and limit under torch.profiler,
    reporting the device's busy time in it (``device_busy_s``, the kernels' summed device time)."""
    images_per_question: int = 1
    """N: each question shows N different images of ``image_size`` px, all before its text, in order
    (its own synthetic image, then the next N-1 of the set); every method gets the same N."""


# ----------------------------------------------------------------------------------------------
# Setup shared by every method: the model and the questions, built offline into a directory.


def build_model(s: Settings, out: Path) -> Path:
    """The Qwen2-VL of ``s.model``, random weights, with a processor that keeps ``s.image_size``
    (an existing directory is used as it is)."""
    from vqa_grpo.models.tiny import build_tiny_qwen2_vl

    if Path(s.model).is_dir():
        return Path(s.model)
    if s.model.startswith("phi3-v"):
        from vqa_grpo.models.phi3_v.configuration import CLIP_VIT_L14_336
        from vqa_grpo.models.phi3_v.tiny import build_tiny_phi3_v

        return build_tiny_phi3_v(
            out,
            seed=s.seed,
            hidden=256,
            layers=2,
            vision=CLIP_VIT_L14_336,
            num_crops=s.num_crops,
            full_text=s.model == "phi3-v-full",
        )
    if s.model.startswith("qwen2.5-vl-"):  # -3b, -7b; -3b-smoke, -7b-smoke: a twelfth of the layers
        from gpu_sizes import build_qwen2_5_vl

        name = s.model.removesuffix("-smoke")
        shrink = 12 if s.model.endswith("-smoke") else 1
        path = build_qwen2_5_vl(name, out, seed=s.seed, device=s.device, shrink=shrink)
    elif s.model == "tiny":
        path = build_tiny_qwen2_vl(out, seed=s.seed)
    elif s.model == "qwen2-vl-0.5b":  # Qwen2-0.5B's text dimensions, a 20-block vision tower
        path = build_tiny_qwen2_vl(
            out, seed=s.seed, hidden=896, layers=24, heads=14, vision_dim=1280, vision_depth=20, vision_heads=16
        )
    else:
        raise SystemExit(
            f"--model {s.model}: choose tiny, qwen2-vl-0.5b, qwen2.5-vl-3b, qwen2.5-vl-7b, phi3-v, phi3-v-full "
            "or an existing model directory"
        )
    # The builder caps images at 224x224; let the larger benchmark images through unscaled.
    cfg_path = path / "processor_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["image_processor"]["size"]["longest_edge"] = max(224, s.image_size) ** 2
    cfg_path.write_text(json.dumps(cfg, indent=2))
    return path


def build_data(s: Settings, out: Path) -> Path:
    from vqa_grpo.data.synthetic import synthesize

    n = s.questions * (s.warmup + s.steps) * s.images_per_question
    return synthesize(out, n=n, seed=s.seed, image_size=s.image_size).parent


def load_examples(s: Settings, data_dir: Path):
    """The examples in file order and their visuals, one list of B per step: each question's one
    image, or (``images_per_question`` N > 1) the list of its N images, question q taking the
    images of rows qN .. qN+N-1 (``VQAExample.image_loaders``) and row qN's question."""
    import dataclasses as dc

    from vqa_grpo.config import DataConfig
    from vqa_grpo.data.loader import load_vqa

    data = load_vqa(DataConfig(path=str(data_dir), eval_fraction=0.0), seed=s.seed)
    rows, N = sorted(data.train, key=lambda e: e.id), s.images_per_question
    if N > 1:
        rows = [
            dc.replace(rows[q], image_loader=None, image_loaders=tuple(r.image_loader for r in rows[q : q + N]))
            for q in range(0, len(rows), N)
        ]
    B = s.questions

    def shown(e):
        return e.load_image() if N == 1 else e.load_visuals()

    return [(rows[i : i + B], [shown(e) for e in rows[i : i + B]]) for i in range(0, B * (s.warmup + s.steps), B)]


def image_tokens_per_question(model, input_ids, questions: int) -> float | None:
    """The image tokens in ``input_ids`` (the prompts of ``questions`` questions) per question:
    what the model sees of the N images; None when its config names no image token."""
    token = getattr(model.config, "image_token_id", None)
    return None if token is None else int((input_ids == token).sum()) / questions


# ----------------------------------------------------------------------------------------------
# Measuring: median step time and peak memory in the worker process.


class Meter:
    """Peak memory of the measured steps, and host/device synchronisation around a step."""

    def __init__(self, device):
        import torch

        self.torch, self.device = torch, device
        self.base = 0

    def start_measuring(self) -> None:
        """Called after the warm-up: the peak is taken from here."""
        torch = self.torch
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.base = torch.cuda.memory_allocated()
        else:
            Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM, the peak resident size
            self.base = _status_kib("VmRSS") * 1024

    def peak_mib(self) -> float:
        if self.device.type == "cuda":
            return (self.torch.cuda.max_memory_allocated() - self.base) / 2**20
        return (_status_kib("VmHWM") * 1024 - self.base) / 2**20

    def sync(self) -> None:
        if self.device.type == "cuda":
            self.torch.cuda.synchronize()


# The worker's side of the protocol: lines starting with MARK on stdout are for the parent (the
# libraries may print other lines); one line on stdin starts each step.
MARK = "@@grpo_step "


def say(obj) -> None:
    print(MARK + json.dumps(obj), flush=True)


def wait_for_turn(step: int, s: Settings, meter: Meter) -> None:
    sys.stdin.readline()
    if step == s.warmup:
        meter.start_measuring()
    meter.sync()


def drive(s: Settings, meter: Meter, step_fn) -> dict:
    """Run ``step_fn(i) -> completion tokens`` warmup + steps times, each when the parent says."""
    say("ready")
    tokens = []
    for i in range(s.warmup + s.steps):
        wait_for_turn(i, s, meter)
        t0, c0 = time.perf_counter(), time.process_time()
        tokens.append(step_fn(i))
        meter.sync()
        say({"t": time.perf_counter() - t0, "cpu": time.process_time() - c0})
    out = {"tokens": tokens[s.warmup :], "peak_mib": meter.peak_mib()}
    if s.profile and meter.device.type == "cuda":
        out.update(profiled_step(meter, lambda: step_fn(s.warmup + s.steps - 1)))
    return out


def profiled_step(meter: Meter, run) -> dict:
    """One more step under torch.profiler: its wall time, the device's busy time (every kernel's
    own device time, summed) and the kernel launches."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    meter.sync()
    t0 = time.perf_counter()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        run()
        meter.sync()
    wall = time.perf_counter() - t0
    events = prof.key_averages()
    busy = sum(e.self_device_time_total for e in events if e.device_type == DeviceType.CUDA) / 1e6  # kernels, copies
    launches = sum(e.count for e in events if e.key in ("cudaLaunchKernel", "cuLaunchKernel", "cuLaunchKernelEx"))
    return {"profiled_step_s": wall, "device_busy_s": busy, "kernel_launches": launches}


def _status_kib(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{key} not in /proc/self/status")


# ----------------------------------------------------------------------------------------------
# The four methods (each runs in its own worker process).


def _grpo_cfg(s: Settings, shared_prefix: str):
    from vqa_grpo.config import GRPOConfig

    return GRPOConfig(
        num_generations=s.group_size,
        max_completion_length=s.max_new_tokens,
        temperatures=[1.0],
        top_ps=[1.0],
        beta=0.0,
        loss_type="dapo",
        shared_prefix=shared_prefix,
        static_decode=s.static_decode if shared_prefix != "off" else "off",
    )


def _optimizer(model):
    from vqa_grpo.config import TrainConfig
    from vqa_grpo.training.optim import make_optimizer

    return make_optimizer([p for p in model.parameters() if p.requires_grad], TrainConfig(learning_rate=1e-5))
