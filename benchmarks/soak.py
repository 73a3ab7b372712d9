"""A long GRPO run on the tiny model, to see whether memory grows: resident memory (and CUDA memory
on a device) every ``--every`` steps, with evaluation and checkpoints on as in a real run.

The run is ``vqa_grpo.training.loop.run`` itself: the tiny Qwen2-VL of ``vqa-grpo model tiny``, 200
synthetic questions at 112 px, 2 questions x G=4 (``--num-generations``), 8 new tokens
(``--max-new-tokens``), a checkpoint every ``--save-steps`` and an evaluation on 16 held-out
questions every ``--eval-steps`` (the first evaluation loads the semantic-similarity model once, so
it belongs in the warm-up). The figures are the ``rss_mib`` (``cuda_allocated_mib``) that every
logged step of metrics.jsonl carries. ``growth_after_warmup`` is (the largest figure after the
warm-up - the figure at the end of the warm-up) / the latter.

  OMP_NUM_THREADS=1 .venv/bin/python benchmarks/soak.py                 # 2,000 steps, warm-up 200
  OMP_NUM_THREADS=1 .venv/bin/python benchmarks/soak.py --steps 300 --warmup 100 --every 50 --json
  OMP_NUM_THREADS=1 .venv/bin/python benchmarks/soak.py --steps 700 --tracemalloc  # what grew, by line
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path


def growth_after_warmup(steps: list[int], values: list[float], warmup: int) -> float:
    """(max of the values after ``warmup`` - the value at ``warmup``) / the value at ``warmup``."""
    at = next((i for i, s in enumerate(steps) if s >= warmup), None)
    if at is None or at == len(values) - 1:
        raise ValueError(f"no figure after the warm-up of {warmup} steps: run more steps than --warmup")
    ref = values[at]
    return (max(values[at + 1 :]) - ref) / ref


def overrides(model: Path, data: Path, out: Path, args) -> list[str]:
    return [
        f"model.name_or_path={model}",
        f"data.path={data}",
        f"train.output_dir={out}",
        f"train.device={args.device}",
        "train.cpu_threads=1",
        "train.progress=false",
        "train.report_to=none",
        f"train.max_steps={args.steps}",
        f"train.logging_steps={args.every}",
        f"train.save_steps={args.save_steps}",
        "train.save_total_limit=2",
        f"train.eval_steps={args.eval_steps}",
        "data.eval_fraction=0.1",
        "data.max_eval_samples=16",
        "train.per_device_batch_size=2",
        "train.learning_rate=1e-5",
        f"grpo.num_generations={args.num_generations}",
        f"grpo.max_completion_length={args.max_new_tokens}",
        f"eval.max_new_tokens={args.max_new_tokens}",
    ]


def follow(path: Path, stop: threading.Event) -> None:
    """Print each logged step's memory as the run writes it."""
    seen = 0
    while not stop.is_set() or seen < (len(path.read_text().splitlines()) if path.is_file() else 0):
        lines = path.read_text().splitlines() if path.is_file() else []
        for line in lines[seen:]:
            r = json.loads(line)
            if "rss_mib" in r:
                cuda = f", cuda {r['cuda_allocated_mib']:.1f} MiB" if "cuda_allocated_mib" in r else ""
                print(f"step {r['step']:>6}: rss {r['rss_mib']:.1f} MiB{cuda}", flush=True)
        seen = len(lines)
        time.sleep(0.2)


def trace_growth(first: int, last: int, top: int = 12) -> None:
    """Snapshot Python's allocations when step ``first`` and step ``last`` are logged, and print the
    source lines whose allocations grew most in between (tracemalloc slows the run down)."""
    import gc
    import tracemalloc

    from vqa_grpo.training import reporting

    real, snaps = reporting.Reporter.log, {}

    def log(self, record: dict) -> None:
        real(self, record)
        if "loss" in record and record.get("step") in (first, last):
            gc.collect()
            snaps[record["step"]] = tracemalloc.take_snapshot()
            if record["step"] == last:
                for stat in snaps[last].compare_to(snaps[first], "lineno")[:top]:
                    print(f"tracemalloc {stat}", flush=True)

    reporting.Reporter.log = log
    tracemalloc.start(1)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--warmup", type=int, default=200, help="steps before the reference figure")
    ap.add_argument("--every", type=int, default=100, help="log (and print) memory every this many steps")
    ap.add_argument("--save-steps", type=int, default=100)
    ap.add_argument("--eval-steps", type=int, default=100)
    ap.add_argument("--num-generations", type=int, default=4, help="G")
    ap.add_argument("--max-new-tokens", type=int, default=8)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--json", action="store_true", help="end with one JSON object of the figures")
    ap.add_argument(
        "--tracemalloc", action="store_true", help="print the Python allocations that grew after the warm-up"
    )
    args = ap.parse_args(argv)
    if args.warmup >= args.steps:
        ap.error(f"--warmup {args.warmup} must be below --steps {args.steps}")

    commit = _commit()  # the code this process runs, read before the run
    from vqa_grpo.config_load import load_config
    from vqa_grpo.data.synthetic import synthesize
    from vqa_grpo.models.tiny import build_tiny
    from vqa_grpo.training import loop

    with tempfile.TemporaryDirectory(prefix="soak-") as tmp:
        tmp = Path(tmp)
        data = synthesize(tmp / "data", n=200, seed=0).parent
        model = build_tiny("qwen2_vl", tmp / "model", seed=0)
        out = tmp / "run"
        stop = threading.Event()
        printer = threading.Thread(target=follow, args=(out / "metrics.jsonl", stop), daemon=True)
        printer.start()
        if args.tracemalloc:
            trace_growth(args.warmup, args.steps)
        t0 = time.time()
        loop.run(load_config(None, overrides(model, data, out, args)), "grpo", desc="soak")
        seconds = time.time() - t0
        stop.set()
        printer.join()
        records = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    logged = [r for r in records if "rss_mib" in r]
    steps = [r["step"] for r in logged]
    rss = [round(r["rss_mib"], 1) for r in logged]
    result = {
        "steps": args.steps,
        "warmup": args.warmup,
        "every": args.every,
        "logged_steps": steps,
        "rss_mib": rss,
        "growth_after_warmup": round(growth_after_warmup(steps, rss, args.warmup), 4),
        "seconds": round(seconds, 1),
        "commit": commit,
    }
    if any("cuda_allocated_mib" in r for r in logged):
        cuda = [round(r["cuda_allocated_mib"], 1) for r in logged]
        result["cuda_allocated_mib"] = cuda
        result["cuda_growth_after_warmup"] = round(growth_after_warmup(steps, cuda, args.warmup), 4)
    print(
        f"{args.steps} steps in {seconds:.0f} s; resident memory after the {args.warmup}-step warm-up grew by "
        f"{100 * result['growth_after_warmup']:.1f}%"
    )
    if args.json:
        print(json.dumps(result))
    return 0


def _commit() -> str:
    try:
        return subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=Path(__file__).parent
        ).stdout.strip()
    except OSError:
        return ""


if __name__ == "__main__":
    sys.exit(main())
