"""``evaluate --rephrase`` (eval.rephrase): the same questions asked in other words.

Each answered question is asked again under every rewrite of data/rephrase.py that applies to it
(same image, same answers), answered in the same batched way, and scored with the same metrics.
metrics.json's ``rephrase`` holds:

* ``n_questions``: the questions with at least one rephrasing answered; ``n_variants``: the
  rephrased questions answered;
* per rewrite name: ``n``, ``vqa_accuracy`` and the primary metric on its rephrased questions,
  and ``difference``: metric -> {mean, ci95, p_value}, the paired difference rephrased - original
  over those same questions (evaluation/compare.py's paired bootstrap, eval.bootstrap_samples
  resamples, seed 0);
* ``consistency``: the share of the ``n_questions`` whose cleaned answer is the same under every
  wording, the original's included; ``consistent_and_right``: the share that are consistent and
  whose answer scores full VQA accuracy (1.0) on the original.

predictions_rephrased.jsonl has one row per rephrased question: the original's ``id``, the
``rephrase`` name, the rephrased ``question``, ``raw``, ``prediction`` and each metric's score.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import numpy as np

from vqa_grpo.data.rephrase import REWRITES, rephrasings
from vqa_grpo.evaluation.compare import paired_bootstrap

FILE = "predictions_rephrased.jsonl"


def check_rephrasings(lm, original, cfg, device, dist=None) -> tuple[dict, list[dict]]:
    """``(metrics.json's "rephrase", predictions_rephrased.jsonl's rows)`` for ``original``
    (evaluate.Answered: the examples as first answered and their scores)."""
    from vqa_grpo.evaluation.evaluate import answer_and_score

    asked = []  # (index into original.examples, rewrite name)
    variants = []
    for i, e in enumerate(original.examples):
        for name, text in rephrasings(e.question):
            asked.append((i, name))
            variants.append(dataclasses.replace(e, id=str(len(asked) - 1), question=text))
    got = answer_and_score(lm, variants, cfg, device, dist) if variants else None
    answered = [] if got is None else [(asked[int(e.id)], k) for k, e in enumerate(got.examples)]
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
        out[name] = _per_rewrite(pairs, original.scores, got.scores, shown, cfg.eval.bootstrap_samples)
    out.update(_consistency(original, [(i, got.predictions[k]) for (i, _), k in answered]))
    return out, rows


def _per_rewrite(pairs, before: dict, after: dict, shown: list[str], samples: int) -> dict:
    """One rewrite's means over its questions and their paired differences to the original wording
    (rows a user metric left unscored, NaN, are left out of that metric's figures)."""
    res: dict = {"n": len(pairs), "difference": {}}
    for m in shown:
        if m not in after or m not in before:
            continue
        a = np.array([before[m][i] for i, _ in pairs])
        b = np.array([after[m][k] for _, k in pairs])
        scored = ~(np.isnan(a) | np.isnan(b))
        res[m] = float(b[~np.isnan(b)].mean()) if (~np.isnan(b)).any() else 0.0
        if scored.any():
            test = paired_bootstrap((b - a)[scored][:, None], samples)
            res["difference"][m] = {
                "mean": float(test["mean"][0]),
                "ci95": [float(x) for x in test["ci95"][0]],
                "p_value": float(test["p_value"][0]),
            }
    return res


def _consistency(original, answers: list[tuple[int, str]]) -> dict:
    """The share of questions whose answer is the same under every wording (and also fully right)."""
    seen: dict[int, set[str]] = {}
    for i, prediction in answers:
        seen.setdefault(i, {original.predictions[i]}).add(prediction)
    same = [i for i, preds in seen.items() if len(preds) == 1]
    right = [i for i in same if original.scores["vqa_accuracy"][i] == 1.0]
    n = max(1, len(seen))
    return {"consistency": len(same) / n if seen else 0.0, "consistent_and_right": len(right) / n if seen else 0.0}


def write_rephrased(out: Path, rows: list[dict] | None) -> None:
    """predictions_rephrased.jsonl (written beside, then moved over an earlier one); None removes an
    earlier evaluation's, so that the folder holds one evaluation's files only."""
    path = out / FILE
    if rows is None:
        path.unlink(missing_ok=True)
        return
    out.mkdir(parents=True, exist_ok=True)
    with (out / f"{FILE}.tmp").open("w") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
    os.replace(out / f"{FILE}.tmp", path)


def format_rephrase(r: dict) -> str:
    """metrics.json's ``rephrase`` as lines under evaluate's table: each rewrite's VQA accuracy
    and its difference to the original wording, then the consistency."""
    lines = [f"rephrased: {r['n_variants']} questions from {r['n_questions']} (--rephrase, data/rephrase.py)"]
    for name, m in r.items():
        if isinstance(m, dict):
            d = m["difference"].get("vqa_accuracy", {"mean": 0.0, "ci95": [0.0, 0.0]})
            lo, hi = d["ci95"]
            lines.append(
                f"  {name:<14} n {m['n']:>5}  vqa_accuracy {m.get('vqa_accuracy', 0.0):.4f}  "
                f"vs original {d['mean']:+.4f} (95% CI {lo:+.4f}, {hi:+.4f})"
            )
    lines.append(
        f"  consistency {r['consistency']:.4f} (same answer under every wording), "
        f"consistent and right {r['consistent_and_right']:.4f}"
    )
    return "\n".join(lines)
