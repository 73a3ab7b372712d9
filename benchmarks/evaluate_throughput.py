"""Throughput of ``vqa-grpo evaluate`` with the tiny model on one CPU core (the target: >= 200
questions per second on 2,000 questions).

    OMP_NUM_THREADS=1 python benchmarks/evaluate_throughput.py [--n 2000] [--batch-size 64]
        [--max-new-tokens 16] [--repeat 2] [--check]

Builds the synthetic set (``--n`` questions, seed 0) and the tiny Qwen2-VL (seed 0) in a temporary
directory, then times calls of ``evaluate`` (the function behind the command) on all of it: model
loading, image decoding and prompt encoding, batched greedy generation, scoring (the semantic
metric too when its extra is installed), the bootstrap intervals, and writing predictions.jsonl
and metrics.json. The first call is cold: it also pays the one-off imports and the loading of the
semantic model (a few seconds whatever the number of questions). The ``--repeat`` calls after it
are warm; the best of them is the throughput figure. The untrained tiny model never emits its stop
token, so every answer runs to ``--max-new-tokens``: the worst case for that setting.

The process is pinned to one core and torch to one thread. Beside each wall-clock figure the rate
per CPU second of the process is printed: on a busy machine the two differ. ``--check`` exits 1
when the warm wall-clock rate is under the target.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

TARGET = 200.0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=2000, help="questions (default: 2000)")
    parser.add_argument("--batch-size", type=int, default=64, help="eval.batch_size (default: 64)")
    parser.add_argument(
        "--max-new-tokens", type=int, default=16, help="eval.max_new_tokens (default: 16, the config default)"
    )
    parser.add_argument("--repeat", type=int, default=2, help="timed warm calls after the cold one (default: 2)")
    parser.add_argument("--check", action="store_true", help=f"exit 1 below {TARGET:.0f} questions/s")
    args = parser.parse_args()
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})
    os.environ.setdefault("OMP_NUM_THREADS", "1")

    import torch
    import transformers

    from vqa_grpo.config_load import load_config
    from vqa_grpo.data.loader import load_examples
    from vqa_grpo.data.synthetic import synthesize
    from vqa_grpo.evaluation.evaluate import evaluate
    from vqa_grpo.models.tiny import build_tiny
    from vqa_grpo.rewards.semantic import semantic_available

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        data = synthesize(Path(tmp) / "data", n=args.n, seed=0).parent
        model = build_tiny("qwen2_vl", Path(tmp) / "model", seed=0)
        overrides = [
            "train.device=cpu",
            "train.cpu_threads=1",
            "train.progress=false",
            f"eval.batch_size={args.batch_size}",
            f"eval.max_new_tokens={args.max_new_tokens}",
        ]
        cfg = load_config(None, overrides)
        examples, _ = load_examples(str(data), cfg.data)
        runs = []  # (wall seconds, CPU seconds) per evaluate call; the first one is cold
        for _ in range(1 + args.repeat):
            start, cpu_start = time.perf_counter(), time.process_time()
            metrics = evaluate(str(model), examples, cfg, Path(tmp) / "eval")
            runs.append((time.perf_counter() - start, time.process_time() - cpu_start))
    n = metrics["n"]
    cold, warm = runs[0], min(runs[1:] or runs)
    rate = n / warm[0]
    print(
        f"python {sys.version.split()[0]}, torch {torch.__version__}, transformers {transformers.__version__}; "
        f"one core, one thread; semantic metric {'on' if semantic_available() else 'off'}"
    )
    print(f"same as: vqa-grpo evaluate --model TINY --data SYNTH_{args.n} --out DIR {' '.join(overrides)}")
    print(f"{n} questions, batch {args.batch_size}, {args.max_new_tokens} new tokens per answer")
    cold_label = "cold (first call: imports, model and semantic-model loading):"
    warm_label = f"warm (best of {len(runs) - 1 or 1}):"
    width = max(len(cold_label), len(warm_label))
    print(f"{cold_label:<{width}} {cold[0]:6.2f} s, {n / cold[0]:5.0f} questions/s")
    print(
        f"{warm_label:<{width}} {warm[0]:6.2f} s, {rate:5.0f} questions/s ({n / warm[1]:.0f} per CPU second of this "
        "process)"
    )
    print(f"target {TARGET:.0f} questions/s (warm): {'met' if rate >= TARGET else 'NOT met'}")
    return 1 if args.check and rate < TARGET else 0


if __name__ == "__main__":
    raise SystemExit(main())
