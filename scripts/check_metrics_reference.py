"""Compare vqa-grpo's benchmark metrics with the reference code, run here, on random and adversarial cases.

The reference files are read from public repositories and placed under REF (never in this
repository); the script imports them there, with stand-ins only for imports the functions do not
use (lmms-eval's registry decorators, loguru, sacrebleu, its submission-file helper). Place them:

    L=<git dir of EvolvingLMMs-Lab/lmms-eval>; R=/tmp/ref
    for t in chartqa vqav2 textvqa ok_vqa vizwiz_vqa; do mkdir -p $R/lmms_eval/tasks/$t
      git -C $L show HEAD:lmms_eval/tasks/$t/utils.py > $R/lmms_eval/tasks/$t/utils.py; done
    mkdir -p $R/lmms_eval/api $R/lmms_eval/tasks/_task_utils $R/rrc $R/aokvqa
    git -C $L show HEAD:lmms_eval/api/metrics.py > $R/lmms_eval/api/metrics.py
    f=lmms_eval/tasks/_task_utils/vqa_eval_metric.py; git -C $L show HEAD:$f > $R/$f
    git -C <QwenLM/Qwen-VL> show HEAD:eval_mm/infographicsvqa_eval.py > $R/rrc/infographicsvqa_eval.py  # RRC's
    git -C <allenai/aokvqa> show HEAD:evaluation/eval_predictions.py > $R/aokvqa/eval_predictions.py

    python scripts/check_metrics_reference.py --ref /tmp/ref [--cases 6000] \
        [--fixture tests/rewards/data/metrics_reference.json]

For each comparison it prints the cases, the differences, and the cases left out of the count as
a documented deviation (an empty prediction scores 0 here; a single reference answer and no
answers: docs/metrics.md). Exit 1 when a comparison that must agree does not. ``--fixture``
writes a fixed sample of cases with the reference values (tests/rewards/test_metrics_reference.py).
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import random
import sys
import tempfile
import types
from collections import Counter
from pathlib import Path

from metrics_cases import make_cases, make_choice_cases, make_vqa_cases  # beside this script

from vqa_grpo.rewards import anls, exact_match, multiple_choice, relaxed_accuracy, vqa_accuracy

SOURCES = {
    "lmms-eval": "EvolvingLMMs-Lab/lmms-eval 75571cfe0fa36ca5ec2e6aa2bb268f9d38295af3 (2026-08-06)",
    "RRC": "QwenLM/Qwen-VL aa00ed04091eea5fcdd32985e7915f1c53e7d599 eval_mm/infographicsvqa_eval.py",
    "A-OKVQA": "allenai/aokvqa 83786de0b24c4fef0bfe39420684f6f73d9f3581 evaluation/eval_predictions.py",
}
"""The commits the reference files were read from (docs/metrics.md)."""


def _stand_ins() -> None:
    """Modules the reference files import but whose code the compared functions never reach."""

    def module(name: str, **attrs) -> None:
        m = types.ModuleType(name)
        m.__dict__.update(attrs)
        sys.modules[name] = m

    identity = lambda *a, **k: lambda f: f  # noqa: E731  (register_metric(...) as a no-op decorator)
    module("lmms_eval.api.registry", register_metric=identity, register_aggregation=identity)
    module("lmms_eval.tasks._task_utils.file_utils", generate_submission_file=None)
    module("loguru", logger=None)
    module("sacrebleu")
    module("load_aokvqa", load_aokvqa=None)


def load_references(ref: Path) -> dict:
    _stand_ins()
    sys.path[:0] = [str(ref), str(ref / "rrc"), str(ref / "aokvqa")]
    utils = importlib.import_module("lmms_eval.tasks._task_utils")
    utils.file_utils = sys.modules["lmms_eval.tasks._task_utils.file_utils"]  # for "import a.b.c as x"
    return {
        "metrics": importlib.import_module("lmms_eval.api.metrics"),
        "chartqa": importlib.import_module("lmms_eval.tasks.chartqa.utils"),
        "vqav2": importlib.import_module("lmms_eval.tasks.vqav2.utils"),
        "textvqa": importlib.import_module("lmms_eval.tasks.textvqa.utils"),
        "ok_vqa": importlib.import_module("lmms_eval.tasks.ok_vqa.utils"),
        "vizwiz_vqa": importlib.import_module("lmms_eval.tasks.vizwiz_vqa.utils"),
        "rrc": importlib.import_module("infographicsvqa_eval"),
        "aokvqa": importlib.import_module("eval_predictions"),
    }


# ---------------------------------------------------------------------------------------------
# The comparisons. Each returns (cases, differences, left out as documented, examples).


def _deviation(metric: str, pred: str, gts: list[str]) -> str | None:
    """Why a case is a documented deviation from lmms-eval (docs/metrics.md), or None."""
    if not pred.strip():
        return "empty prediction scores 0"
    if not gts:
        return "no answers score 0"
    if metric.startswith("vqa_accuracy") and len(gts) == 1:
        return "one answer: scored as a match"
    return None


def _compare(name: str, cases, ours, theirs, metric: str, fixture: list, sample: int) -> bool:
    diffs, left_out, examples = 0, Counter(), []
    every = max(1, len(cases) // sample) if sample else 0
    for k, (pred, gts) in enumerate(cases):
        mine = ours(pred, gts)
        why = _deviation(metric, pred, gts)
        try:
            ref = theirs(pred, gts)
        except Exception as e:  # the reference fails on some input (no answers)
            ref = f"{type(e).__name__}"
        if why is not None:
            left_out[why] += 1
        elif ref != mine:
            diffs += 1
            examples.append((pred, gts, ref, mine))
        if every and k % every == 0 and k // every < sample:
            row = {"metric": metric, "prediction": pred, "answers": gts, "reference": ref, "ours": mine}
            if why is not None:
                row["deviation"] = why
            fixture.append(row)
    print(f"{name:<66} cases {len(cases):>6}  differences {diffs:>4}")
    if left_out:
        print("    left out, documented: " + ", ".join(f"{why} {n}" for why, n in sorted(left_out.items())))
    for pred, gts, ref, mine in examples[:5]:
        print(f"    {pred!r} vs {gts!r}: reference {ref!r}, ours {mine!r}")
    return diffs == 0


def _rrc_anls(rrc, cases) -> list:
    """The RRC script's per-question score, run once over all the cases (its files and arguments)."""
    with tempfile.TemporaryDirectory() as tmp:
        gt = {
            "dataset_name": "check",
            "data": [{"questionId": i, "question": "", "answers": g} for i, (_, g) in enumerate(cases)],
        }
        det = [{"questionId": i, "answer": p} for i, (p, _) in enumerate(cases)]
        Path(tmp, "gt.json").write_text(json.dumps(gt))
        Path(tmp, "det.json").write_text(json.dumps(det))
        params = argparse.Namespace(answer_types=False, anls_threshold=0.5)
        out = rrc.evaluate_method(str(Path(tmp, "gt.json")), str(Path(tmp, "det.json")), params)
    return [out["per_sample_result"][str(i)]["score"] for i in range(len(cases))]


def run(ref: Path, n: int, seed: int, fixture_path: Path | None) -> int:
    logging.getLogger("vqa_grpo.rewards").setLevel(logging.ERROR)  # bad input is part of the cases
    refs = load_references(ref)
    rng = random.Random(seed)
    fixture: list = []
    ok = True
    lm, chart, vqav2 = refs["metrics"], refs["chartqa"], refs["vqav2"]

    cases = make_cases(rng, n, (1, 3))
    ok &= _compare(
        "anls vs lmms-eval api/metrics.py anls", cases, anls, lambda p, g: lm.anls(g, [p])["anls"], "anls", fixture, 50
    )
    ok_cases = [(p, g) for p, g in cases if g and p.strip()]  # the RRC script fails on no answers
    rrc_diff = sum(anls(p, g) != score for (p, g), score in zip(ok_cases, _rrc_anls(refs["rrc"], ok_cases)))
    print(
        f"{'anls vs RRC infographicsvqa_eval.py evaluate_method':<66} cases {len(ok_cases):>6}  "
        f"differences {rrc_diff:>4}"
    )
    ok &= rrc_diff == 0

    cases = make_cases(rng, n, (1, 2))
    ok &= _compare(
        "relaxed_accuracy vs lmms-eval chartqa relaxed_correctness",
        cases,
        relaxed_accuracy,
        lambda p, g: float(max(chart.relaxed_correctness(p, t) for t in g)),
        "relaxed_accuracy",
        fixture,
        50,
    )

    cases = make_cases(rng, n, (1, 2))
    ok &= _compare(
        "exact_match vs lmms-eval exact_match (gqa.yaml settings)",
        cases,
        exact_match,
        lambda p, g: float(
            max(
                lm.exact_match_hf_evaluate([p], [t], ignore_case=True, ignore_punctuation=True)["exact_match"]
                for t in g
            )
        ),
        "exact_match",
        fixture,
        50,
    )

    def vqav2_ref(p, g):
        doc = {"question_id": 0, "answers": [{"answer": a, "answer_id": i + 1} for i, a in enumerate(g)]}
        return vqav2.vqav2_process_results(doc, [p])["exact_match"]

    cases = make_vqa_cases(rng, n) + make_cases(rng, n // 10, (1, 1))
    ok &= _compare(
        "vqa_accuracy lmms_eval vs lmms-eval vqav2_process_results",
        cases,
        lambda p, g: vqa_accuracy(p, g, convention="lmms_eval"),
        vqav2_ref,
        "vqa_accuracy",
        fixture,
        50,
    )
    for bench, task in (("textvqa", "textvqa"), ("okvqa", "ok_vqa"), ("vizwiz", "vizwiz_vqa")):
        process = getattr(refs[task], f"{task}_process_results")
        ok &= _compare(
            f"vqa_accuracy lmms_eval, {bench} vs lmms-eval {task}_process_results",
            cases,
            lambda p, g, b=bench: vqa_accuracy(p, g, convention="lmms_eval", benchmark=b),
            lambda p, g, f=process: f({"question_id": 0, "answers": list(g)}, [p])["exact_match"],
            f"vqa_accuracy/{bench}",
            fixture,
            10,
        )
    shown = [(p, g) for p, g in cases if p.strip() and len(g) > 1]
    both = [(p, g, vqa_accuracy(p, g, convention="lmms_eval", benchmark="textvqa")) for p, g in shown]
    differ = [(p, g, t) for p, g, t in both if t != vqa_accuracy(p, g, convention="lmms_eval")]
    print(f"{'  (for docs) VQA v2 form vs TextVQA form':<66} cases {len(shown):>6}  differences {len(differ):>4}")
    for p, g, t in differ[:5]:
        print(f"    {p!r} vs {g!r}: TextVQA's {t!r}, VQA v2's {vqa_accuracy(p, g, convention='lmms_eval')!r}")

    # Beyond float rounding: the two add the ten leave-one-out terms in different orders.
    conventions = sum(abs(vqa_accuracy(p, g) - vqa_accuracy(p, g, convention="lmms_eval")) > 1e-9 for p, g in shown)
    print(
        f"{'  (for docs) official vs lmms_eval convention here':<66} cases {len(shown):>6}  "
        f"differences {conventions:>4}"
    )

    choice_cases = make_choice_cases(rng, n)
    aok = refs["aokvqa"]
    agree = {
        "agree": 0,
        "empty prediction scores 0": 0,
        "letter accepted here": 0,
        "text accepted here, not exact": 0,
        "other": 0,
    }
    for pred, gts, choices, idx in choice_cases:
        data = [
            {
                "question_id": "q",
                "choices": choices,
                "direct_answers": [],
                "correct_choice_idx": idx,
                "difficult_direct_answer": False,
            }
        ]
        ref_value = aok.eval_aokvqa(data, {"q": pred}, multiple_choice=True, strict=False) / 100
        mine = multiple_choice(pred, gts)
        if mine == ref_value:
            agree["agree"] += 1
        elif not pred.strip():
            agree["empty prediction scores 0"] += 1
        elif mine == 1.0 and pred not in choices and len(pred.strip().strip("().:")) == 1:
            agree["letter accepted here"] += 1
        elif mine == 1.0:
            agree["text accepted here, not exact"] += 1
        else:
            agree["other"] += 1
            print(f"    {pred!r} choices {choices!r} correct {idx}: reference {ref_value}, ours {mine}")
    print(
        f"{'multiple_choice vs allenai/aokvqa eval_aokvqa(multiple_choice)':<66} cases {len(choice_cases):>6}  "
        + ", ".join(f"{k} {v}" for k, v in agree.items())
    )
    ok &= agree["other"] == 0

    if fixture_path is not None:
        fixture_path.parent.mkdir(parents=True, exist_ok=True)
        head = {
            "command": f"python scripts/check_metrics_reference.py --ref REF --cases {n} --seed {seed} --fixture "
            + str(fixture_path),
            "sources": SOURCES,
        }
        fixture_path.write_text(json.dumps({**head, "cases": fixture}, ensure_ascii=False, indent=0) + "\n")
        print(f"wrote {len(fixture)} cases to {fixture_path}")
    return 0 if ok else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ref", type=Path, default=Path("/tmp/ref"), help="where the reference files were placed")
    parser.add_argument("--cases", type=int, default=6000, help="cases per comparison (default 6000)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--fixture", type=Path, default=None, help="write a sample of cases with reference values")
    args = parser.parse_args()
    return run(args.ref, args.cases, args.seed, args.fixture)


if __name__ == "__main__":
    sys.exit(main())
