"""The HTML pieces of report.html (report.py gathers the data): escaping, the per-type tables, the
gallery, the inline style and script. Everything is inline: the page loads nothing."""

from __future__ import annotations

import base64
import html
import math
from collections import Counter

from vqa_grpo.evaluation.paired import BOOTSTRAP_SAMPLES, SEED


def _score(row: dict) -> float:
    v = row.get("vqa_accuracy")
    return float(v) if isinstance(v, (int, float)) and math.isfinite(v) else 0.0


def escape_html(text) -> str:
    """``text`` safe inside HTML, attribute values included (the report, robustness and judge pages)."""
    return html.escape(str(text), quote=True)


def answers_text(answers) -> str:
    """A question's reference answers as one line, each distinct answer once with its count."""
    if isinstance(answers, str):
        return answers
    counts = Counter(str(a.get("answer")) if isinstance(a, dict) else str(a) for a in answers or [])
    return " / ".join(f"{a} \u00d7{n}" if n > 1 else a for a, n in counts.most_common())


def pct(v) -> str:
    """A share as a percentage with one decimal, "-" for a missing value."""
    return f"{100 * v:.1f}" if isinstance(v, (int, float)) else "-"


def _ci(m: dict | None, metric: str = "vqa_accuracy") -> str:
    ci = ((m or {}).get("ci95") or {}).get(metric)
    return f"[{pct(ci[0])}, {pct(ci[1])}]" if isinstance(ci, list) and len(ci) == 2 else "-"


def _type_table(
    title: str,
    groups: list[tuple[str, dict | None, dict | None, dict | None]],
    has_before: bool,
    metric: str = "vqa_accuracy",
) -> str:
    """Rows (name, before metrics, after metrics, paired difference) as an HTML table of ``metric``."""
    head = "<tr><th>type</th><th>n</th>"
    if has_before:
        head += "<th>before</th><th>95% CI</th>"
    head += "<th>after</th><th>95% CI</th><th>after composite</th>"
    if has_before:
        head += "<th>after \u2212 before</th><th>95% CI</th><th>p</th>"
    body = []
    for name, b, a, d in groups:
        n = (a or b or {}).get("n", "-")
        cells = [f"<td>{escape_html(name)}</td>", f"<td class=num>{escape_html(n)}</td>"]
        if has_before:
            cells += [f"<td class=num>{pct((b or {}).get(metric))}</td>", f"<td class=num>{_ci(b, metric)}</td>"]
        cells += [
            f"<td class=num>{pct((a or {}).get(metric))}</td>",
            f"<td class=num>{_ci(a, metric)}</td>",
            f"<td class=num>{pct((a or {}).get('composite'))}</td>",
        ]
        if has_before:
            t = (d or {}).get(metric)
            if t:
                lo, hi = t["ci95"]
                cells += [
                    f"<td class=num>{100 * t['mean']:+.1f}</td>",
                    f"<td class=num>[{100 * lo:+.1f}, {100 * hi:+.1f}]</td>",
                    f"<td class=num>{t['p_value']:.4f}</td>",
                ]
            else:
                cells += ["<td class=num>-</td>"] * 3
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f"<h3>{escape_html(title)}</h3>\n<table>\n{head}</tr>\n" + "\n".join(body) + "\n</table>"


def _types_section(before: dict | None, after: dict | None, diff: dict | None) -> str:
    if before is None and after is None:
        return (
            "<p class=note>No evaluation given: pass --after EVAL_DIR (and --before EVAL_DIR), "
            "output directories of <code>vqa-grpo evaluate --out</code>.</p>"
        )
    has_before = before is not None and after is not None
    if after is None:  # only a before evaluation: show it in the "after" columns' place
        after, before = before, None
    conventions = sorted({m.get("vqa_convention", "official") for m in (before, after) if m is not None})
    # The headline metric (a benchmark's own, metrics.json's primary_metric) first, then VQA accuracy.
    headline = next((m.get("primary_metric") for m in (after, before) if m and m.get("primary_metric")), None)
    shown = [headline] if headline in after and headline != "vqa_accuracy" else []
    shown.append("vqa_accuracy")
    parts = [
        (f"<p>{escape_html(shown[0])} in percent (the headline: primary_metric); " if len(shown) > 1 else "<p>")
        + f"VQA accuracy in percent ({escape_html(' and '.join(conventions))} convention: eval.vqa_convention); "
        "95% CI: bootstrap over questions (evaluate). "
        + (
            f"after \u2212 before: paired bootstrap over the shared questions ({BOOTSTRAP_SAMPLES:,} resamples, "
            f"seed {SEED}), two-sided p; see vqa_grpo/evaluation/compare.py."
            if has_before
            else ""
        )
        + "</p>"
    ]
    # metrics.json holds ci95 = {metric: [low, high]} at the top and in every type alike.
    for metric in shown:
        label = "" if len(shown) == 1 else f": {metric}"
        overall = [("overall", before, after, (diff or {}).get("overall"))]
        parts.append(_type_table("Overall" + label, overall, has_before, metric))
        for key, title in (("per_answer_type", "Per answer type"), ("per_question_type", "Per question type")):
            b_types, a_types, d_types = ((m or {}).get(key) or {} for m in (before, after, diff))
            groups = [(t, b_types.get(t), a_types.get(t), d_types.get(t)) for t in sorted(set(a_types) | set(b_types))]
            parts.append(
                _type_table(title + label, groups, has_before, metric)
                if groups
                else f"<p class=note>No {key} in metrics.json.</p>"
            )
    return "\n".join(parts)


def image_tags(uris: list[str], alt: str) -> str:
    """The <img> of each data URI, alt ``alt`` (``alt``, i of n when there are several)."""
    n = len(uris)
    alts = [alt] if n == 1 else [f"{alt}, {i} of {n}" for i in range(1, n + 1)]
    return "".join(f'<img src="{uri}" alt="{escape_html(a)}">' for uri, a in zip(uris, alts))


def _gallery_section(
    rows: list[dict], thumbs: dict[str, list[str]], has_before: bool, has_after: bool, total: int
) -> str:
    if not rows:
        return "<p class=note>No predictions to show: pass --before/--after EVAL_DIR.</p>"
    both = has_before and has_after
    if both:
        buttons = [("gain", "-1", "largest gains"), ("gain", "1", "largest losses"), ("id", "1", "by id")]
    else:
        buttons = [("gain", "-1", "highest score"), ("gain", "1", "lowest score"), ("id", "1", "by id")]
    bar = " ".join(
        f'<button type=button data-sort="{k}" data-direction="{d}" '
        f'aria-pressed="{str(i == 0).lower()}">{escape_html(t)}</button>'
        for i, (k, d, t) in enumerate(buttons)
    )
    head = "<tr><th>image</th><th>id</th><th>question</th><th>ground truth</th>"
    head += ("<th>before</th>" if has_before else "") + ("<th>after</th>" if has_after else "")
    head += ("<th>\u0394 accuracy</th>" if both else "") + "</tr>"
    body = []
    for r in rows:
        img = image_tags(thumbs.get(r["id"]) or [], f"image of {r['id']}") or "<span class=note>no image</span>"
        cells = [
            f"<td>{img}</td>",
            f"<td>{escape_html(r['id'])}</td>",
            f"<td>{escape_html(r['question'])}</td>",
            f"<td>{escape_html(answers_text(r['answers']))}</td>",
        ]
        for side, present in (("before", has_before), ("after", has_after)):
            if present:
                p = r[side] or {}
                raw = p.get("raw")
                tip = f' title="raw: {escape_html(raw)}"' if isinstance(raw, str) and raw != p.get("prediction") else ""
                cells.append(
                    f"<td{tip}>{escape_html(p.get('prediction', ''))}"
                    f"<br><span class=score>acc {_score(p):.2f}</span></td>"
                )
        if both:
            cls = "gain" if r["gain"] > 0 else "loss" if r["gain"] < 0 else ""
            cells.append(f"<td class='num {cls}'>{r['gain']:+.2f}</td>")
        body.append(f'<tr data-id="{escape_html(r["id"])}" data-gain="{r["gain"]!r}">' + "".join(cells) + "</tr>")
    shown = f"{len(rows)} of {total} questions"
    if total > len(rows):
        shown += " (the largest gains and losses and a spread of the rest)"
    return (
        f"<p>{shown}. Sort: {bar}</p>\n<table class=gallery>\n<thead>{head}</thead>\n<tbody id=gallery-body>\n"
        + "\n".join(body)
        + "\n</tbody>\n</table>"
    )


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


def png_uri(png: bytes) -> str:
    """PNG bytes as a data: URI, so that a page embeds its images and stays one file."""
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")
