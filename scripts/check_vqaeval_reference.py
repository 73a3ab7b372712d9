"""Compare vqa_accuracy's official convention with the official VQA evaluation, vqaEval.py, run
unchanged under Python 2 (the interpreter it was written for).

Place the reference (never in this repository) and run, with a Python 2.7 on the PATH:

    git -C <GT-Vision-Lab/VQA git dir> show HEAD:PythonEvaluationTools/vqaEvaluation/vqaEval.py \\
        > /tmp/ref/vqaeval/vqaEval.py
    python scripts/check_vqaeval_reference.py --ref /tmp/ref/vqaeval [--python2 python2.7] \\
        [--fixture tests/rewards/data/vqaeval_reference.json]

The cases are check_metrics_reference.py's VQA-shaped ones (scripts/metrics_cases.py). Python 2
runs ``VQAEval.evaluate`` on them through stand-ins for its two data objects (the ``qa`` dicts and
``getQuesIds`` of VQA's loader), and reads each question's accuracy before its rounding to two
decimals. Cases left out of the count are the documented deviations (docs/metrics.md); a
difference in a case holding "İ" is Python 2's ``unicode.lower`` ("i") against Python 3's ("i̇").
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path

from metrics_cases import make_cases, make_vqa_cases  # beside this script

from vqa_grpo.rewards import vqa_accuracy
from vqa_grpo.rewards.normalize import normalize_answer

SOURCE = "GT-Vision-Lab/VQA a013f0043c1e2cdc995922dfe257f7149aa9af06 PythonEvaluationTools/vqaEvaluation/vqaEval.py"

PYTHON2 = r"""
import json, sys
sys.path.insert(0, sys.argv[1])
from vqaEval import VQAEval
cases = json.load(open(sys.argv[2]))
class Data(object):
    pass
vqa, res = Data(), Data()
vqa.qa = dict((i, {"answers": [{"answer": a, "answer_id": k + 1} for k, a in enumerate(g)], "question_type": "t",
                   "answer_type": "t"}) for i, (p, g) in enumerate(cases))
res.qa = dict((i, {"answer": p}) for i, (p, g) in enumerate(cases))
ids = [i for i, (p, g) in enumerate(cases) if g]
vqa.getQuesIds = lambda: ids
ev = VQAEval(vqa, res, n=2)
raw = {}
ev.setEvalQA = lambda q, acc: raw.__setitem__(q, acc)
ev.updateProgress = lambda p: None
ev.evaluate()
json.dump(dict((str(k), v) for k, v in raw.items()), open(sys.argv[3], "w"))
"""


def _whitespace(text: str) -> str:
    return text.replace("\n", " ").replace("\t", " ").strip()


def _deviation(pred: str, gts: list[str]) -> str | None:
    """Why a case is a documented deviation from vqaEval.py (docs/metrics.md), or None."""
    if not pred.strip():
        return "empty prediction scores 0"
    if len(gts) == 1:
        return "one answer: scored as a match"
    if len({_whitespace(g) for g in gts}) > 1 and not normalize_answer(_whitespace(pred)):
        return "normalises to empty: scores 0"
    return None


def run(ref: Path, python2: str, n: int, seed: int, fixture_path: Path | None) -> int:
    logging.getLogger("vqa_grpo.rewards").setLevel(logging.ERROR)
    rng = random.Random(seed)
    cases = make_vqa_cases(rng, n) + make_cases(rng, n // 10, (1, 1))
    with tempfile.TemporaryDirectory() as tmp:
        inp, out = Path(tmp, "cases.json"), Path(tmp, "ref.json")
        inp.write_text(json.dumps(cases))
        subprocess.run([python2, "-c", PYTHON2, str(ref), str(inp), str(out)], check=True, stdout=subprocess.DEVNULL)
        ref_values = json.loads(out.read_text())
    diffs, left_out, unicode_lower = [], Counter(), 0
    scored: list[dict] = []  # the fixture: 28 cases scored above 0 (odd floats among them), 12 at 0
    zero: list[dict] = []
    for k, (pred, gts) in enumerate(cases):
        theirs, mine = ref_values.get(str(k)), vqa_accuracy(pred, gts)
        why = _deviation(pred, gts) if gts else "no answers: scores 0 (vqaEval.py divides by 0)"
        if why is not None:
            left_out[why] += 1
        elif theirs != mine:
            if "İ" in pred or any("İ" in g for g in gts):
                unicode_lower += 1
            else:
                diffs.append((pred, gts, theirs, mine))
        if why is None and theirs == mine and k % 7 == 0:
            kept = scored if theirs else zero
            if len(kept) < (28 if theirs else 12):
                kept.append({"prediction": pred, "answers": gts, "reference": theirs})
    print(f"vqa_accuracy official vs vqaEval.py  cases {len(cases)}  differences {len(diffs)}")
    print("    left out, documented: " + ", ".join(f"{why} {c}" for why, c in sorted(left_out.items())))
    print(f"    Python 2's unicode.lower of 'İ' (not counted): {unicode_lower}")
    for pred, gts, theirs, mine in diffs[:5]:
        print(f"    {pred!r} vs {gts!r}: reference {theirs!r}, ours {mine!r}")
    if fixture_path is not None:
        command = (
            f"python scripts/check_vqaeval_reference.py --ref REF --cases {n} --seed {seed} --fixture {fixture_path}"
        )
        fixture_path.write_text(
            json.dumps({"command": command, "source": SOURCE, "cases": scored + zero}, ensure_ascii=False, indent=0)
            + "\n"
        )
        print(f"wrote {len(scored + zero)} cases to {fixture_path}")
    return 0 if not diffs else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ref", type=Path, default=Path("/tmp/ref/vqaeval"), help="the folder holding vqaEval.py")
    parser.add_argument("--python2", default="python2", help="a Python 2.7 interpreter (default: python2)")
    parser.add_argument("--cases", type=int, default=6000, help="VQA-shaped cases (default 6000, plus a tenth)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--fixture", type=Path, default=None, help="write a sample of cases with reference values")
    args = parser.parse_args()
    return run(args.ref, args.python2, args.cases, args.seed, args.fixture)


if __name__ == "__main__":
    sys.exit(main())
