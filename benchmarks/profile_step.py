"""Where one vqa-grpo GRPO step spends its time: rollout, loss + backward, optimiser, then one
step under torch.profiler (the top operators by host time; on CUDA also the device's busy time
and the number of kernel launches, which tell a launch-bound step from a compute-bound one).

Same model, data and settings as benchmarks/grpo_step.py (2 questions x G=8, 224 px, 8 tokens).

  OMP_NUM_THREADS=1 .venv/bin/python benchmarks/profile_step.py
  python benchmarks/profile_step.py --device cuda --model qwen2-vl-0.5b --dtype bf16
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
import grpo_step as bench  # noqa: E402


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--model", default="tiny", help="tiny, qwen2-vl-0.5b or a Qwen2-VL directory")
    p.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"])
    p.add_argument("--steps", type=int, default=8, help="timed steps after 2 warm-up steps")
    p.add_argument("--rows", type=int, default=25, help="operators to list")
    a = p.parse_args(argv)
    from vqa_grpo.config import ModelConfig, RewardConfig
    from vqa_grpo.grpo.plan import choose_plan
    from vqa_grpo.grpo.rollout import grpo_objective, make_rollout_and_prefill
    from vqa_grpo.models.loading import load_model

    torch.set_num_threads(1)
    torch.manual_seed(0)
    s = bench.Settings(model=a.model, device=a.device, dtype=a.dtype, steps=a.steps + 1)
    device = torch.device(a.device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    with tempfile.TemporaryDirectory(prefix="profile_step_") as tmp:
        model_dir, data_dir = bench.build_model(s, Path(tmp) / "model"), bench.build_data(s, Path(tmp) / "data")
        lm = load_model(ModelConfig(name_or_path=str(model_dir), dtype=a.dtype), device)
        lm.model.train()
        opt, grpo, reward = bench._optimizer(lm.model), bench._grpo_cfg(s, "auto"), RewardConfig()
        plan, steps = choose_plan(lm.model, lm.adapter, grpo), bench.load_examples(s, data_dir)

        def step(i: int) -> list[float]:
            examples, images = steps[i]
            t = [time.perf_counter()]
            ro, prefill = make_rollout_and_prefill(
                lm.model, lm.adapter, lm.processor, examples, images, grpo, reward, device, plan
            )
            sync(), t.append(time.perf_counter())
            loss, _ = grpo_objective(lm.model, lm.adapter, lm.processor, ro, grpo, prefix=prefill)
            loss.backward()
            sync(), t.append(time.perf_counter())
            opt.step()
            opt.zero_grad(set_to_none=True)
            sync(), t.append(time.perf_counter())
            return [1000 * (b - a) for a, b in zip(t, t[1:])]

        phases = [step(i) for i in range(2 + a.steps)][2:]
        median = [statistics.median(x[k] for x in phases) for k in range(3)]
        print(
            f"median of {a.steps} steps (ms): rollout {median[0]:.1f}, loss + backward {median[1]:.1f}, "
            f"optimiser {median[2]:.1f}, total {sum(median):.1f}"
        )
        from torch.profiler import ProfilerActivity, profile

        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
        with profile(activities=activities) as prof:
            step(2 + a.steps)
        events = prof.key_averages()
        print(events.table(sort_by="self_cpu_time_total", row_limit=a.rows, max_name_column_width=50))
        if device.type == "cuda":
            from torch.autograd import DeviceType

            # The device's own events (kernels, copies) only: a CPU operator's device time is its kernels'.
            busy = sum(e.self_device_time_total for e in events if e.device_type == DeviceType.CUDA) / 1000
            launches = sum(
                e.count for e in events if e.key in ("cudaLaunchKernel", "cuLaunchKernel", "cuLaunchKernelEx")
            )
            print(f"profiled step: device busy {busy:.1f} ms; {launches} kernel launches")


if __name__ == "__main__":
    main()
