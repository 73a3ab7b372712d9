"""``vqa-grpo demo``: GRPO from a pretrained tiny base, beside the fair baseline, offline on a laptop CPU.

1. check the shipped base (``demo/base.py``): a tiny Qwen2-VL that sees the synthetic scenes and,
   like a chat VLM, often answers in a sentence ("There are 3 red objects.") where VQA wants "3";
2. synthesise the demo's CLEVR-like questions (the ``seed``), 20% held out;
3. GRPO from the base for ``RL_STEPS`` optimiser steps;
4. the fair baseline: SFT on the bare answers from the same base, same steps and questions per step;
5. evaluate all three on the same held-out questions: VQA accuracy, the share of replies that
   *recognise* the answer (perception, whatever the form: ``demo/recognised.py``), the
   share that repeat a word; the paired bootstrap of each against the base (``vqa-grpo compare``);
6. and on the out-of-distribution set (``data/synthetic_shift.py``: crowded scenes, the colour-shape
   pairs step 2 leaves out, rephrased questions), per shift too;
   print a table, write ``summary.json`` and the GRPO run's ``report.html``.

``train_questions`` trains both stages on that many of the training questions (a seeded pick,
stratified by answer type: ``data.max_train_samples``) for the same steps: the data-efficiency study.

Every stage is an ordinary CLI run with the overrides below, so each can be repeated by hand.
"""

from __future__ import annotations

import json
import re
import shutil
import time
from pathlib import Path

import vqa_grpo.demo.base as base
from vqa_grpo.config_load import load_config
from vqa_grpo.data.loader import load_vqa
from vqa_grpo.data.synthetic import synthesize
from vqa_grpo.data.synthetic_shift import HELD_OUT_PAIRS, SHIFTS, synthesize_shifted
from vqa_grpo.demo.recognised import recognised_share
from vqa_grpo.errors import UserError
from vqa_grpo.evaluation.compare import compare_runs
from vqa_grpo.evaluation.evaluate import evaluate
from vqa_grpo.evaluation.report import write_report
from vqa_grpo.training.loop import run

N_QUESTIONS = 3000
EVAL_FRACTION = 0.2
RL_STEPS = 100
N_OOD = 600
STAGES = ("warm_start", "grpo", "sft_same_budget")

COMMON = [
    f"data.eval_fraction={EVAL_FRACTION}",
    "train.device=cpu",
    "train.cpu_threads=2",
    # Both stages leave the base's pretrained vision tower as it is (VLM-R1 and EasyR1 offer the same):
    # training it loses what the base perceives (docs/demo.md).
    "model.freeze_vision=true",
    "train.lr_scheduler=constant",
    "train.max_grad_norm=1.0",
    "train.report_to=none",
    "eval.batch_size=64",
    "eval.max_new_tokens=16",  # the base's longest sentence is 12 tokens
]
LR = 3e-5
"""Both stages' learning rate (``run_demo(learning_rate=...)``): small enough that neither stage drifts
from what the base perceives, large enough that 100 steps teach the answer's form (docs/demo.md)."""
SFT_MORE = ["train.per_device_batch_size=8"]
GRPO = [
    "train.per_device_batch_size=8",
    "grpo.num_generations=8",
    "grpo.temperatures=[1.0]",
    "grpo.top_ps=[1.0]",
    "grpo.max_completion_length=16",
    # Dr. GRPO's aggregation: with the per-sequence 1/|o| of loss_type=grpo, wrong answers that run
    # on are penalised less per token (the length bias Dr. GRPO describes).
    "grpo.loss_type=dr_grpo",
    "grpo.scale_rewards=none",
    # The KL to the base keeps its answers where the reward gives no direction.
    "grpo.beta=0.1",
    "reward.components=[vqa_accuracy,composite]",
    "reward.weights=[0.5,0.5]",
    # DAPO's dynamic sampling: of the study's variants, the one better than plain GRPO on every
    # seed, for more completions sampled (docs/demo.md).
    "grpo.dynamic_sampling=true",
]
_REPEAT = re.compile(r"\b(\w+) \1\b")


def run_demo(
    out: str | Path,
    *,
    seed: int = 0,
    n_questions: int = N_QUESTIONS,
    rl_steps: int = RL_STEPS,
    learning_rate: float = LR,
    progress: bool = True,
    grpo_overrides: list[str] | tuple[str, ...] = (),
    train_questions: int | None = None,
    n_ood: int = N_OOD,
) -> dict:
    """Run the demo into ``out``. ``grpo_overrides`` (section.key=value) apply to the GRPO stage
    after the demo's own, e.g. ``reward.components=[composite] reward.weights=[1.0]``; the keyword
    sizes exist for the end-to-end test, ``learning_rate`` (both stages') for docs/demo.md's figures."""
    t0 = time.time()
    out = Path(out)
    fixed = [o for o in grpo_overrides if not o.startswith(("grpo.", "reward."))]
    if fixed:
        raise UserError(
            f"vqa-grpo demo takes grpo.* and reward.* overrides only (its GRPO stage), not {fixed[0]}: the data, "
            "the model, the steps and the evaluation are the demo's own, the same for every stage"
        )
    if train_questions is not None and train_questions < 1:
        raise UserError(f"--train-questions={train_questions}: give a positive number of questions, e.g. 200")
    start = base.base_model_dir()  # a damaged shipped base fails here, before anything is written
    common = [f"train.seed={seed}", f"train.progress={str(progress).lower()}", *COMMON]
    load_config(None, [*common, *GRPO, *grpo_overrides])  # a bad override fails before anything runs
    data_dir = synthesize(
        out / "data", n=n_questions, seed=seed, image_size=base.IMAGE_SIZE, held_out_pairs=HELD_OUT_PAIRS
    ).parent
    ood_dir = synthesize_shifted(out / "ood", n=n_ood, seed=seed, image_size=base.IMAGE_SIZE).parent
    common.insert(0, f"data.path={data_dir}")

    def stage(name: str, mode: str, extra: list[str]) -> Path:
        overrides = [f"model.name_or_path={start}", f"train.output_dir={out / name}", f"train.max_steps={rl_steps}"]
        overrides.append(f"train.learning_rate={learning_rate}")
        if train_questions is not None:
            overrides.append(f"data.max_train_samples={train_questions}")
        shutil.rmtree(out / name, ignore_errors=True)  # the demo rebuilds its stages on a rerun
        cfg = load_config(None, [*common, *overrides, *extra])
        return run(cfg, mode, desc=name).final_dir  # type: ignore[arg-type]

    models = {
        "warm_start": start,
        "grpo": stage("grpo", "grpo", [*GRPO, *grpo_overrides]),
        "sft_same_budget": stage("sft-same-budget", "sft", SFT_MORE),
    }
    eval_cfg = load_config(None, common)
    loaded = load_vqa(eval_cfg.data, seed=seed)
    held_out, n_train = loaded.eval, min(len(loaded.train), train_questions or len(loaded.train))
    ood = load_vqa(load_config(None, [*common, f"data.path={ood_dir}", "data.eval_fraction=0"]).data).train
    results, replies, ood_results, ood_replies = {}, {}, {}, {}
    for name, model in models.items():
        results[name], replies[name] = _evaluate(model, held_out, eval_cfg, out / "eval" / name)
        ood_results[name], ood_replies[name] = _evaluate(model, ood, eval_cfg, out / "eval-ood" / name)
    ood_rows = [json.loads(line) for line in (ood_dir / "data.jsonl").read_text().splitlines()]
    shift_of = {row["id"]: row["shift"] for row in ood_rows}
    compared = compare_runs([str(out / "eval" / name) for name in STAGES])
    write_report(
        str(out / "grpo"),
        before=str(out / "eval" / "warm_start"),
        after=str(out / "eval" / "grpo"),
        data_path=str(data_dir),
    )
    summary = {
        "seed": seed,
        "n_eval": len(held_out),
        "warm_start_model": str(start),
        "warm_start_steps": base.STEPS,
        "rl_steps": rl_steps,
        "learning_rate": learning_rate,
        "grpo_overrides": list(grpo_overrides),
        "train_questions": n_train,
        "n_ood": len(ood),
        **{f"accuracy_{k}": v["vqa_accuracy"] for k, v in results.items()},
        **{f"composite_{k}": v["composite"] for k, v in results.items()},
        **{f"recognised_{k}": recognised_share(v) for k, v in replies.items()},
        **{f"repeating_{k}": sum(bool(_REPEAT.search(r["raw"])) for r in v) / len(v) for k, v in replies.items()},
        "per_answer_type": {
            k: {t: m["vqa_accuracy"] for t, m in v["per_answer_type"].items()} for k, v in results.items()
        },
        "ci95": {k: v["ci95"]["vqa_accuracy"] for k, v in results.items()},
        "difference_vs_warm_start": {
            STAGES[i + 1]: d["overall"]["vqa_accuracy"] for i, d in enumerate(compared["differences"])
        },
        **{f"accuracy_ood_{k}": v["vqa_accuracy"] for k, v in ood_results.items()},
        **{f"recognised_ood_{k}": recognised_share(v) for k, v in ood_replies.items()},
        "per_shift_ood": {k: _per_shift(v, shift_of) for k, v in ood_replies.items()},
        "wall_seconds": round(time.time() - t0, 1),
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    print(format_summary(summary))
    return summary


def _evaluate(model: Path, examples: list, cfg, out: Path) -> tuple[dict, list[dict]]:
    """The evaluation's metrics and its predictions.jsonl rows."""
    metrics = evaluate(str(model), examples, cfg, out)
    return metrics, [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]


def _per_shift(rows: list[dict], shift_of: dict[str, str]) -> dict[str, float | None]:
    """VQA accuracy per shift of the out-of-distribution set (None for a shift with no question:
    summary.json stays JSON)."""
    by_shift = {shift: [r["vqa_accuracy"] for r in rows if shift_of[r["id"]] == shift] for shift in SHIFTS}
    return {shift: sum(v) / len(v) if v else None for shift, v in by_shift.items()}


def format_summary(s: dict) -> str:
    types = sorted(next(iter(s["per_answer_type"].values())))
    head = (
        f"{'model':<32} {'VQA acc':>8} {'95% CI':>15} {'vs base [95% CI]':>24} {'recog.':>7} {'repeat':>7} "
        + " ".join(f"{t:>7}" for t in types)
    )
    lines = [f"held-out questions: {s['n_eval']}", head, "-" * len(head)]
    names = {
        "warm_start": "pretrained tiny base",
        "grpo": f"+ GRPO ({s['rl_steps']} steps)",
        "sft_same_budget": f"+ SFT, same budget ({s['rl_steps']} steps)",
    }
    for key, label in names.items():
        lo, hi = s["ci95"][key]
        diff = s["difference_vs_warm_start"].get(key)
        versus = f"{diff['mean']:+.3f} [{diff['ci95'][0]:+.3f}, {diff['ci95'][1]:+.3f}]" if diff else ""
        per = " ".join(f"{s['per_answer_type'][key][t]:>7.3f}" for t in types)
        lines.append(
            f"{label:<32} {s['accuracy_' + key]:>8.3f} {f'[{lo:.3f}, {hi:.3f}]':>15} {versus:>24} "
            f"{s['recognised_' + key]:>7.3f} {s['repeating_' + key]:>7.3f} {per}"
        )
    shifts = list(SHIFTS)
    ood_head = f"{'model':<32} {'OOD acc':>8} {'recog.':>7} " + " ".join(f"{t:>9}" for t in shifts)
    lines += ["", f"out of distribution: {s['n_ood']} questions, a third per shift", ood_head, "-" * len(ood_head)]
    for key, label in names.items():
        per = " ".join("-".rjust(9) if v is None else f"{v:>9.3f}" for v in map(s["per_shift_ood"][key].get, shifts))
        lines.append(f"{label:<32} {s['accuracy_ood_' + key]:>8.3f} {s['recognised_ood_' + key]:>7.3f} {per}")
    lines.append(
        "recog.: replies naming exactly one candidate answer, the right one (perception, whatever the form); "
        "repeat: replies repeating a word"
    )
    if s.get("train_questions") is not None:
        lines.append(f"trained on {s['train_questions']} questions")
    lines.append(f"wall time: {s['wall_seconds']:.0f} s; summary.json, and grpo/report.html for the GRPO run")
    return "\n".join(lines)
