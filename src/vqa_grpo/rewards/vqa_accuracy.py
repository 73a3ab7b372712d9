"""VQA accuracy: the official VQA v2 metric of GT-Vision-Lab/VQA ``vqaEval.py`` (master, 2021).

For a prediction and the ground-truth answer entries g_1..g_n (VQA v2: n = 10), as upstream:

1. Every text has "\\n" and "\\t" replaced by spaces, then is stripped.
2. Official mode: *only when the stripped answers are not all identical* (``len(set(g)) > 1``),
   the answers and the prediction are normalised by ``process_digit_article(process_punctuation(.))``
   (see ``normalize``). When all answers are identical nothing is normalised, so the comparison is
   exact and case-sensitive: answers ["yes"] * 10 give "Yes" and "yes." a score of 0 (the 2021
   master behaves so). Lenient mode (``official=False``, as VLMEvalKit) always normalises both.
3. Leave-one-out by entry: with M the number of entries equal to the prediction,
   accuracy = mean over i of min(1, (M - [g_i == prediction]) / 3), i.e. each entry is left out once
   even if its value repeats (upstream compares answer records, which differ by answer_id).

Deviations, only for input VQA v2 never has: with n < 10 entries the same formula runs over the n
entries given (so fewer than 4 matching entries cannot reach 1; e.g. 3 of 3 give 2/3), except that
with exactly one entry leave-one-out leaves nothing, so the score is 1 if it equals the prediction
else 0. No entries, or a prediction empty after processing, scores 0; empty entries still count
as entries but never match.

``convention="lmms_eval"``: lmms-eval's VQA v2 accuracy (``lmms_eval/tasks/vqav2/utils.py``
``vqav2_process_results``), which always normalises both sides with its EvalAI processor's steps
(``normalize.evalai_normalize``), then takes the same leave-one-out mean (its answers are
records with distinct ids, so each entry is left out once), averaged as ``statistics.mean``
does (exactly, then rounded once). lmms-eval's TextVQA, OK-VQA and VizWiz tasks instead call
the processor whole (``normalize.evalai_answer``: it also deletes "," and "?" and splits "'s")
on the raw texts; ``benchmark=`` one of those takes that form. Where it differs from
lmms-eval, on input these benchmarks never have (docs/metrics.md): one entry scores 1 if it
matches (lmms-eval: always 0, nothing left after leaving it out), no entries 0 (lmms-eval: an
error, or 0), an empty (all-whitespace) prediction 0 (lmms-eval: a match with entries that
normalise to ""). A prediction that only normalises to "" ("?", "the") is scored as lmms-eval
scores it.
"""

from __future__ import annotations

from fractions import Fraction
from typing import Sequence

import numpy as np

from vqa_grpo.rewards.inputs import checked
from vqa_grpo.rewards.normalize import evalai_answer, evalai_normalize, process_digit_article, process_punctuation

VQA_CONVENTIONS = ("official", "lmms_eval")
"""``eval.vqa_convention``: vqaEval.py's accuracy, or lmms-eval's (see the module docstring)."""
WHOLE_PROCESSOR_BENCHMARKS = ("textvqa", "okvqa", "vizwiz")
"""The benchmarks whose lmms-eval task calls the EvalAI processor whole (``normalize.evalai_answer``)."""


def _whitespace(text: str) -> str:
    return text.replace("\n", " ").replace("\t", " ").strip()


def _normalise(text: str) -> str:
    return process_digit_article(process_punctuation(text))


def _accuracy(prediction: str, answers: Sequence[str], official: bool) -> float:
    """The metric on strings (see the module docstring)."""
    pred = _whitespace(prediction)
    gts = [_whitespace(a) for a in answers]
    if not official or len(set(gts)) > 1:
        gts = [_normalise(g) for g in gts]
        pred = _normalise(pred)
    if not pred or not gts:
        return 0.0
    if len(gts) == 1:
        return 1.0 if gts[0] == pred else 0.0
    matches = sum(g == pred for g in gts)
    # entries equal to pred see matches-1 others, the rest see matches; summed in the answers'
    # order and divided, as vqaEval.py does, so the float is its float
    return sum(min(1.0, (matches - (g == pred)) / 3) for g in gts) / len(gts)


def _accuracy_lmms_eval(prediction: str, answers: Sequence[str], whole_call: bool = False) -> float:
    """lmms-eval's VQA accuracy on strings (see the module docstring); ``whole_call``: its
    TextVQA/OK-VQA/VizWiz form, the processor called whole on the raw texts."""
    if not prediction.strip() or not answers:  # only an empty prediction: "?" normalises to "" and may match
        return 0.0
    if whole_call:
        pred, gts = evalai_answer(prediction), [evalai_answer(a) for a in answers]
    else:
        pred = evalai_normalize(_whitespace(prediction))
        gts = [evalai_normalize(_whitespace(a)) for a in answers]
    if len(gts) == 1:
        return 1.0 if gts[0] == pred else 0.0
    n, matches = len(gts), sum(g == pred for g in gts)
    hit, miss = min(1, float(matches - 1) / 3), min(1, float(matches) / 3)
    return float((Fraction(hit) * matches + Fraction(miss) * (n - matches)) / n)  # statistics.mean's rounding


def _check_convention(convention: str) -> None:
    if convention not in VQA_CONVENTIONS:
        raise ValueError(f"vqa_accuracy: convention={convention!r}; choose one of {', '.join(VQA_CONVENTIONS)}")


def _whole_call(convention: str, benchmark: str | None) -> bool:
    return convention == "lmms_eval" and benchmark in WHOLE_PROCESSOR_BENCHMARKS


def vqa_accuracy(
    prediction: str,
    answers: list[str],
    convention: str = "official",
    *,
    official: bool = True,
    benchmark: str | None = None,
) -> float:
    """VQA accuracy in [0, 1] of one prediction against its ground-truth answers.

    ``convention="official"`` reproduces vqaEval.py (normalising only when the answers differ);
    with ``official=False`` it always normalises both sides (the training reward's lenient form).
    ``convention="lmms_eval"`` reproduces lmms-eval's VQA v2 accuracy (``official`` is unused:
    it always normalises), or with ``benchmark`` textvqa, okvqa or vizwiz that task's, which calls
    the EvalAI processor whole. Bad input never raises (see ``inputs``).
    """
    _check_convention(convention)
    pred, gts = checked("vqa_accuracy", prediction, answers)
    if convention == "lmms_eval":
        return _accuracy_lmms_eval(pred, gts, _whole_call(convention, benchmark))
    return _accuracy(pred, gts, official)


def vqa_accuracy_batch(
    predictions: Sequence[str],
    answers: Sequence[Sequence[str]],
    *,
    official: bool,
    convention: str = "official",
    benchmark: str | None = None,
) -> np.ndarray:
    """``vqa_accuracy`` over a batch of strings: float64 array [N]."""
    _check_convention(convention)
    if convention == "lmms_eval":
        whole = _whole_call(convention, benchmark)
        return np.array([_accuracy_lmms_eval(p, a, whole) for p, a in zip(predictions, answers)], dtype=np.float64)
    return np.array([_accuracy(p, a, official) for p, a in zip(predictions, answers)], dtype=np.float64)
