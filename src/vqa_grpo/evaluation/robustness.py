"""``evaluate --perturb`` (eval.perturb): the same questions asked on perturbed images.

Each NAME:SEVERITY of eval.perturb (data/perturb.py) is one more pass over the questions the
clean pass answered: every image is perturbed as it is opened for answering (nothing is copied
to disk), each image of a question's list and each frame of its video as a lone image
(grpo/augment.py ``perturb_visuals``), with the seed ``perturb_seed(example id, name, severity,
train.seed)``, so that two models evaluated with the same train.seed see the same perturbed
images and ``compare`` can pair their answers. metrics.json's ``robustness`` maps each ``NAME:SEVERITY`` to:

* ``n``: the questions answered on the perturbed images; ``skipped``: the questions whose
  perturbed image failed to load or that the model's processor could not take;
* each metric's mean over those questions (``vqa_accuracy``, the composite and its parts, the
  benchmark metrics, your own);
* ``difference``: for ``vqa_accuracy`` and the primary metric, {mean, ci95, p_value} of the paired
  difference perturbed - clean over those questions (paired.py's paired bootstrap,
  eval.bootstrap_samples resamples, seed 0);
* ``seed``: the train.seed the images were perturbed with; ``compare`` pairs two runs' passes
  only when their seeds are the same (other seeds, other images).

predictions_perturbed.jsonl has one row per question and perturbation: the question's ``id``,
``perturbation`` (NAME:SEVERITY), its question, answers and types, ``raw``, ``prediction`` and
each metric's score.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from vqa_grpo.data.perturb import label, parse_perturbations, perturb_seed
from vqa_grpo.data.types import Video, VQAExample
from vqa_grpo.errors import UserError
from vqa_grpo.evaluation.answering import answer_and_score
from vqa_grpo.evaluation.paired import paired_pass
from vqa_grpo.grpo.augment import perturb_visuals

FILE = "predictions_perturbed.jsonl"


@dataclass(frozen=True)
class PerturbedLoader:
    """Opens an example's image (or video) and perturbs it (each frame), on each call (nothing
    kept). Picklable, so data loader workers can receive it, as ``data.images.ImageLoader``."""

    inner: Callable[[], Image.Image | Video]
    name: str
    severity: int
    seed: int  # perturb_seed(...) of the example

    def __call__(self) -> Image.Image | Video:
        return perturb_visuals(self.inner(), self.name, self.severity, self.seed)


def perturbed(e: VQAExample, name: str, severity: int, seed: int) -> VQAExample:
    """``e`` (the same id: user metrics see it) with every image and its video perturbed as they open."""

    def wrap(loader):
        return None if loader is None else PerturbedLoader(loader, name, severity, seed)

    return dataclasses.replace(
        e,
        image_loader=wrap(e.image_loader),
        image_loaders=tuple(wrap(f) for f in e.image_loaders),
        video_loader=wrap(e.video_loader),
    )


def check_robustness(lm, clean, cfg, device, dist=None) -> tuple[dict, list[dict]]:
    """``(metrics.json's "robustness", predictions_perturbed.jsonl's rows)`` for ``clean``
    (answering.Answered: the examples as answered on the clean images, and their scores). All the
    passes go through one batched ``answer_and_score`` call."""

    asked: list[tuple[int, str]] = []  # (index into clean.examples, NAME:SEVERITY) of each variant
    variants = []
    for name, severity in parse_perturbations(cfg.eval.perturb):
        for i, e in enumerate(clean.examples):
            seed = perturb_seed(e.id, name, severity, cfg.train.seed)
            asked.append((i, label(name, severity)))
            variants.append(perturbed(e, name, severity, seed))
    got = answer_and_score(lm, variants, cfg, device, dist) if variants else None
    answered = [] if got is None else [(asked[position], k) for k, position in enumerate(got.positions)]
    rows = []
    for (i, lab), k in answered:
        e = clean.examples[i]
        rows.append(
            {
                "id": e.id,
                "perturbation": lab,
                "question": e.question,
                "answers": e.answers,
                "answer_type": e.answer_type,
                "question_type": e.question_type,
                "raw": got.raw[k],
                "prediction": got.predictions[k],
                **{m: None if np.isnan(v[k]) else float(v[k]) for m, v in got.scores.items()},
            }
        )
    shown = list(dict.fromkeys(["vqa_accuracy", cfg.train.eval_metric or "vqa_accuracy"]))
    out: dict = {}
    for lab in dict.fromkeys(lab for _, lab in asked):  # in eval.perturb's order
        pairs = [(i, k) for (i, done), k in answered if done == lab]
        tried = sum(1 for _, done in asked if done == lab)
        means, difference = paired_pass(
            pairs, clean.scores, got.scores if got else {}, shown, cfg.eval.bootstrap_samples
        )
        out[lab] = {
            "n": len(pairs),
            **means,
            "difference": difference,
            "skipped": tried - len(pairs),
            "seed": cfg.train.seed,
        }
    return out, rows


def load_perturbed(eval_dir: str | Path) -> dict[str, list[dict]] | None:
    """An evaluation's perturbed predictions by NAME:SEVERITY, or None without the file."""
    path = Path(eval_dir) / FILE
    if not path.is_file():
        return None
    out: dict[str, list[dict]] = {}
    try:
        with path.open(encoding="utf-8") as f:
            for number, line in enumerate(f, 1):
                if not line.strip():
                    continue
                row = json.loads(line)
                if not isinstance(row, dict) or "id" not in row or not isinstance(row.get("perturbation"), str):
                    raise UserError(f"{path} line {number}: expected a JSON object with an 'id' and a 'perturbation'")
                out.setdefault(row["perturbation"], []).append(row)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UserError(f"cannot read {path}: {type(e).__name__}: {e}".splitlines()[0]) from None
    return out


def format_robustness(r: dict, primary: str | None = None) -> str:
    """metrics.json's ``robustness`` as lines under evaluate's table: one per pass and metric
    (vqa_accuracy, and ``primary`` too when it is another), its mean and its difference to the
    clean images."""
    lines = [f"perturbed images: {len(r)} pass(es) (--perturb, data/perturb.py); difference to the clean images"]
    for lab, m in r.items():
        for metric in dict.fromkeys(["vqa_accuracy", primary or "vqa_accuracy"]):
            d = m["difference"].get(metric)
            if d is None:
                continue
            lo, hi = d["ci95"]
            lines.append(
                f"  {lab:<17} n {m['n']:>5}  {metric} {m.get(metric, 0.0):.4f}  "
                f"vs clean {d['mean']:+.4f} (95% CI {lo:+.4f}, {hi:+.4f}, p {d['p_value']:.4f})"
            )
    return "\n".join(lines)
