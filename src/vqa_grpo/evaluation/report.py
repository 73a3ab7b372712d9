"""``vqa-grpo report RUN_DIR``: one self-contained ``report.html`` per training run.

The page holds, from what exists (each missing piece is named on the page instead):

* training curves from ``RUN_DIR/metrics.jsonl`` (reward mean and per component, KL, loss,
  completion length, entropy, eval accuracy over steps), drawn with matplotlib's Agg canvas and
  also written as ``RUN_DIR/plots/<name>.png``;
* the per-type table: VQA accuracy with its 95% bootstrap CI and n, overall, per answer type and
  per question type, from the ``metrics.json`` of ``--before`` and ``--after`` (outputs of
  ``vqa-grpo evaluate --out``), and the paired difference after - before (``compare.py``);
* a gallery of examples joined by id from the two ``predictions.jsonl``: image thumbnail (from
  ``--data``), question, ground truth, the answer before and after with its VQA accuracy, and a
  small inline script that sorts it (largest gains, largest losses, by id). With more joined
  examples than ``max_examples``, the gallery keeps the largest gains and losses and an even spread
  of the rest.

Self-contained: every image is a base64 ``data:`` URI, the style and script are inline, and a
Content-Security-Policy forbids any other source, so the file opens offline and fetches nothing.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
from collections import Counter
from pathlib import Path

from vqa_grpo.errors import UserError
from vqa_grpo.evaluation.compare import SEED, compare_runs, load_eval_dir

MAX_EXAMPLES = 60
THUMBNAIL_PX = 128
REPORT_BOOTSTRAP_SAMPLES = 2_000
# name, title, [(label, metrics.jsonl key)]; "reward/*" expands to every logged reward component.
PLOTS = (
    ("reward", "Reward: mean and per component", [("mean", "reward"), ("*", "reward/*")]),
    ("kl", "KL to the reference policy", [("kl", "kl")]),
    ("loss", "Loss", [("loss", "loss")]),
    ("completion_length", "Completion length (tokens)", [("mean", "completion_length")]),
    ("entropy", "Token entropy of the completions", [("entropy", "entropy")]),
    ("eval_accuracy", "Eval accuracy over steps", [("vqa_accuracy", "eval/vqa_accuracy"), ("composite", "eval/composite")]),
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
    """[(name, title, png, why it is empty or None)] for every plot of PLOTS, written to
    run_dir/plots/<name>.png; and notes for the page."""
    log = run_dir / "metrics.jsonl"
    train, evals, bad = read_training_log(log)
    notes = []
    if not log.is_file():
        notes.append(f"no metrics.jsonl in {run_dir}: the training curves are empty")
    if bad:
        notes.append(f"{bad} unreadable line(s) in metrics.jsonl were skipped")
    out_dir = run_dir / "plots"
    out_dir.mkdir(parents=True, exist_ok=True)
    plots = []
    for name, title, spec in PLOTS:
        lines: dict[str, tuple[list, list]] = {}
        for label, key in spec:
            if key.endswith("/*"):
                prefix = key[:-1]
                # reward/<component>, not the composite's own parts (reward/composite/bleu1, ...)
                parts = sorted({k for r in train for k in r if k.startswith(prefix) and "/" not in k[len(prefix):]})
                lines.update({k[len(prefix):]: _series(train, k) for k in parts})
            else:
                lines[label] = _series(evals if key.startswith("eval/") else train, key)
        keys = ", ".join(k for _, k in spec)
        empty = f"no {keys} in metrics.jsonl" if log.is_file() else "no metrics.jsonl in the run directory"
        if name == "eval_accuracy" and log.is_file() and not evals:
            empty = "no eval lines in metrics.jsonl"
        png = plot_curves(title, lines, empty)
        (out_dir / f"{name}.png").write_bytes(png)
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
        rows.append({"id": i, "question": base.get("question", ""), "answers": base.get("answers", []),
                     "before": b, "after": a, "gain": gain})
    return rows


def _score(row: dict) -> float:
    v = row.get("vqa_accuracy")
    return float(v) if isinstance(v, (int, float)) and math.isfinite(v) else 0.0


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


def load_thumbnails(data_path: str, ids: set[str], size: int = THUMBNAIL_PX) -> tuple[dict[str, str], list[str]]:
    """id -> JPEG data URI for ``ids`` found in ``data_path``; images that fail are left out."""
    from vqa_grpo.config import DataConfig
    from vqa_grpo.data.loader import load_examples
    from vqa_grpo.data.types import BadExample

    examples, _ = load_examples(data_path, DataConfig(max_skip_fraction=1.0))  # skips are fine here
    by_id = {e.id: e for e in examples if e.id in ids}
    uris, failed = {}, []
    for key, example in by_id.items():
        try:
            image = example.load_image()
        except BadExample:
            failed.append(key)
            continue
        image = image.convert("RGB")
        image.thumbnail((size, size))
        buf = io.BytesIO()
        image.save(buf, format="JPEG", quality=85)
        uris[key] = "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")
    notes = []
    missing = len(ids) - len(by_id)
    if missing:
        notes.append(f"{missing} gallery example(s) have no row in {data_path} (skipped at load or another data set)")
    if failed:
        notes.append(f"{len(failed)} gallery image(s) failed to load: " + ", ".join(failed[:5]))
    return uris, notes


# ----------------------------------------------------------------------------------------------
# HTML.


def _e(text) -> str:
    return html.escape(str(text), quote=True)


def _answers_text(answers) -> str:
    if isinstance(answers, str):
        return answers
    counts = Counter(str(a.get("answer")) if isinstance(a, dict) else str(a) for a in answers or [])
    return " / ".join(f"{a} \u00d7{n}" if n > 1 else a for a, n in counts.most_common())


def _pct(v) -> str:
    return f"{100 * v:.1f}" if isinstance(v, (int, float)) else "-"


def _ci(m: dict | None) -> str:
    ci = ((m or {}).get("ci95") or {}).get("vqa_accuracy")
    return f"[{_pct(ci[0])}, {_pct(ci[1])}]" if isinstance(ci, list) and len(ci) == 2 else "-"


def _type_table(title: str, groups: list[tuple[str, dict | None, dict | None, dict | None]], has_before: bool) -> str:
    """Rows (name, before metrics, after metrics, paired difference) as an HTML table."""
    head = "<tr><th>type</th><th>n</th>"
    if has_before:
        head += "<th>before</th><th>95% CI</th>"
    head += "<th>after</th><th>95% CI</th><th>after composite</th>"
    if has_before:
        head += "<th>after \u2212 before</th><th>95% CI</th><th>p</th>"
    body = []
    for name, b, a, d in groups:
        n = (a or b or {}).get("n", "-")
        cells = [f"<td>{_e(name)}</td>", f"<td class=num>{_e(n)}</td>"]
        if has_before:
            cells += [f"<td class=num>{_pct((b or {}).get('vqa_accuracy'))}</td>", f"<td class=num>{_ci(b)}</td>"]
        cells += [f"<td class=num>{_pct((a or {}).get('vqa_accuracy'))}</td>", f"<td class=num>{_ci(a)}</td>",
                  f"<td class=num>{_pct((a or {}).get('composite'))}</td>"]
        if has_before:
            t = (d or {}).get("vqa_accuracy")
            if t:
                lo, hi = t["ci95"]
                cells += [f"<td class=num>{100 * t['mean']:+.1f}</td>",
                          f"<td class=num>[{100 * lo:+.1f}, {100 * hi:+.1f}]</td>", f"<td class=num>{t['p_value']:.4f}</td>"]
            else:
                cells += ["<td class=num>-</td>"] * 3
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f"<h3>{_e(title)}</h3>\n<table>\n{head}</tr>\n" + "\n".join(body) + "\n</table>"


def _types_section(before: dict | None, after: dict | None, diff: dict | None) -> str:
    if before is None and after is None:
        return ("<p class=note>No evaluation given: pass --after EVAL_DIR (and --before EVAL_DIR), "
                "output directories of <code>vqa-grpo evaluate --out</code>.</p>")
    has_before = before is not None and after is not None
    if after is None:  # only a before evaluation: show it in the "after" columns' place
        after, before = before, None
    parts = ["<p>VQA accuracy in percent (official metric); 95% CI: bootstrap over questions (evaluate). "
             + (f"after \u2212 before: paired bootstrap over the shared questions ({REPORT_BOOTSTRAP_SAMPLES:,} resamples, "
                f"seed {SEED}), two-sided p; see vqa_grpo/evaluation/compare.py." if has_before else "")
             + "</p>"]
    # metrics.json holds ci95 = {metric: [low, high]} at the top and in every type alike.
    parts.append(_type_table("Overall", [("overall", before, after, (diff or {}).get("overall"))], has_before))
    for key, title in (("per_answer_type", "Per answer type"), ("per_question_type", "Per question type")):
        b_types, a_types, d_types = ((m or {}).get(key) or {} for m in (before, after, diff))
        groups = [(t, b_types.get(t), a_types.get(t), d_types.get(t)) for t in sorted(set(a_types) | set(b_types))]
        parts.append(_type_table(title, groups, has_before) if groups else f"<p class=note>No {key} in metrics.json.</p>")
    return "\n".join(parts)


def _gallery_section(rows: list[dict], thumbs: dict[str, str], has_before: bool, has_after: bool, total: int) -> str:
    if not rows:
        return "<p class=note>No predictions to show: pass --before/--after EVAL_DIR.</p>"
    both = has_before and has_after
    if both:
        buttons = [("gain", "-1", "largest gains"), ("gain", "1", "largest losses"), ("id", "1", "by id")]
    else:
        buttons = [("gain", "-1", "highest score"), ("gain", "1", "lowest score"), ("id", "1", "by id")]
    bar = " ".join(
        f'<button type=button data-sort="{k}" data-direction="{d}" aria-pressed="{str(i == 0).lower()}">{_e(t)}</button>'
        for i, (k, d, t) in enumerate(buttons)
    )
    head = "<tr><th>image</th><th>id</th><th>question</th><th>ground truth</th>"
    head += ("<th>before</th>" if has_before else "") + ("<th>after</th>" if has_after else "")
    head += ("<th>\u0394 accuracy</th>" if both else "") + "</tr>"
    body = []
    for r in rows:
        uri = thumbs.get(r["id"])
        img = f'<img src="{uri}" alt="image of {_e(r["id"])}">' if uri else "<span class=note>no image</span>"
        cells = [f"<td>{img}</td>", f"<td>{_e(r['id'])}</td>", f"<td>{_e(r['question'])}</td>",
                 f"<td>{_e(_answers_text(r['answers']))}</td>"]
        for side, present in (("before", has_before), ("after", has_after)):
            if present:
                p = r[side] or {}
                raw = p.get("raw")
                tip = f' title="raw: {_e(raw)}"' if isinstance(raw, str) and raw != p.get("prediction") else ""
                cells.append(f"<td{tip}>{_e(p.get('prediction', ''))}<br><span class=score>acc {_score(p):.2f}</span></td>")
        if both:
            cls = "gain" if r["gain"] > 0 else "loss" if r["gain"] < 0 else ""
            cells.append(f"<td class='num {cls}'>{r['gain']:+.2f}</td>")
        body.append(f'<tr data-id="{_e(r["id"])}" data-gain="{r["gain"]!r}">' + "".join(cells) + "</tr>")
    shown = f"{len(rows)} of {total} questions"
    if total > len(rows):
        shown += " (the largest gains and losses and a spread of the rest)"
    return (f"<p>{shown}. Sort: {bar}</p>\n<table class=gallery>\n<thead>{head}</thead>\n<tbody id=gallery-body>\n"
            + "\n".join(body) + "\n</tbody>\n</table>")


_STYLE = """
body { font-family: system-ui, sans-serif; margin: 1.5em auto; max-width: 1200px; color: #222; padding: 0 1em; }
h1 { font-size: 1.5em; } h2 { margin-top: 1.6em; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; margin: 0.5em 0 1em; font-size: 0.9em; }
th, td { border: 1px solid #ddd; padding: 0.25em 0.6em; text-align: left; vertical-align: top; }
th { background: #f4f4f4; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
.plots { display: grid; grid-template-columns: repeat(auto-fill, minmax(480px, 1fr)); gap: 0.8em; }
.plots img { width: 100%; border: 1px solid #eee; }
.gallery img { max-width: 128px; height: auto; }
.note { color: #777; } .score { color: #666; font-size: 0.85em; }
.gain { color: #1a7f37; } .loss { color: #c62828; }
button[aria-pressed=true] { font-weight: bold; }
"""

# Sorts the gallery rows by a data attribute; ties by id. Plain ES5, guarded when there is no gallery.
_SCRIPT = """
(function () {
  "use strict";
  var body = document.getElementById("gallery-body");
  if (!body) { return; }
  var buttons = document.querySelectorAll("button[data-sort]");
  function key(row, name) {
    return name === "id" ? row.getAttribute("data-id") : parseFloat(row.getAttribute("data-" + name));
  }
  function sortRows(name, direction) {
    var rows = Array.prototype.slice.call(body.rows);
    rows.sort(function (a, b) {
      var x = key(a, name), y = key(b, name);
      if (x < y) { return -direction; }
      if (x > y) { return direction; }
      var i = a.getAttribute("data-id"), j = b.getAttribute("data-id");
      return i < j ? -1 : (i > j ? 1 : 0);
    });
    rows.forEach(function (row) { body.appendChild(row); });
  }
  Array.prototype.forEach.call(buttons, function (button) {
    button.addEventListener("click", function () {
      sortRows(button.getAttribute("data-sort"), Number(button.getAttribute("data-direction")));
      Array.prototype.forEach.call(buttons, function (other) {
        other.setAttribute("aria-pressed", String(other === button));
      });
    });
  });
})();
"""


def _png_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


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
    evals = {name: load_eval_dir(p) if p else None for name, p in (("before", before), ("after", after))}
    plots, notes = training_plots(run)
    diff = None
    if before and after:
        diff = compare_runs([before, after], samples=REPORT_BOOTSTRAP_SAMPLES, seed=SEED)["differences"][0]
    elif not before:
        notes.append("no --before evaluation: no before column")
    if not after:
        notes.append("no --after evaluation" + (": the before evaluation is shown alone" if before else ""))
    metrics = {k: v[0] if v else None for k, v in evals.items()}
    joined = join_predictions(*(evals[k][1] if evals[k] else None for k in ("before", "after")))
    shown = select_examples(joined, max_examples)
    thumbs: dict[str, str] = {}
    if data_path and shown:
        thumbs, more = load_thumbnails(data_path, {r["id"] for r in shown})
        notes += more
    elif shown:
        notes.append("no --data: the gallery has no images")

    config = run / "config.yaml"
    config_html = ""
    if config.is_file():
        text = config.read_text(encoding="utf-8", errors="replace")
        config_html = f"<details><summary>config.yaml</summary><pre>{_e(text)}</pre></details>"
    sources = "; ".join(f"{label}: <code>{_e(value or '-')}</code>"
                        for label, value in (("before", before), ("after", after), ("data", data_path)))
    figures = "\n".join(
        f'<figure><img src="{_png_uri(png)}" alt="{_e(title)}"><figcaption>plots/{name}.png'
        + (f" ({_e(empty)})" if empty else "") + "</figcaption></figure>"
        for name, title, png, empty in plots
    )
    page = f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="{_CSP}">
<title>vqa-grpo report: {_e(run.resolve().name)}</title>
<style>{_STYLE}</style>
</head>
<body>
<h1>vqa-grpo report: {_e(run.resolve().name)}</h1>
<p>Run directory <code>{_e(run)}</code>; {sources}.</p>
{config_html}
{''.join(f'<p class=note>{_e(n)}</p>' for n in notes)}
<h2>Training curves</h2>
<div class=plots>
{figures}
</div>
<h2>Accuracy by type</h2>
{_types_section(metrics['before'], metrics['after'], diff)}
<h2>Examples</h2>
{_gallery_section(shown, thumbs, before is not None, after is not None, len(joined))}
<script>{_SCRIPT}</script>
</body>
</html>
"""
    path = Path(out) if out else run / "report.html"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(page, encoding="utf-8")
    return path
