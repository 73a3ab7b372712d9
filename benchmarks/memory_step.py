"""Peak memory and time of one GRPO step at reasoning-length completions: vqa-grpo against TRL.

The model has Qwen2.5-VL-3B's vocabulary (151,936) and hidden size (2,048, tied embeddings), one
decoder layer and a two-block vision tower (random weights, built offline, ``--dtype``); one
question on a 112 px image, G = 8 completions of exactly C tokens for C in ``--sizes``: the sampler
is replaced on both sides by the same fixed word tokens (decoding thousands of tokens over a
151,936-word head takes an hour on a CPU, and sampling holds no gradient).

A step: the forward pass over prompt and completions with gradient, the loss (DAPO's, beta = 0, every
weight trained) and its backward pass, up to the optimiser (AdamW's step is the same for all and
left out). For TRL that is its step from ``on_step_begin`` to ``on_pre_optimizer_step``. Methods,
each (with each size) in its own process:

- vqa_grpo:    the library's loss on the shared prefix, log-probs and entropies from the last hidden
               states ``--chunk`` positions at a time (grpo.logprob_chunk_size, models/scoring.py);
- full_logits: the same loss with the full [R, C, V] logits, as vqa-grpo computed it before
               the chunked pass (``completion_logits`` then ``token_logprobs``, ``token_entropy``);
- trl:         TRL's GRPOTrainer (``pip install vqa-grpo[bench]``) with its fused LM head.

Peak memory: torch's CPU allocations in the step as torch.profiler records them (profile_memory),
the running sum of what the step allocates and frees at its highest (weights and inputs, allocated
before, are not in it; tests/grpo/test_benchmark_memory_step.py checks it), not resident memory.
A run estimated above the memory available (``--max-gib``), or failing, is skipped and said so (in
``skipped``; its keys in ``sizes`` null).

  .venv/bin/python benchmarks/memory_step.py                       # C = 256, 1,024, 4,096
  .venv/bin/python benchmarks/memory_step.py --sizes 256 --json    # the last line: one JSON object
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

MARK = "@@memory_step "
METHODS = ("vqa_grpo", "full_logits", "trl")
MIB = 2**20


@dataclasses.dataclass
class Settings:
    group_size: int = 8
    vocab: int = 151936
    hidden: int = 2048
    layers: int = 1
    chunk: int = 256
    dtype: str = "bf16"
    lora: bool = False
    threads: int = 2
    seed: int = 0


# ---- measuring -------------------------------------------------------------------------------------


class Meter:
    """Within it, torch's CPU allocations as torch.profiler records them: ``peak`` (bytes), the
    running sum of the allocations made inside and their frees at its highest (the profiler does
    not see a block allocated before being freed), and ``secs``, the wall time inside."""

    def __enter__(self):
        from torch.profiler import ProfilerActivity, profile

        self.prof = profile(activities=[ProfilerActivity.CPU], profile_memory=True)
        self.prof.__enter__()
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.secs = time.perf_counter() - self.t0
        self.prof.__exit__(*exc)
        events = self.prof.profiler.kineto_results.events()
        live = self.peak = 0
        for _, nbytes in sorted((e.start_ns(), e.nbytes()) for e in events if e.name() == "[memory]"):
            live += nbytes  # an allocation is positive, a free negative
            self.peak = max(self.peak, live)


# ---- the model and the inputs -------------------------------------------------------------------


def build_model(s: Settings, out: Path) -> Path:
    """Qwen2.5-VL-3B's text and vision dimensions with ``s``'s vocabulary, hidden size and layers."""
    import gpu_sizes

    spec = gpu_sizes.QWEN2_5_VL["qwen2.5-vl-3b"]
    text = {**spec["text"], "vocab_size": s.vocab, "num_hidden_layers": 32 * s.layers}
    if s.hidden != text["hidden_size"]:  # a smaller stand-in: 128-wide heads, the 3B's MLP ratio
        heads = max(1, s.hidden // 128)
        text.update(hidden_size=s.hidden, num_attention_heads=heads, num_key_value_heads=max(1, heads // 8))
        text.update(intermediate_size=s.hidden * 11008 // 2048)
    vision = {**spec["vision"], "out_hidden_size": s.hidden}
    gpu_sizes.QWEN2_5_VL["memory-step"] = {"text": text, "vision": vision, "tie": True}
    return gpu_sizes.build_qwen2_5_vl("memory-step", out, seed=s.seed, shrink=32)  # 32 / 32: s.layers, 2 blocks


def question(s: Settings):
    """One question on a 112 px image (the synthetic set's first)."""
    from vqa_grpo.config import DataConfig
    from vqa_grpo.data.loader import load_vqa
    from vqa_grpo.data.synthetic import synthesize

    path = synthesize(Path(tempfile.mkdtemp(prefix="memory_step_")), n=2, seed=s.seed, image_size=112)
    example = sorted(load_vqa(DataConfig(path=str(path.parent), eval_fraction=0.0), seed=0).train, key=lambda e: e.id)[
        0
    ]
    return example, example.load_image()


def fixed_completions(tokenizer, s: Settings, C: int) -> list[list[int]]:
    """G completions of C word tokens (never a stop or special token), the same for every method."""
    import torch

    words = sorted(i for t, i in tokenizer.get_vocab().items() if t.isalpha() and i != tokenizer.eos_token_id)
    g = torch.Generator().manual_seed(s.seed)
    return torch.tensor(words)[torch.randint(len(words), (s.group_size, C), generator=g)].tolist()


# ---- the methods (each in its own worker process) -----------------------------------------------------


def run_vqa_grpo(s: Settings, model_dir: Path, C: int, full_logits: bool = False) -> dict:
    import torch

    from vqa_grpo.config import GRPOConfig, ModelConfig
    from vqa_grpo.data.prompts import user_texts
    from vqa_grpo.grpo.math import group_advantages
    from vqa_grpo.grpo.plan import choose_plan
    from vqa_grpo.grpo.rollout import Rollout, grpo_objective
    from vqa_grpo.models.loading import load_model

    if full_logits:
        use_full_logits()
    cpu = torch.device("cpu")
    lm = load_model(ModelConfig(name_or_path=str(model_dir), dtype=s.dtype, lora=s.lora), cpu)
    lm.model.train()
    G, R = s.group_size, s.group_size
    grpo = GRPOConfig(
        num_generations=G,
        max_completion_length=C,
        temperatures=[1.0],
        top_ps=[1.0],
        beta=0.0,
        loss_type="dapo",
        logprob_chunk_size=s.chunk,
    )
    example, image = question(s)
    prompts = lm.adapter.encode_prompts(lm.processor, [image], user_texts([example]))
    ids = torch.tensor(fixed_completions(lm.processor.tokenizer, s, C))  # [R, C]
    rewards = torch.arange(R, dtype=torch.float32) % 2  # half right: advantages +-1
    ro = Rollout(
        examples=[example],
        prompts=prompts,
        group_size=G,
        completion_ids=ids,
        completion_mask=torch.ones_like(ids),
        truncated=torch.ones(R, dtype=torch.bool),
        temperatures=torch.ones(R),
        sampling_logprobs=torch.zeros(ids.shape),
        answers=[""] * R,
        rewards=rewards,
        reward_parts={},
        advantages=group_advantages(rewards, G),
        plan=choose_plan(lm.model, lm.adapter, grpo),
    )

    def step():
        loss, _ = grpo_objective(lm.model, lm.adapter, lm.processor, ro, grpo)
        loss.backward()

    with Meter() as m:
        step()
    return {"peak_mib": m.peak / MIB, "step_s": m.secs, "path": ro.plan.describe()}


def use_full_logits() -> None:
    """Make the library's loss take its log-probs from the full [R, C, V] logits (the code before
    ``chunked_logprobs``, kept in models/scoring.py as the reference the tests compare with)."""
    from vqa_grpo.grpo import rollout
    from vqa_grpo.models import scoring

    def full(model, adapter, prompts, ids, mask, plan, temperatures=None, *, with_entropy=True, **kw):
        kw.pop("chunk_size", None)
        logits = scoring.completion_logits(model, adapter, prompts, ids, mask, plan, **kw)  # [R, C, V]
        logp = scoring.token_logprobs(logits, ids, temperatures)
        return logp, scoring.token_entropy(logits, temperatures) if with_entropy else None

    rollout.completion_logprobs = full


def run_trl(s: Settings, model_dir: Path, C: int) -> dict:
    import torch
    import trl
    from datasets import Dataset
    from transformers import AutoModelForImageTextToText, AutoProcessor, TrainerCallback

    from vqa_grpo.data.prompts import user_text

    example, image = question(s)
    processor = AutoProcessor.from_pretrained(model_dir)
    completions = fixed_completions(processor.tokenizer, s, C)
    row = {
        "prompt": [
            {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": user_text(example.question)}]}
        ],
        "image": image,
    }
    result: dict = {}

    class Measure(TrainerCallback):
        """The profiler from the step's start to its optimiser step."""

        def on_step_begin(self, args, state, control, **kwargs):
            self.meter = Meter().__enter__()

        def on_pre_optimizer_step(self, args, state, control, **kwargs):
            self.meter.__exit__(None, None, None)
            result.update(peak_mib=self.meter.peak / MIB, step_s=self.meter.secs)

    args = trl.GRPOConfig(
        output_dir=tempfile.mkdtemp(prefix="trl_memory_"),
        per_device_train_batch_size=s.group_size,
        num_generations=s.group_size,
        max_completion_length=C,
        max_steps=1,
        beta=0.0,
        loss_type="dapo",
        learning_rate=1e-5,
        gradient_checkpointing=False,
        use_cpu=True,
        bf16=s.dtype == "bf16",
        report_to="none",
        save_strategy="no",
        disable_tqdm=True,
        dataloader_num_workers=0,
        seed=s.seed,
    )
    dtype = torch.bfloat16 if s.dtype == "bf16" else torch.float32
    model = AutoModelForImageTextToText.from_pretrained(model_dir, dtype=dtype)
    trainer = trl.GRPOTrainer(
        model=model,
        reward_funcs=lambda completions, **_: [float(i % 2) for i in range(len(completions))],
        args=args,
        train_dataset=Dataset.from_list([row] * s.group_size),
        processing_class=processor,
        callbacks=[Measure()],
    )
    # The sampler replaced: every row gets its fixed completion (TRL's generate returns ids per row).
    trainer._generate_single_turn = lambda prompt_ids, *a, **k: ([completions[i] for i in range(len(prompt_ids))], None)
    trainer.train()
    return {**result, "trl_version": trl.__version__}


RUNNERS = {
    "vqa_grpo": run_vqa_grpo,
    "full_logits": lambda s, d, C: run_vqa_grpo(s, d, C, full_logits=True),
    "trl": run_trl,
}


# ---- the parent: build once, one worker per method and size, report -----------------------------------


def check_meter() -> float:
    """The meter on a known allocation: 64 MiB, then 32 MiB more, 64 freed, 16 more: peak 96 MiB."""
    import torch

    def known():
        a = torch.empty(64 * MIB, dtype=torch.uint8)
        b = torch.empty(32 * MIB, dtype=torch.uint8)
        del a
        c = torch.empty(16 * MIB, dtype=torch.uint8)
        del b, c

    with Meter() as m:
        known()
    return m.peak / MIB


def run_worker(method: str, s: Settings, model_dir: Path, C: int, timeout: int, max_gib: float) -> dict:
    cmd = [sys.executable, __file__, "--worker", method, "--size", str(C), "--model-dir", str(model_dir)]
    cmd += ["--max-gib", str(max_gib), "--settings", json.dumps(dataclasses.asdict(s))]
    env = {**os.environ, "OMP_NUM_THREADS": str(s.threads), "TOKENIZERS_PARALLELISM": "false"}
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"over {timeout} s"}
    for line in done.stdout.splitlines():
        if line.startswith(MARK):
            return json.loads(line[len(MARK) :])
    tail = done.stderr.strip().splitlines()
    return {"error": tail[-1] if tail else f"worker exited with {done.returncode}"}


def estimate_gib(seen: list[tuple[int, float]], C: int) -> float:
    """The peak at C tokens on the line through the last two (size, MiB) measured, or through the
    origin and the only one."""
    (c0, p0), (c1, p1) = ([(0, 0.0)] + seen)[-2:]
    return (p1 + (p1 - p0) / (c1 - c0) * (C - c1)) / 1024


def available_gib() -> float:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) / 2**20
    return float("inf")


def measure(s: Settings, sizes: list[int], methods: list[str], max_gib: float, timeout: int, say) -> dict:
    out: dict = {"sizes": {}, "skipped": {}}
    with tempfile.TemporaryDirectory(prefix="memory_step_") as tmp:
        model_dir = build_model(s, Path(tmp) / "model")
        weights_gib = sum(f.stat().st_size for f in model_dir.glob("*.safetensors")) / 2**30
        last: dict[str, list[tuple[int, float]]] = {}  # method -> (size, peak MiB) of its runs
        for C in sizes:
            row = out["sizes"].setdefault(str(C), {})
            for m in methods:
                row[f"{m}_peak_mib"] = row[f"{m}_step_s"] = None  # null in the JSON where it is skipped
                if m in last:  # the peak grows about linearly with C: skip what cannot fit
                    need = estimate_gib(last[m], C) + 2 * weights_gib
                    if need > max_gib:
                        seen = ", ".join(f"{p / 1024:.1f} GiB at {c}" for c, p in last[m])
                        why = f"estimated {need:.0f} GiB (from {seen}) > {max_gib:.0f} GiB"
                        out["skipped"][f"{m}@{C}"] = why
                        say(f"{C:>6} {m:<12} skipped: {why}")
                        continue
                r = run_worker(m, s, model_dir, C, timeout, max_gib)
                if "error" in r:
                    out["skipped"][f"{m}@{C}"] = r["error"]
                    say(f"{C:>6} {m:<12} error: {r['error']}")
                    continue
                row[f"{m}_peak_mib"], row[f"{m}_step_s"] = r["peak_mib"], r["step_s"]
                row.update(
                    {k if k.startswith(m) else f"{m}_{k}": v for k, v in r.items() if k not in ("peak_mib", "step_s")}
                )
                last.setdefault(m, []).append((C, r["peak_mib"]))
                say(f"{C:>6} {m:<12} {r['peak_mib']:>10.0f} MiB {r['step_s']:>8.1f} s")
            ours, trl = row.get("vqa_grpo_peak_mib"), row.get("trl_peak_mib")
            row["vqa_grpo_over_trl_peak"] = ours / trl if ours and trl else None
    return out


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", default="256,1024,4096", help="completion lengths C, comma-separated")
    p.add_argument("--methods", default=",".join(METHODS))
    p.add_argument("--group-size", type=int, default=8)
    p.add_argument("--vocab", type=int, default=151936)
    p.add_argument("--hidden", type=int, default=2048)
    p.add_argument("--layers", type=int, default=1)
    p.add_argument("--chunk", type=int, default=256, help="vqa_grpo's grpo.logprob_chunk_size")
    p.add_argument("--dtype", default="bf16", choices=["bf16", "fp32"])
    p.add_argument("--lora", action="store_true", help="LoRA (r 16) for vqa_grpo and full_logits; TRL trains all")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--max-gib", type=float, default=None, help="skip runs estimated above this (default: available)")
    p.add_argument("--timeout", type=int, default=3600, help="seconds per run")
    p.add_argument("--json", action="store_true", help="the last line: one JSON object")
    for worker_arg in ("--worker", "--model-dir", "--settings", "--size"):  # the parent's call of a worker
        p.add_argument(worker_arg, type=int if worker_arg == "--size" else str, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.worker:
        import torch

        s = Settings(**json.loads(a.settings))
        if a.max_gib:  # a run that does not fit fails here, with an allocation error, not the machine
            limit = int((a.max_gib + 4) * 2**30)  # + the address space the libraries reserve
            resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
        torch.set_num_threads(s.threads)
        torch.manual_seed(s.seed)
        print(MARK + json.dumps(RUNNERS[a.worker](s, Path(a.model_dir), a.size)), flush=True)
        return
    s = Settings(a.group_size, a.vocab, a.hidden, a.layers, a.chunk, a.dtype, a.lora, a.threads)
    say = (lambda line: print(line, file=sys.stderr, flush=True)) if a.json else print
    check = check_meter()
    say(f"meter check: {check:.1f} MiB tracked for a known peak of 96 MiB")
    say(f"{'C':>6} {'method':<12} {'peak':>14} {'step':>10}")
    max_gib = a.max_gib if a.max_gib is not None else 0.9 * available_gib()
    sizes, methods = [int(x) for x in a.sizes.split(",")], a.methods.split(",")
    out = measure(s, sizes, methods, max_gib, a.timeout, say)
    import torch

    out.update(settings=dataclasses.asdict(s), meter_check_mib=check, max_gib=max_gib, torch=torch.__version__)
    for C, row in out["sizes"].items():
        say(f"C={C}: vqa_grpo / trl peak = {row['vqa_grpo_over_trl_peak'] or float('nan'):.3f}")
    if a.json:
        print(json.dumps(out))


if __name__ == "__main__":
    main()
