"""``vqa-grpo report RUN_DIR``: one self-contained ``report.html`` per training run.

The page holds, from what exists (each missing piece is named on the page instead):

* training curves from ``RUN_DIR/metrics.jsonl`` (reward mean and per component, KL, loss,
  completion length, entropy, eval accuracy over steps), drawn with matplotlib's Agg canvas and
  also written as ``RUN_DIR/plots/<name>.png``;
* the per-type table: VQA accuracy with its 95% bootstrap CI and n, overall, per answer type and
  per question type, from the ``metrics.json`` of ``--before`` and ``--after`` (outputs of
  ``vqa-grpo evaluate --out``), and the paired difference after - before (``compare.py``);
* a gallery of examples joined by id from the two ``predictions.jsonl``: a thumbnail of each
  image (a video's first, middle and last frames; from ``--data``), question, ground truth, the
  answer before and after with its VQA accuracy, and a small inline script that sorts it (largest
  gains, largest losses, by id). With more joined examples than ``max_examples``, the gallery
  keeps the largest gains and losses and an even spread of the rest;
* with ``evaluate --perturb`` evaluations, accuracy against severity per perturbation
  (``plots/robustness.png``) and its table (robustness_view.py).

Self-contained: every image is a base64 ``data:`` URI, the style and script are inline, and a
Content-Security-Policy forbids any other source, so the file opens offline and fetches nothing.
"""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path

from vqa_grpo.config import DataConfig
from vqa_grpo.data.loader import load_examples
from vqa_grpo.data.types import BadExample, Video
from vqa_grpo.errors import UserError
from vqa_grpo.evaluation.compare import compare_runs, load_eval_dir
from vqa_grpo.evaluation.report_html import (  # the page's HTML pieces
    _SCRIPT,
    _STYLE,
    _gallery_section,
    _score,
    _types_section,
    escape_html,
    png_uri,
)
from vqa_grpo.evaluation.robustness_view import report_section
from vqa_grpo.paths import check_file

MAX_EXAMPLES = 60
THUMBNAIL_PX = 128
VIDEO_FRAMES_SHOWN = 3
"""A video's frames in the gallery: its first, middle and last."""
# name, title, [(label, metrics.jsonl key)]; "reward/*" expands to every logged reward component.
PLOTS = (
    ("reward", "Reward: mean and per component", [("mean", "reward"), ("*", "reward/*")]),
    ("kl", "KL to the reference policy", [("kl", "kl")]),
    ("loss", "Loss", [("loss", "loss")]),
    ("completion_length", "Completion length (tokens)", [("mean", "completion_length")]),
    ("entropy", "Token entropy of the completions", [("entropy", "entropy")]),
    (
        "eval_accuracy",
        "Eval accuracy over steps",
        [("vqa_accuracy", "eval/vqa_accuracy"), ("composite", "eval/composite")],
    ),
)
_CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'; script-src 'unsafe-inline'"


# ----------------------------------------------------------------------------------------------
# Training curves.


def read_training_log(path: Path) -> tuple[list[dict], list[dict], int]:
    """(training records, eval records, unreadable lines) of a metrics.jsonl.

    A resumed run appends to the file, so a step can appear twice: the last record of each step wins.
    Eval records are those with an ``eval/...`` key.
    """
    train: dict[int, dict] = {}
    evals: dict[int, dict] = {}
    bad = 0
    if not path.is_file():
        return [], [], 0
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            bad += 1
            continue
        if not isinstance(record, dict) or not isinstance(record.get("step"), (int, float)):
            bad += 1
            continue
        target = evals if any(str(k).startswith("eval/") for k in record) else train
        target[int(record["step"])] = record
    return [train[s] for s in sorted(train)], [evals[s] for s in sorted(evals)], bad


def _series(records: list[dict], key: str) -> tuple[list[int], list[float]]:
    xs, ys = [], []
    for r in records:
        v = r.get(key)
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            xs.append(r["step"])
            ys.append(float(v))
    return xs, ys


def plot_curves(title: str, lines: dict[str, tuple[list, list]], empty: str) -> bytes:
    """A PNG of ``lines`` (label -> (steps, values)) over steps, or of the ``empty`` message."""
    # matplotlib is imported here, where a plot is drawn: judge.py imports this module for thumbnails
    from matplotlib.figure import Figure  # the Agg canvas, without pyplot's global state
    from matplotlib.ticker import MaxNLocator

    fig = Figure(figsize=(6.0, 3.2), dpi=100)
    ax = fig.add_subplot()
    ax.set_title(title, fontsize=11)
    drawn = {k: v for k, v in lines.items() if v[0]}
    if not drawn:
        ax.axis("off")
        ax.text(0.5, 0.5, empty, ha="center", va="center", fontsize=10, wrap=True, transform=ax.transAxes)
    else:
        for label, (xs, ys) in drawn.items():
            ax.plot(xs, ys, label=label, marker="o" if len(xs) <= 20 else None, markersize=3, linewidth=1.2)
        ax.set_xlabel("step")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        if len(drawn) > 1:
            ax.legend(fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def training_plots(run_dir: Path) -> tuple[list[tuple[str, str, bytes, str | None]], list[str]]:
    """[(name, title, png, why it is empty or None)] for every plot of PLOTS (the caller writes
    them to run_dir/plots/<name>.png); and notes for the page."""
    log = run_dir / "metrics.jsonl"
    train, evals, bad = read_training_log(log)
    notes = []
    if not log.is_file():
        notes.append(f"no metrics.jsonl in {run_dir}: the training curves are empty")
    if bad:
        notes.append(f"{bad} unreadable line(s) in metrics.jsonl were skipped")
    plots = []
    for name, title, spec in PLOTS:
        lines: dict[str, tuple[list, list]] = {}
        for label, key in spec:
            if key.endswith("/*"):
                prefix = key[:-1]
                # reward/<component>, not the composite's own parts (reward/composite/bleu1, ...)
                parts = sorted({k for r in train for k in r if k.startswith(prefix) and "/" not in k[len(prefix) :]})
                lines.update({k[len(prefix) :]: _series(train, k) for k in parts})
            else:
                lines[label] = _series(evals if key.startswith("eval/") else train, key)
        keys = ", ".join(k for _, k in spec)
        empty = f"no {keys} in metrics.jsonl" if log.is_file() else "no metrics.jsonl in the run directory"
        if name == "eval_accuracy" and log.is_file() and not evals:
            empty = "no eval lines in metrics.jsonl"
        png = plot_curves(title, lines, empty)
        plots.append((name, title, png, None if any(xs for xs, _ in lines.values()) else empty))
    return plots, notes


# ----------------------------------------------------------------------------------------------
# The gallery: predictions joined by id, images from the data.


def join_predictions(before: list[dict] | None, after: list[dict] | None) -> list[dict]:
    """One row per question: {"id", "question", "answers", "before", "after", "gain"}.

    With both runs, the ids both hold (in the order of ``after``) and gain = after - before VQA
    accuracy; with one run, its rows and gain = its VQA accuracy (for sorting). The first row of
    a repeated id wins.
    """

    def by_id(rows: list[dict] | None) -> dict[str, dict]:
        out: dict[str, dict] = {}
        for r in rows or []:
            out.setdefault(str(r["id"]), r)
        return out

    b_rows, a_rows = by_id(before), by_id(after)
    ids = [i for i in a_rows if i in b_rows] if before is not None and after is not None else list(a_rows or b_rows)
    rows = []
    for i in ids:
        b, a = b_rows.get(i), a_rows.get(i)
        gain = _score(a) - _score(b) if a is not None and b is not None else _score(a or b)
        base = a or b
        rows.append(
            {
                "id": i,
                "question": base.get("question", ""),
                "answers": base.get("answers", []),
                "before": b,
                "after": a,
                "gain": gain,
            }
        )
    return rows


def select_examples(rows: list[dict], limit: int) -> list[dict]:
    """At most ``limit`` rows, by largest gain first: the top third, the bottom third, and the
    rest spread evenly over the middle (deterministic)."""
    ordered = sorted(rows, key=lambda r: (-r["gain"], r["id"]))
    if len(ordered) <= limit:
        return ordered
    k = limit // 3
    top, bottom, middle = ordered[:k], ordered[len(ordered) - k :], ordered[k : len(ordered) - k]
    rest = limit - 2 * k
    step = len(middle) / rest
    return top + [middle[int(i * step)] for i in range(rest)] + bottom


def load_thumbnails(data_path: str, ids: set[str], size: int = THUMBNAIL_PX) -> tuple[dict[str, list[str]], list[str]]:
    """id -> JPEG data URIs for ``ids`` found in ``data_path``: one per image of the question, in
    order, and up to ``VIDEO_FRAMES_SHOWN`` frames of its video (first, middle, last), each at
    most ``size`` px a side; an example any of whose visuals fails is left out, as is a text-only one."""
    examples, _ = load_examples(data_path, DataConfig(max_skip_fraction=1.0))  # skips are fine here
    by_id = {e.id: e for e in examples if e.id in ids}
    uris, failed = {}, []
    for key, example in by_id.items():
        try:
            visuals = example.load_visuals()
        except BadExample:
            failed.append(key)
            continue
        shown = [frame for v in visuals for frame in (_frames_shown(v) if isinstance(v, Video) else [v])]
        if shown:
            uris[key] = [_jpeg_uri(image, size) for image in shown]
    notes = []
    missing = len(ids) - len(by_id)
    if missing:
        notes.append(f"{missing} gallery example(s) have no row in {data_path} (skipped at load or another data set)")
    if failed:
        notes.append(f"{len(failed)} gallery image(s) failed to load: " + ", ".join(failed[:5]))
    return uris, notes


def _frames_shown(video: Video) -> list:
    """A video's first, middle and last frames (fewer for a shorter clip)."""
    n = len(video.frames)
    picks = dict.fromkeys(round(i * (n - 1) / (VIDEO_FRAMES_SHOWN - 1)) for i in range(VIDEO_FRAMES_SHOWN))
    return [video.frames[i] for i in picks] if n else []


def _jpeg_uri(image, size: int) -> str:
    image = image.convert("RGB")
    image.thumbnail((size, size))
    buf = io.BytesIO()
    image.save(buf, format="JPEG", quality=85)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


# ----------------------------------------------------------------------------------------------
# The page (its HTML pieces: report_html.py).


def write_report(
    run_dir: str,
    *,
    before: str | None = None,
    after: str | None = None,
    data_path: str | None = None,
    out: str | None = None,
    max_examples: int = MAX_EXAMPLES,
) -> Path:
    """Write the report of ``run_dir`` (default ``RUN_DIR/report.html``) and its plots; return its path.

    ``before``/``after``: evaluate output dirs; ``data_path``: the data those ids come from, for
    the images. Raises UserError (one line) when run_dir is not a directory, or a given evaluation
    directory or data path cannot be read.
    """
    run = Path(run_dir)
    if not run.is_dir():
        raise UserError(f"run directory not found: {run_dir}")
    if not (run / "config.yaml").is_file() and not (run / "metrics.jsonl").is_file():
        raise UserError(
            f"{run_dir} is not a training run directory (it holds neither config.yaml nor metrics.jsonl); "
            "give the train.output_dir of a `vqa-grpo train` or `sft` run"
        )
    path = Path(out) if out else run / "report.html"
    check_file(path, "--out")
    if data_path and not data_path.startswith("hf:") and not Path(data_path).exists():
        raise UserError(f"--data {data_path} not found; give the data both evaluations ran on, or leave --data out")
    evals = {name: load_eval_dir(p) if p else None for name, p in (("before", before), ("after", after))}
    plots, notes = training_plots(run)
    diff = None
    if before and after:
        # compare's own defaults (resamples, seed): `vqa-grpo compare BEFORE AFTER` gives the same p-values
        diff = compare_runs([before, after])["differences"][0]
    elif not before:
        notes.append("no --before evaluation: no before column")
    if not after:
        notes.append("no --after evaluation" + (": the before evaluation is shown alone" if before else ""))
    metrics = {k: v[0] if v else None for k, v in evals.items()}
    robust = report_section(metrics["before"], metrics["after"])  # evaluate --perturb: (html, png) or None
    robust_html = f"<h2>Robustness to perturbed images</h2>\n{robust[0]}" if robust else ""
    joined = join_predictions(*(evals[k][1] if evals[k] else None for k in ("before", "after")))
    shown = select_examples(joined, max_examples)
    thumbs: dict[str, list[str]] = {}
    if data_path and shown:
        thumbs, more = load_thumbnails(data_path, {r["id"] for r in shown})
        notes += more
    elif shown:
        notes.append("no --data: the gallery has no images")

    config = run / "config.yaml"
    config_html = ""
    if config.is_file():
        text = config.read_text(encoding="utf-8", errors="replace")
        config_html = f"<details><summary>config.yaml</summary><pre>{escape_html(text)}</pre></details>"
    sources = "; ".join(
        f"{label}: <code>{escape_html(value or '-')}</code>"
        for label, value in (("before", before), ("after", after), ("data", data_path))
    )
    figures = "\n".join(
        f'<figure><img src="{png_uri(png)}" alt="{escape_html(title)}"><figcaption>plots/{name}.png'
        + (f" ({escape_html(empty)})" if empty else "")
        + "</figcaption></figure>"
        for name, title, png, empty in plots
    )
    page = f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="{_CSP}">
<title>vqa-grpo report: {escape_html(run.resolve().name)}</title>
<style>{_STYLE}</style>
</head>
<body>
<h1>vqa-grpo report: {escape_html(run.resolve().name)}</h1>
<p>Run directory <code>{escape_html(run)}</code>; {sources}.</p>
{config_html}
{"".join(f"<p class=note>{escape_html(n)}</p>" for n in notes)}
<h2>Training curves</h2>
<div class=plots>
{figures}
</div>
<h2>Accuracy by type</h2>
{_types_section(metrics["before"], metrics["after"], diff)}
{robust_html}
<h2>Examples</h2>
{_gallery_section(shown, thumbs, before is not None, after is not None, len(joined))}
<script>{_SCRIPT}</script>
</body>
</html>
"""
    (run / "plots").mkdir(exist_ok=True)
    for name, _, png, _ in plots:
        (run / "plots" / f"{name}.png").write_bytes(png)
    if robust:
        (run / "plots" / "robustness.png").write_bytes(robust[1])
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(page, encoding="utf-8")
    return path
