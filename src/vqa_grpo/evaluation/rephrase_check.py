"""``evaluate --rephrase`` (eval.rephrase): the same questions asked in other words.

Each answered question is asked again under every rewrite of data/rephrase.py that applies to it
(same image, same answers), answered in the same batched way, and scored with the same metrics.
metrics.json's ``rephrase`` holds:

* ``n_questions``: the questions with at least one rephrasing answered; ``n_variants``: the
  rephrased questions answered;
* per rewrite name: ``n``, ``vqa_accuracy`` and the primary metric on its rephrased questions,
  and ``difference``: metric -> {mean, ci95, p_value}, the paired difference rephrased - original
  over those same questions (evaluation/paired.py's paired bootstrap, eval.bootstrap_samples
  resamples, seed 0);
* ``consistency``: the share of the ``n_questions`` whose cleaned answer is the same under every
  wording, the original's included; ``consistent_and_right``: the share that are consistent and
  whose answer scores full VQA accuracy (1.0) on the original.

predictions_rephrased.jsonl has one row per rephrased question: the original's ``id``, the
``rephrase`` name, the rephrased ``question``, ``raw``, ``prediction`` and each metric's score.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from vqa_grpo.data.rephrase import REWRITES, rephrasings
from vqa_grpo.evaluation.answering import answer_and_score
from vqa_grpo.evaluation.paired import paired_pass

FILE = "predictions_rephrased.jsonl"


def check_rephrasings(lm, original, cfg, device, dist=None) -> tuple[dict, list[dict]]:
    """``(metrics.json's "rephrase", predictions_rephrased.jsonl's rows)`` for ``original``
    (answering.Answered: the examples as first answered and their scores)."""

    asked = []  # (index into original.examples, rewrite name)
    variants = []
    for i, e in enumerate(original.examples):
        for name, text in rephrasings(e.question):
            asked.append((i, name))
            variants.append(dataclasses.replace(e, question=text))  # the same id: user metrics see it
    got = answer_and_score(lm, variants, cfg, device, dist) if variants else None
    answered = [] if got is None else [(asked[position], k) for k, position in enumerate(got.positions)]
    rows = [
        {
            "id": original.examples[i].id,
            "rephrase": name,
            "question": got.examples[k].question,
            "raw": got.raw[k],
            "prediction": got.predictions[k],
            **{m: None if np.isnan(v[k]) else float(v[k]) for m, v in got.scores.items()},
        }
        for (i, name), k in answered
    ]
    primary = cfg.train.eval_metric or "vqa_accuracy"
    shown = list(dict.fromkeys(["vqa_accuracy", primary]))
    out: dict = {"n_questions": len({i for (i, _), _ in answered}), "n_variants": len(answered)}
    for name in [n for n in REWRITES if any(m == n for (_, m), _ in answered)]:  # data/rephrase.py's order
        pairs = [(i, k) for (i, n), k in answered if n == name]
        means, difference = paired_pass(pairs, original.scores, got.scores, shown, cfg.eval.bootstrap_samples)
        kept = [m for m in shown if m in means and m in original.scores]  # the shown metrics only
        out[name] = {"n": len(pairs), "difference": difference, **{m: means[m] for m in kept}}
    out.update(_consistency(original, [(i, got.predictions[k]) for (i, _), k in answered]))
    return out, rows


def _consistency(original, answers: list[tuple[int, str]]) -> dict:
    """The share of questions whose answer is the same under every wording (and also fully right)."""
    seen: dict[int, set[str]] = {}
    for i, prediction in answers:
        seen.setdefault(i, {original.predictions[i]}).add(prediction)
    if not seen:  # no question had a rewrite that applied
        return {"consistency": 0.0, "consistent_and_right": 0.0}
    same = [i for i, preds in seen.items() if len(preds) == 1]
    right = [i for i in same if original.scores["vqa_accuracy"][i] == 1.0]
    return {"consistency": len(same) / len(seen), "consistent_and_right": len(right) / len(seen)}


def format_rephrase(r: dict) -> str:
    """metrics.json's ``rephrase`` as lines under evaluate's table: each rewrite's VQA accuracy
    and primary metric, their difference to the original wording with its p-value (as
    robustness.format_robustness prints the perturbed passes), then the consistency."""
    lines = [f"rephrased: {r['n_variants']} questions from {r['n_questions']} (--rephrase, data/rephrase.py)"]
    for name, m in r.items():
        if not isinstance(m, dict):
            continue
        for metric, d in m["difference"].items():
            lo, hi = d["ci95"]
            lines.append(
                f"  {name:<14} n {m['n']:>5}  {metric} {m.get(metric, 0.0):.4f}  "
                f"vs original {d['mean']:+.4f} (95% CI {lo:+.4f}, {hi:+.4f}, p {d['p_value']:.4f})"
            )
    lines.append(
        f"  consistency {r['consistency']:.4f} (same answer under every wording), "
        f"consistent and right {r['consistent_and_right']:.4f}"
    )
    return "\n".join(lines)
