"""One GRPO step: vqa-grpo against TRL's GRPOTrainer, the seed's sequential loop, and the limit.

A step is B questions x G sampled completions, their rewards, the loss's forward and backward
passes and the optimiser step. Four ways to spend it, on the same model and the same questions
(in the same order), each in its own worker process. The workers take their steps in turns
(step 1 of each method, then step 2 of each, ...), so that a change in the machine's load
during the run (a shared machine) falls on every method alike:

- vqa_grpo:  ``make_rollout_and_prefill`` (sampling, rewards, advantages) on the plan
             ``choose_plan`` picks, + ``grpo_objective`` + backward + AdamW step (the library's step;
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
(the limit: B*G*max_new_tokens). ``--images-per-question N``: each question shows N images,
all before its text (TRL: a row's ``images`` list and N image entries in its prompt). Peak memory
is the process's peak resident memory during the measured steps above its resident memory before
them (the CUDA allocator's peak with --device cuda).

  OMP_NUM_THREADS=1 .venv/bin/python benchmarks/grpo_step.py            # G=8, 224 px, 2 questions
  OMP_NUM_THREADS=1 .venv/bin/python benchmarks/grpo_step.py --json     # one JSON object
  OMP_NUM_THREADS=1 .venv/bin/python benchmarks/grpo_step.py --sweep    # G 4/8/16 x 112/224/448 px
  OMP_NUM_THREADS=1 .venv/bin/python benchmarks/grpo_step.py --images-per-question 2 --json  # 2 images each
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
from pathlib import Path

from step_setup import (  # noqa: F401  Settings, build_model, build_data, ...: imported from here too (profile_step.py)
    MARK,
    METHODS,
    PHI3_V_METHODS,
    Meter,
    Settings,
    _grpo_cfg,
    _optimizer,
    build_data,
    build_model,
    drive,
    load_examples,
    say,
)


def worker(method: str, s: Settings, model_dir: Path, data_dir: Path) -> None:
    import torch

    torch.set_num_threads(s.threads)
    if not s.cudnn_attention:
        torch.backends.cuda.enable_cudnn_sdp(False)
    torch.manual_seed(s.seed)
    from step_methods import RUNNERS

    say(RUNNERS[method](s, model_dir, data_dir, torch.device(s.device)))


# ----------------------------------------------------------------------------------------------
# The parent: build once, run each method in a fresh process, report.


def measure(s: Settings, methods=METHODS, fork: bool = False) -> dict:
    """Build the model and data once, start a worker per method, take the steps in turns
    (``fork``: workers forked from this process, see ``--fork-workers``)."""
    with tempfile.TemporaryDirectory(prefix="grpo_step_") as tmp:
        model_dir, data_dir = build_model(s, Path(tmp) / "model"), build_data(s, Path(tmp) / "data")
        start = ForkedWorker if fork else Worker
        workers = {m: start(m, s, model_dir, data_dir, Path(tmp)) for m in methods}
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
            results[m] = {
                "step_s": step,
                "cpu_s": statistics.median(cpu[m][s.warmup :]),
                "tokens_per_s": tokens / step,
                **final,
                "step_s_all": measured,
            }
        return report(s, results, model_dir)


class Worker:
    """One method in its own process, driven a step at a time over stdin/stdout."""

    def __init__(self, method: str, s: Settings, model_dir: Path, data_dir: Path, tmp: Path):
        cmd = [
            sys.executable,
            __file__,
            "--worker",
            method,
            "--settings",
            json.dumps(dataclasses.asdict(s)),
            "--model-dir",
            str(model_dir),
            "--data-dir",
            str(data_dir),
        ]
        env = {**os.environ, "OMP_NUM_THREADS": str(s.threads), "TOKENIZERS_PARALLELISM": "false"}
        self.stderr_path = tmp / f"{method}.stderr"
        self.proc = subprocess.Popen(
            cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env, stderr=self.stderr_path.open("w")
        )
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


class ForkedWorker(Worker):
    """A Worker forked from this process rather than a fresh interpreter (``--fork-workers``)."""

    def __init__(self, method: str, s: Settings, model_dir: Path, data_dir: Path, tmp: Path):
        from forked import fork_child

        self.stderr_path, self.error = tmp / f"{method}.stderr", None
        env = {"OMP_NUM_THREADS": str(s.threads), "TOKENIZERS_PARALLELISM": "false"}
        self.proc = fork_child(lambda: worker(method, s, model_dir, data_dir), self.stderr_path, env)


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
    out.update(
        {
            "settings": {
                **dataclasses.asdict(s),
                "image_tokens": _image_tokens(model_dir, s.image_size),
                "model_parameters": _count_parameters(model_dir),
            },
            "methods": results,
            "machine": {
                "cpu": _cpu_name(),
                "cores": os.cpu_count(),
                "torch": torch.__version__,
                "gpu": torch.cuda.get_device_name(0) if s.device == "cuda" else None,
                "python": platform.python_version(),
            },
            "model_type": cfg.model_type,
        }
    )
    out["ratios"] = {  # wall-clock medians; *_cpu: the same with each step's process CPU time
        f"vqa_grpo_over_{m}{suffix}": ratio("vqa_grpo", m, key)
        for suffix, key in (("", "step_s"), ("_cpu", "cpu_s"))
        for m in ("trl", "limit", "seed_loop", "plain")
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
    print(
        f"GRPO step: {s['questions']} questions x G={s['group_size']}, {s['images_per_question']} image(s) of "
        f"{s['image_size']} px each ({s['image_tokens']} image tokens each), <= {s['max_new_tokens']} new tokens, "
        f"{s['dtype']} on {s['device']}, "
        f"{s['threads']} thread(s); median of {s['steps']} steps after {s['warmup']} warm-up"
    )
    print(
        f"model: {out['model_type']} ({s['model']}, {s['model_parameters']:,} parameters); "
        f"machine: {out['machine']['gpu'] or out['machine']['cpu']}"
    )
    print(f"{'method':<11} {'step (ms)':>10} {'CPU (ms)':>9} {'tokens/s':>9} {'peak (MiB)':>11}")
    for m in METHODS:
        r = out["methods"].get(m, {})
        if "error" in r:
            print(f"{m:<11} {r['error']}")
        elif r:
            print(
                f"{m:<11} {1000 * r['step_s']:>10.1f} {1000 * r['cpu_s']:>9.1f} {r['tokens_per_s']:>9.0f} "
                f"{r['peak_mib']:>11.1f}"
            )
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
    "| image px (tokens) | G | vqa-grpo (ms) | TRL (ms) | seed loop (ms) | limit (ms) "
    "| TRL / vqa-grpo | vqa-grpo / limit |\n"
    "|---|---|---|---|---|---|---|---|"
)


def _sweep_row(out: dict) -> str:
    s = out["settings"]

    def ms(v):
        return f"{1000 * v:.0f}" if v else "n/a"

    ours, trl_s, limit = out["vqa_grpo_step_s"], out["trl_step_s"], out["limit_step_s"]
    return (
        f"| {s['image_size']} ({s['image_tokens']}) | {s['group_size']} | {ms(ours)} | {ms(trl_s)} | "
        f"{ms(out['seed_loop_step_s'])} | {ms(limit)} | "
        f"{trl_s / ours:.1f}x | {ours / limit:.2f}x |"
        if ours and trl_s and limit
        else "| n/a |"
    )


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
    p.add_argument(
        "--methods",
        default=None,
        help="comma-separated subset of "
        + ", ".join(METHODS)
        + " (default: all but plain; with --model phi3-v: "
        + ", ".join(PHI3_V_METHODS)
        + ")",
    )
    p.add_argument("--sizes", default="112,224,448", help="--sweep: image sizes (px), comma-separated")
    p.add_argument("--groups", default="4,8,16", help="--sweep: group sizes G, comma-separated")
    p.add_argument(
        "--fork-workers",
        action="store_true",
        help="fork the workers from this process instead of fresh interpreters: quicker to start, "
        "for tests; their peak memory then counts this process's too",
    )
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
    if s.images_per_question < 1:
        raise SystemExit(f"--images-per-question {s.images_per_question}: give 1 or more")
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
    out = measure(s, methods, fork=a.fork_workers)
    if a.json:
        print(json.dumps(out))
    else:
        print_table(out)


if __name__ == "__main__":
    main()
