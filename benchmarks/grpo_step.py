"""One GRPO step: vqa-grpo against TRL's GRPOTrainer, the seed's sequential loop, and the limit.

A step is B questions x G sampled completions, their rewards, the loss's forward and backward
passes and the optimiser step. Four ways to spend it, on the same model and the same questions
(in the same order), each in its own worker process. The workers take their steps in turns
(step 1 of each method, then step 2 of each, ...), so that a change in the machine's load
during the run (a shared machine) falls on every method alike:

- vqa_grpo:  ``make_rollout`` + ``grpo_objective`` + backward + AdamW step (the library's step;
             the shared prefix where the family supports it, as ``grpo.shared_prefix=auto``, and
             the prompts' one pass kept for the loss where that is exact, as ``grpo.fuse_prefill=auto``).
- trl:       TRL's ``GRPOTrainer`` (``pip install vqa-grpo[bench]``), per_device_train_batch_size
             = B*G, num_generations = G, one generation per step, beta = 0, gradient checkpointing
             off (as in vqa-grpo), the reward from vqa_grpo.rewards; the step is timed from
             ``on_step_begin`` to ``on_step_end`` (generation, scoring, loss, backward, optimiser).
- seed_loop: the seed's Algorithm 1 sampling, one ``generate`` call per completion (for each
             question, G calls of batch 1, one after the other), then the same GRPO loss on the
             prompts repeated G times, backward and the AdamW step.
- limit:     the step's unavoidable work as bare model calls: one prefill of each prompt, the
             decode steps of its G completions as one batch (prefill + C-1 steps for C tokens),
             one forward and backward pass of each prompt plus its G completions' tokens. No
             processor, sampling, rewards or optimiser.

Each is the median over ``--steps`` steps after ``--warmup`` steps. Sampling is at temperature 1
and top-p 1 everywhere. Tokens per second counts the completion tokens sampled in the step
(the limit: B*G*max_new_tokens). Peak memory is the process's peak resident memory during the
measured steps above its resident memory before them (the CUDA allocator's peak with --device
cuda).

  OMP_NUM_THREADS=1 .venv/bin/python benchmarks/grpo_step.py            # G=8, 224 px, 2 questions
  OMP_NUM_THREADS=1 .venv/bin/python benchmarks/grpo_step.py --json     # one JSON object
  OMP_NUM_THREADS=1 .venv/bin/python benchmarks/grpo_step.py --sweep    # G 4/8/16 x 112/224/448 px
  .venv/bin/python benchmarks/grpo_step.py --device cuda --model qwen2-vl-0.5b --dtype bf16
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
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
    parameters (random weights); phi3-v: Phi-3-vision-shaped (the real CLIP ViT-L/14-336 tower,
    Phi-3's text model at hidden 256, 2 layers; random weights); phi3-v-full: Phi-3-vision's real
    size (4.2B, for a GPU); or the directory of an existing Qwen2-VL model, used as is."""
    num_crops: int = 4
    """phi3-v: the processor's crops per image (Phi-3-vision: 16; Phi-3.5-vision suggests 4)."""
    lora: int = 0
    """1: LoRA (r 16, the family's default targets) for vqa_grpo, plain and seed_loop."""
    seed: int = 0
    cudnn_attention: int = 1
    """0: keep PyTorch's scaled-dot-product attention off its cuDNN kernels (every method alike)."""


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

        return build_tiny_phi3_v(out, seed=s.seed, hidden=256, layers=2, vision=CLIP_VIT_L14_336,
                                 num_crops=s.num_crops, full_text=s.model == "phi3-v-full")
    if s.model == "tiny":
        path = build_tiny_qwen2_vl(out, seed=s.seed)
    elif s.model == "qwen2-vl-0.5b":  # Qwen2-0.5B's text dimensions, a 20-block vision tower
        path = build_tiny_qwen2_vl(out, seed=s.seed, hidden=896, layers=24, heads=14, vision_dim=1280,
                                   vision_depth=20, vision_heads=16)
    else:
        raise SystemExit(f"--model {s.model}: choose tiny, qwen2-vl-0.5b or an existing model directory")
    # The builder caps images at 224x224; let the larger benchmark images through unscaled.
    cfg_path = path / "processor_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["image_processor"]["size"]["longest_edge"] = max(224, s.image_size) ** 2
    cfg_path.write_text(json.dumps(cfg, indent=2))
    return path


def build_data(s: Settings, out: Path) -> Path:
    from vqa_grpo.data.synthetic import synthesize

    return synthesize(out, n=s.questions * (s.warmup + s.steps), seed=s.seed, image_size=s.image_size).parent


def load_examples(s: Settings, data_dir: Path):
    """The examples in file order and their images, one list of B per step."""
    from vqa_grpo.config import DataConfig
    from vqa_grpo.data.loader import load_vqa

    data = load_vqa(DataConfig(path=str(data_dir), eval_fraction=0.0), seed=s.seed)
    rows = sorted(data.train, key=lambda e: e.id)
    B = s.questions
    return [(rows[i : i + B], [e.load_image() for e in rows[i : i + B]]) for i in range(0, B * (s.warmup + s.steps), B)]


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
    return {"tokens": tokens[s.warmup :], "peak_mib": meter.peak_mib()}


def _status_kib(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{key} not in /proc/self/status")


# ----------------------------------------------------------------------------------------------
# The four methods (each runs in its own worker process).


def _grpo_cfg(s: Settings, shared_prefix: str):
    from vqa_grpo.config import GRPOConfig

    return GRPOConfig(num_generations=s.group_size, max_completion_length=s.max_new_tokens, temperatures=[1.0],
                      top_ps=[1.0], beta=0.0, loss_type="dapo", shared_prefix=shared_prefix)


def _optimizer(model):
    from vqa_grpo.config import TrainConfig
    from vqa_grpo.training.optim import make_optimizer

    return make_optimizer([p for p in model.parameters() if p.requires_grad], TrainConfig(learning_rate=1e-5))


def run_vqa_grpo(s: Settings, model_dir: Path, data_dir: Path, device, shared_prefix: str = "auto") -> dict:
    from vqa_grpo.config import ModelConfig, RewardConfig
    from vqa_grpo.grpo.objective import grpo_objective
    from vqa_grpo.grpo.rollout import fuse_prefill, make_rollout
    from vqa_grpo.models.loading import load_model

    lm = load_model(ModelConfig(name_or_path=str(model_dir), dtype=s.dtype, lora=bool(s.lora), lora_r=16), device)
    lm.model.train()
    opt, grpo, reward = _optimizer(lm.model), _grpo_cfg(s, shared_prefix), RewardConfig()
    keep = fuse_prefill(lm.model, grpo)  # as the training loop decides it
    steps = load_examples(s, data_dir)
    paths = set()

    def step(i: int) -> float:
        examples, images = steps[i]
        ro = make_rollout(lm.model, lm.adapter, lm.processor, examples, images, grpo, reward, device, keep_prefill=keep)
        paths.add(("shared prefix" if ro.shared_prefix else "plain") + (", fused prefill" if ro.prefix is not None else ""))
        loss, _ = grpo_objective(lm.model, lm.adapter, lm.processor, ro, grpo)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return float(ro.completion_mask.sum())

    return {**drive(s, Meter(device), step), "path": ", ".join(sorted(paths))}


def run_seed_loop(s: Settings, model_dir: Path, data_dir: Path, device) -> dict:
    import torch

    from vqa_grpo.config import ModelConfig, RewardConfig
    from vqa_grpo.grpo.math import group_advantages
    from vqa_grpo.grpo.objective import grpo_objective
    from vqa_grpo.grpo.rollout import Rollout
    from vqa_grpo.models.generation import decode, generate
    from vqa_grpo.models.loading import load_model
    from vqa_grpo.rewards import compute_rewards

    lm = load_model(ModelConfig(name_or_path=str(model_dir), dtype=s.dtype, lora=bool(s.lora), lora_r=16), device)
    lm.model.train()
    opt, grpo, G = _optimizer(lm.model), _grpo_cfg(s, "off"), s.group_size
    pad = lm.processor.tokenizer.pad_token_id
    steps = load_examples(s, data_dir)

    def step(i: int) -> float:
        examples, images = steps[i]
        rows = []  # B*G completions, one generate call each
        for ex, im in zip(examples, images):
            prompt = lm.adapter.encode_prompts(lm.processor, [im], [ex.question]).to(device)
            for _ in range(G):
                rows.append(generate(lm.model, lm.adapter, lm.processor, prompt, max_new_tokens=s.max_new_tokens,
                                     do_sample=True, temperature=1.0, top_p=1.0))
        C = max(r.ids.shape[1] for r in rows)
        ids = torch.cat([torch.nn.functional.pad(r.ids, (0, C - r.ids.shape[1]), value=pad) for r in rows])
        mask = torch.cat([torch.nn.functional.pad(r.mask, (0, C - r.mask.shape[1])) for r in rows])
        texts = [t for r in rows for t in decode(lm.processor, r)]
        rep = [e for e in examples for _ in range(G)]
        scored = compute_rewards(texts, [e.answers for e in rep], [e.answer_type for e in rep], RewardConfig())
        rewards = torch.as_tensor(scored.total, dtype=torch.float32)
        ro = Rollout(
            examples=examples,
            prompts=lm.adapter.encode_prompts(lm.processor, images, [e.question for e in examples]).to(device),
            group_size=G, completion_ids=ids, completion_mask=mask,
            truncated=torch.cat([r.truncated for r in rows]), temperatures=torch.ones(len(rows), device=device),
            sampling_logprobs=torch.zeros(ids.shape, device=device), answers=texts, rewards=rewards,
            reward_parts={}, advantages=group_advantages(rewards, G).to(device), shared_prefix=False,
        )
        loss, _ = grpo_objective(lm.model, lm.adapter, lm.processor, ro, grpo)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return float(mask.sum())

    return drive(s, Meter(device), step)


def run_limit(s: Settings, model_dir: Path, data_dir: Path, device) -> dict:
    """Bare model calls: prefill, G-row decode from the repeated cache, one forward+backward."""
    import torch

    from vqa_grpo.config import ModelConfig
    from vqa_grpo.models.loading import load_model

    lm = load_model(ModelConfig(name_or_path=str(model_dir), dtype=s.dtype), device)
    model, G, C = lm.model, s.group_size, s.max_new_tokens
    rope = model.model.get_rope_index
    steps = []
    for examples, images in load_examples(s, data_dir):  # the processor is not part of the limit
        steps.append(lm.adapter.encode_prompts(lm.processor, images, [e.question for e in examples]).to(device))

    def step(i: int) -> float:
        prompts = steps[i]
        inputs, mask = prompts.model_inputs(), prompts.attention_mask
        positions, deltas = rope(prompts.input_ids, inputs["mm_token_type_ids"], inputs["image_grid_thw"], attention_mask=mask)
        start = (mask.sum(1) + deltas.view(-1)).repeat_interleave(G)  # [R] position of completion token 0

        def after_prefix(cache, tokens, offset, am):  # tokens [R, T] at completion offsets offset..offset+T-1
            pos = start[:, None] + offset + torch.arange(tokens.shape[1], device=device)[None, :]  # [R, T]
            return model(input_ids=tokens, attention_mask=am, position_ids=pos.unsqueeze(0).expand(3, -1, -1),
                         cache=cache, use_cache=True).logits

        model.eval()
        with torch.no_grad():  # sampling: one prefill, then C-1 decode steps of the R rows
            out = model(**inputs, position_ids=positions, use_cache=True, logits_to_keep=1)
            cache = out.cache
            cache.batch_repeat_interleave(G)
            am = mask.repeat_interleave(G, 0)
            token = out.logits[:, -1].argmax(-1).repeat_interleave(G)[:, None]  # [R, 1] completion token 0
            tokens = [token]
            for t in range(1, C):
                am = torch.cat([am, torch.ones_like(token)], 1)
                token = after_prefix(cache, token, t - 1, am)[:, -1].argmax(-1)[:, None]
                tokens.append(token)
        model.train()  # the loss: the prompt once with gradient, its G completions against it
        out = model(**inputs, position_ids=positions, use_cache=True, logits_to_keep=1)
        cache = out.cache
        cache.batch_repeat_interleave(G)
        completion = torch.cat(tokens[:-1], 1)  # [R, C-1]: the last token predicts nothing
        am = torch.cat([mask.repeat_interleave(G, 0), torch.ones_like(completion)], 1)
        logits = torch.cat([out.logits[:, -1:].repeat_interleave(G, 0), after_prefix(cache, completion, 0, am)], 1)
        logits.float().logsumexp(-1).mean().backward()
        model.zero_grad(set_to_none=True)
        return float(prompts.size * G * C)

    return drive(s, Meter(device), step)


def run_trl(s: Settings, model_dir: Path, data_dir: Path, device) -> dict:
    try:
        import trl
        from trl import GRPOConfig, GRPOTrainer
    except ImportError:
        say("ready")  # nothing to time: answer every turn at once
        for _ in range(s.warmup + s.steps):
            sys.stdin.readline()
            say({"error": "trl is not installed: pip install 'vqa-grpo[bench]'"})
        return {"error": "trl is not installed: pip install 'vqa-grpo[bench]'"}
    from datasets import Dataset
    from transformers import AutoModelForImageTextToText, AutoProcessor, TrainerCallback

    from vqa_grpo.config import RewardConfig
    from vqa_grpo.models.adapters import ANSWER_INSTRUCTION
    from vqa_grpo.rewards import compute_rewards

    steps = load_examples(s, data_dir)
    rows = [
        {
            "prompt": [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": e.question.strip() + ANSWER_INSTRUCTION}]}],
            "image": im, "answers": e.answers, "answer_type": e.answer_type,
        }
        for examples, images in steps for e, im in zip(examples, images)
    ]

    def vqa_reward(prompts, completions, answers, answer_type, **_):
        texts = [c[0]["content"] if isinstance(c, list) else c for c in completions]
        return list(compute_rewards(texts, answers, answer_type, RewardConfig()).total)

    meter, tokens = Meter(device), []

    class TakeTurns(TrainerCallback):
        """Each optimiser step starts when the parent says; its wall time is reported at its end."""

        def on_train_begin(self, args, state, control, **kwargs):
            say("ready")

        def on_step_begin(self, args, state, control, **kwargs):
            wait_for_turn(state.global_step, s, meter)
            self.t0, self.c0 = time.perf_counter(), time.process_time()

        def on_step_end(self, args, state, control, **kwargs):
            meter.sync()
            say({"t": time.perf_counter() - self.t0, "cpu": time.process_time() - self.c0})

        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "completions/mean_length" in logs:
                tokens.append(float(logs["completions/mean_length"]) * s.questions * s.group_size)

    args = GRPOConfig(
        output_dir=tempfile.mkdtemp(prefix="trl_bench_"), per_device_train_batch_size=s.questions * s.group_size,
        num_generations=s.group_size, max_completion_length=s.max_new_tokens, max_steps=s.warmup + s.steps,
        temperature=1.0, top_p=1.0, top_k=0, beta=0.0, learning_rate=1e-5, gradient_checkpointing=False,
        shuffle_dataset=False, use_cpu=device.type == "cpu", bf16=s.dtype == "bf16", report_to="none", logging_steps=1,
        save_strategy="no", disable_tqdm=True, dataloader_num_workers=0, seed=s.seed,
    )
    import torch

    model = AutoModelForImageTextToText.from_pretrained(model_dir, dtype=torch.bfloat16 if s.dtype == "bf16" else torch.float32)
    trainer = GRPOTrainer(model=model, reward_funcs=vqa_reward, args=args, train_dataset=Dataset.from_list(rows),
                          processing_class=AutoProcessor.from_pretrained(model_dir), callbacks=[TakeTurns()])
    trainer.train()
    return {"tokens": tokens[s.warmup :], "peak_mib": meter.peak_mib(), "trl_version": trl.__version__}


def run_plain(s: Settings, model_dir: Path, data_dir: Path, device) -> dict:
    """The library's step on the plain path (grpo.shared_prefix=off): each row runs its prompt and image."""
    return run_vqa_grpo(s, model_dir, data_dir, device, shared_prefix="off")


RUNNERS = {"vqa_grpo": run_vqa_grpo, "trl": run_trl, "seed_loop": run_seed_loop, "limit": run_limit, "plain": run_plain}


def worker(method: str, s: Settings, model_dir: Path, data_dir: Path) -> None:
    import logging

    import torch

    torch.set_num_threads(s.threads)
    if not s.cudnn_attention:
        torch.backends.cuda.enable_cudnn_sdp(False)
    torch.manual_seed(s.seed)
    logging.getLogger("vqa_grpo.rewards").setLevel(logging.ERROR)  # empty completions are normal here
    say(RUNNERS[method](s, model_dir, data_dir, torch.device(s.device)))


# ----------------------------------------------------------------------------------------------
# The parent: build once, run each method in a fresh process, report.


def measure(s: Settings, methods=METHODS) -> dict:
    """Build the model and data once, start a worker per method, take the steps in turns."""
    with tempfile.TemporaryDirectory(prefix="grpo_step_") as tmp:
        model_dir, data_dir = build_model(s, Path(tmp) / "model"), build_data(s, Path(tmp) / "data")
        workers = {m: Worker(m, s, model_dir, data_dir, Path(tmp)) for m in methods}
        times: dict[str, list[float]] = {m: [] for m in methods}
        cpu: dict[str, list[float]] = {m: [] for m in methods}
        for w in workers.values():
            w.expect("ready")
        for _ in range(s.warmup + s.steps):
            for m, w in workers.items():
                if w.error is None:
                    reply = w.turn()
                    if reply is not None and "t" in reply:
                        times[m].append(reply["t"])
                        cpu[m].append(reply["cpu"])
        results = {}
        for m, w in workers.items():
            final = w.finish()
            if "error" in final:
                results[m] = final
                continue
            measured = times[m][s.warmup :]
            step = statistics.median(measured)
            tokens = statistics.median(final.pop("tokens")) if final.get("tokens") else float("nan")
            results[m] = {"step_s": step, "cpu_s": statistics.median(cpu[m][s.warmup :]), "tokens_per_s": tokens / step,
                          **final, "step_s_all": measured}
        return report(s, results, model_dir)


class Worker:
    """One method in its own process, driven a step at a time over stdin/stdout."""

    def __init__(self, method: str, s: Settings, model_dir: Path, data_dir: Path, tmp: Path):
        cmd = [sys.executable, __file__, "--worker", method, "--settings", json.dumps(dataclasses.asdict(s)),
               "--model-dir", str(model_dir), "--data-dir", str(data_dir)]
        env = {**os.environ, "OMP_NUM_THREADS": str(s.threads), "TOKENIZERS_PARALLELISM": "false"}
        self.stderr_path = tmp / f"{method}.stderr"
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env,
                                     stderr=self.stderr_path.open("w"))
        self.error: str | None = None

    def _read(self):
        """The next protocol line (skipping the libraries' own output); None when the worker died."""
        for line in self.proc.stdout:
            if line.startswith(MARK):
                return json.loads(line[len(MARK) :])
        lines = self.stderr_path.read_text().strip().splitlines()
        self.error = lines[-1] if lines else f"worker exited with {self.proc.wait()}"
        return None

    def expect(self, what) -> None:
        got = self._read()
        if got is not None and got != what:
            self.error = f"worker said {got!r}, expected {what!r}"

    def turn(self):
        self.proc.stdin.write("step\n")
        self.proc.stdin.flush()
        return self._read()

    def finish(self) -> dict:
        final = self._read() if self.error is None else None
        self.proc.stdin.close()
        self.proc.wait()
        if final is None or "error" in final:
            return {"error": (final or {}).get("error") or self.error or "no result"}
        return final


def report(s: Settings, results: dict, model_dir: Path) -> dict:
    import torch
    from transformers import AutoConfig

    def step(m, key="step_s"):
        return results.get(m, {}).get(key)

    def ratio(a, b, key):
        return step(a, key) / step(b, key) if step(a, key) and step(b, key) else None

    import vqa_grpo.models.phi3_v  # noqa: F401  registers phi3_v with AutoConfig

    cfg = AutoConfig.from_pretrained(model_dir)
    out = {f"{m}_step_s": step(m) for m in METHODS}
    out.update({f"{m}_cpu_s": step(m, "cpu_s") for m in METHODS})
    out.update({
        "settings": {**dataclasses.asdict(s), "image_tokens": _image_tokens(model_dir, s.image_size),
                     "model_parameters": _count_parameters(model_dir)},
        "methods": results,
        "machine": {"cpu": _cpu_name(), "cores": os.cpu_count(), "torch": torch.__version__,
                    "gpu": torch.cuda.get_device_name(0) if s.device == "cuda" else None,
                    "python": platform.python_version()},
        "model_type": cfg.model_type,
    })
    out["ratios"] = {  # wall-clock medians; *_cpu: the same with each step's process CPU time
        f"vqa_grpo_over_{m}{suffix}": ratio("vqa_grpo", m, key)
        for suffix, key in (("", "step_s"), ("_cpu", "cpu_s")) for m in ("trl", "limit", "seed_loop", "plain")
    }
    return out


def _image_tokens(model_dir: Path, size: int) -> int:
    """Image tokens of one ``size`` px image after the processor and the 2x2 merge."""
    from PIL import Image
    from transformers import AutoProcessor

    if json.loads((Path(model_dir) / "config.json").read_text()).get("model_type") == "phi3_v":
        from vqa_grpo.models.phi3_v.processing import Phi3VProcessor, hd_size, num_image_tokens

        crops = Phi3VProcessor.from_pretrained(model_dir).image_processor.num_crops
        return num_image_tokens(*hd_size(size, size, crops))

    ip = AutoProcessor.from_pretrained(model_dir).image_processor
    grid = ip(images=[Image.new("RGB", (size, size))], return_tensors="pt")["image_grid_thw"]
    return int(grid.prod()) // ip.merge_size**2


def _count_parameters(model_dir: Path) -> int:
    import math

    from safetensors import safe_open

    n = 0
    for f in Path(model_dir).glob("*.safetensors"):
        with safe_open(f, "pt") as st:
            n += sum(math.prod(st.get_slice(k).get_shape()) for k in st.keys())
    return n


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def print_table(out: dict) -> None:
    s = out["settings"]
    print(f"GRPO step: {s['questions']} questions x G={s['group_size']}, {s['image_size']} px images "
          f"({s['image_tokens']} image tokens), <= {s['max_new_tokens']} new tokens, {s['dtype']} on {s['device']}, "
          f"{s['threads']} thread(s); median of {s['steps']} steps after {s['warmup']} warm-up")
    print(f"model: {out['model_type']} ({s['model']}, {s['model_parameters']:,} parameters); "
          f"machine: {out['machine']['gpu'] or out['machine']['cpu']}")
    print(f"{'method':<11} {'step (ms)':>10} {'CPU (ms)':>9} {'tokens/s':>9} {'peak (MiB)':>11}")
    for m in METHODS:
        r = out["methods"].get(m, {})
        if "error" in r:
            print(f"{m:<11} {r['error']}")
        elif r:
            print(f"{m:<11} {1000 * r['step_s']:>10.1f} {1000 * r['cpu_s']:>9.1f} {r['tokens_per_s']:>9.0f} "
                  f"{r['peak_mib']:>11.1f}")
    for k, v in out["ratios"].items():
        if v is not None:
            print(f"{k}: {v:.3f}")
    if "path" in out["methods"].get("vqa_grpo", {}):
        print(f"vqa_grpo path: {out['methods']['vqa_grpo']['path']}")


def sweep(base: Settings, sizes=(112, 224, 448), groups=(4, 8, 16), methods=METHODS) -> list[dict]:
    rows = []
    for size in sizes:
        for g in groups:
            out = measure(dataclasses.replace(base, image_size=size, group_size=g), methods)
            rows.append(out)
            print(_sweep_row(out), flush=True)
    return rows


SWEEP_HEADER = (
    "| image px (tokens) | G | vqa-grpo (ms) | TRL (ms) | seed loop (ms) | limit (ms) | TRL / vqa-grpo | vqa-grpo / limit |\n"
    "|---|---|---|---|---|---|---|---|"
)


def _sweep_row(out: dict) -> str:
    s = out["settings"]

    def ms(v):
        return f"{1000 * v:.0f}" if v else "n/a"

    ours, trl_s, limit = out["vqa_grpo_step_s"], out["trl_step_s"], out["limit_step_s"]
    return (f"| {s['image_size']} ({s['image_tokens']}) | {s['group_size']} | {ms(ours)} | {ms(trl_s)} | "
            f"{ms(out['seed_loop_step_s'])} | {ms(limit)} | "
            f"{trl_s / ours:.1f}x | {ours / limit:.2f}x |" if ours and trl_s and limit else "| n/a |")


def _ints(text: str, flag: str) -> tuple[int, ...]:
    try:
        return tuple(int(x) for x in text.split(",") if x)
    except ValueError:
        raise SystemExit(f"{flag} {text}: give whole numbers separated by commas, e.g. {flag} 4,8") from None


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for f in dataclasses.fields(Settings):
        p.add_argument("--" + f.name.replace("_", "-"), type=type(f.default), default=f.default)
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--sweep", action="store_true", help="G in 4, 8, 16 x images of 112, 224, 448 px: a markdown table")
    p.add_argument("--methods", default=None, help="comma-separated subset of " + ", ".join(METHODS)
                   + " (default: all but plain; with --model phi3-v: " + ", ".join(PHI3_V_METHODS) + ")")
    p.add_argument("--sizes", default="112,224,448", help="--sweep: image sizes (px), comma-separated")
    p.add_argument("--groups", default="4,8,16", help="--sweep: group sizes G, comma-separated")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--settings", help=argparse.SUPPRESS)
    p.add_argument("--model-dir", help=argparse.SUPPRESS)
    p.add_argument("--data-dir", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.worker:
        worker(a.worker, Settings(**json.loads(a.settings)), Path(a.model_dir), Path(a.data_dir))
        return
    s = Settings(**{f.name: getattr(a, f.name) for f in dataclasses.fields(Settings)})
    if s.steps < 1 or s.warmup < 0:
        raise SystemExit("--steps must be >= 1 and --warmup >= 0")
    default = PHI3_V_METHODS if s.model.startswith("phi3-v") else METHODS[:4]
    methods = tuple(m for m in a.methods.split(",") if m) if a.methods else default
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise SystemExit(f"--methods: unknown {unknown[0]}; choose from {', '.join(METHODS)}")
    if a.sweep:
        print(SWEEP_HEADER, flush=True)
        rows = sweep(s, _ints(a.sizes, "--sizes"), _ints(a.groups, "--groups"), methods)
        if a.json:
            print(json.dumps(rows))
        return
    out = measure(s, methods)
    if a.json:
        print(json.dumps(out))
    else:
        print_table(out)


if __name__ == "__main__":
    main()
