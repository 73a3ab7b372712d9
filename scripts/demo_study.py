"""The GRPO-vs-SFT study of docs/demo.md: many plain ``vqa-grpo demo`` runs, then one table.

    .venv/bin/python scripts/demo_study.py --out study                  # every run, seeds 0-2
    .venv/bin/python scripts/demo_study.py --out study --grid data --seeds 0
    .venv/bin/python scripts/demo_study.py --out study --table-only     # the table of what exists

Each run is its own process writing ``OUT/<run>/seed<S>/`` (its output in ``seed<S>.log`` beside);
one whose summary.json exists is skipped, so an interrupted study resumes where it stopped and runs
never share state; a run that fails is named at the end and the others go on. The table
gives, per run, the mean over its seeds and then each seed: VQA accuracy on the held-out and on the
out-of-distribution questions (base / GRPO / SFT), recognised, GRPO's sampled completions and the
wall time.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import yaml

PLAIN = "grpo.dynamic_sampling=false"  # the demo's GRPO stage before dynamic sampling was its default
GRIDS: dict[str, dict[str, list[str]]] = {
    "ablation": {
        "plain": [PLAIN],
        "dynamic": [],
        "prioritized": [PLAIN, "grpo.prioritized_sampling=true"],
        "gspo": [PLAIN, "grpo.importance_sampling_level=sequence"],
        "cispo": [PLAIN, "grpo.loss_type=cispo"],
        "sapo": [PLAIN, "grpo.loss_type=sapo"],
        "top_entropy_0.2": [PLAIN, "grpo.top_entropy_quantile=0.2"],
        "vqa_only": [PLAIN, "reward.components=[vqa_accuracy]", "reward.weights=[1.0]"],
    },
    "data": {f"train{n}": ["--train-questions", str(n), PLAIN] for n in (50, 200, 1000)},
}
"""Run name -> the arguments after ``vqa-grpo demo --out DIR --seed S``: each variant against the plain
GRPO stage (the demo's defaults but dynamic sampling), which docs/demo.md's study measured."""
STAGES = ("warm_start", "grpo", "sft_same_budget")


def run_all(out: Path, grids: list[str], seeds: list[int]) -> None:
    demo = [sys.executable, "-c", "import sys; from vqa_grpo.cli import main; sys.exit(main())", "demo"]
    failed = []
    for grid in grids:
        for name, extra in GRIDS[grid].items():
            for seed in seeds:
                run_dir = out / name / f"seed{seed}"
                if (run_dir / "summary.json").is_file():
                    print(f"{run_dir}: done already, skipped")
                    continue
                command = [*demo, "--out", str(run_dir), "--seed", str(seed), *extra]
                print("running", " ".join(command[3:]), flush=True)
                log = out / name / f"seed{seed}.log"  # beside the run: the demo rebuilds its folder's stages
                log.parent.mkdir(parents=True, exist_ok=True)
                with log.open("w") as f:
                    code = subprocess.run(command, stdout=f, stderr=subprocess.STDOUT).returncode
                if code:
                    failed.append(f"{name} seed {seed} (exit {code}, {log})")
    if failed:  # the other runs went on: one bad setting does not stop the study
        print("failed:", "; ".join(failed))


def completions(run_dir: Path, summary: dict) -> int:
    """Completions GRPO sampled: G x the groups drawn (dynamic sampling logs its draws)."""
    config = yaml.safe_load((run_dir / "grpo" / "config.yaml").read_text())
    g, batch = config["grpo"]["num_generations"], config["train"]["per_device_batch_size"]
    rows = [json.loads(x) for x in (run_dir / "grpo" / "metrics.jsonl").read_text().splitlines()]
    drawn = [r["dynamic/groups_sampled"] for r in rows if "dynamic/groups_sampled" in r]
    return g * (sum(drawn) if drawn else summary["rl_steps"] * batch)


def _row(label: str, values: list[dict]) -> str:
    mean = lambda key: sum(v[key] for v in values) / len(values)  # noqa: E731
    three = lambda key: " / ".join(f"{mean(f'{key}_{s}'):.3f}" for s in STAGES)  # noqa: E731
    return (
        f"{label:<24} {three('accuracy'):>23} {three('accuracy_ood'):>23} {three('recognised'):>23} "
        f"{mean('completions'):>11.0f} {mean('wall_seconds'):>6.0f}"
    )


def table(out: Path, grids: list[str]) -> str:
    head = (
        f"{'run':<24} {'accuracy base/GRPO/SFT':>23} {'OOD accuracy':>23} {'recognised':>23} "
        f"{'completions':>11} {'wall s':>6}"
    )
    lines = [head, "-" * len(head)]
    for grid in grids:
        for name in GRIDS[grid]:
            found = []
            for run_dir in sorted((out / name).glob("seed*")):
                if (run_dir / "summary.json").is_file():
                    summary = json.loads((run_dir / "summary.json").read_text())
                    found.append((run_dir.name, {**summary, "completions": completions(run_dir, summary)}))
            if not found:
                lines.append(f"{name:<24} (no finished run)")
                continue
            lines.append(_row(f"{name} (mean of {len(found)})", [s for _, s in found]))
            lines += [_row(f"  {seed}", [s]) for seed, s in found]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, help="the study's folder: one subfolder per run and seed")
    p.add_argument("--seeds", default="0,1,2", help="comma-separated seeds (default: 0,1,2)")
    p.add_argument("--grid", default="ablation,data", help="grids to run, of ablation,data (default: both)")
    p.add_argument("--table-only", action="store_true", help="print the table of the finished runs, run nothing")
    args = p.parse_args(argv)
    grids = args.grid.split(",")
    if set(grids) - set(GRIDS):
        p.error(f"--grid: unknown {sorted(set(grids) - set(GRIDS))}; choose from {','.join(GRIDS)}")
    try:
        seeds = [int(s) for s in args.seeds.split(",")]
    except ValueError:
        p.error(f"--seeds: give comma-separated integers, e.g. 0,1,2, not {args.seeds!r}")
    if not args.table_only:
        run_all(Path(args.out), grids, seeds)
    print(table(Path(args.out), grids))
    return 0


if __name__ == "__main__":
    sys.exit(main())
