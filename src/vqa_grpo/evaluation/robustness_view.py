"""How ``compare`` and ``report`` show the robustness passes of ``evaluate --perturb``
(evaluation/robustness.py): the runs side by side per NAME:SEVERITY with each run's paired
difference to the first, and accuracy against severity drawn per perturbation."""

from __future__ import annotations

import io

from vqa_grpo.data.perturb import PERTURBATIONS, SEVERITIES
from vqa_grpo.evaluation.paired import paired_difference
from vqa_grpo.evaluation.report_html import escape_html, pct, png_uri
from vqa_grpo.evaluation.robustness import load_perturbed


def side_by_side(paths: list, metrics: list[dict], names: list[str], shown: list[str], samples: int, seed: int):
    """compare's ``robustness``, or None when no run has one: {"metrics": [names], "passes":
    {NAME:SEVERITY: {"n": [per run], metric: [per run], "differences": [one per run after the
    first: {"run", "baseline", "n_shared", metric: {"mean", "ci95", "p_value"} or None}]}},
    "without": [the runs evaluated without --perturb: then nothing is compared], "seeds": [each
    run's perturbation seed, None where its metrics.json has none]}. Runs whose recorded seeds
    differ saw other perturbed images: their passes are shown but not paired (no differences).

    The differences pair each run's perturbed answers with the first run's by question id within
    the same NAME:SEVERITY (predictions_perturbed.jsonl; the same train.seed gives both runs the same
    images), with compare's paired bootstrap; ``shown``: vqa_accuracy and the primary metric, of
    those compare compares."""
    passes_of = [m.get("robustness") for m in metrics]
    have = [isinstance(p, dict) and bool(p) for p in passes_of]
    if not any(have):
        return None
    if not all(have):
        return {"metrics": [], "passes": {}, "without": [n for n, h in zip(names, have) if not h], "seeds": []}
    seeds = [next((x["seed"] for x in p.values() if isinstance(x, dict) and "seed" in x), None) for p in passes_of]
    known = {s for s in seeds if s is not None}
    rows = [load_perturbed(p) for p in paths] if len(known) <= 1 else [None] * len(paths)
    labels = sorted(dict.fromkeys(lab for p in passes_of for lab in p), key=_order)
    shown = [m for m in shown if any(m in (p.get(lab) or {}) for p in passes_of for lab in p)]
    out: dict = {}
    for lab in labels:
        per = [p.get(lab) or {} for p in passes_of]
        entry: dict = {"n": [x.get("n") for x in per], **{m: [x.get(m) for x in per] for m in shown}}
        entry["differences"] = []
        for name, other in zip(names[1:], rows[1:]):
            base, mine = (rows[0] or {}).get(lab), (other or {}).get(lab)
            diff = (
                paired_difference(base, mine, shown, samples, seed) if base and mine else {"n_shared": 0, "overall": {}}
            )
            overall = diff["overall"]
            entry["differences"].append(
                {"run": name, "baseline": names[0], "n_shared": diff["n_shared"], **{m: overall.get(m) for m in shown}}
            )
        out[lab] = entry
    return {"metrics": shown, "passes": out, "without": [], "seeds": seeds}


def _order(lab: str) -> tuple:
    """NAME:SEVERITY in data/perturb.py's order of names (others after, by name), then severity."""
    name, _, level = lab.rpartition(":")
    rank = PERTURBATIONS.index(name) if name in PERTURBATIONS else len(PERTURBATIONS)
    return (rank, name, int(level) if level.isdigit() else 0, lab)


def _seed_line(seeds: list, letters: list[str]) -> str | None:
    """A line on the runs' perturbation seeds when they are not one known seed, else None."""
    if len(set(seeds)) == 1 and seeds[0] is not None:
        return None
    said = ", ".join(f"{x} {'not recorded' if s is None else s}" for x, s in zip(letters, seeds))
    if len({s for s in seeds if s is not None}) > 1:
        return (
            f"robustness not paired: the runs perturbed the images with other seeds ({said}), so they saw "
            "other images; evaluate them again with the same train.seed"
        )
    return f"perturbation seeds: {said}; the differences assume the runs used the same train.seed"


def format_side_by_side(rob: dict, letters: list[str]) -> str:
    """compare's robustness table: per NAME:SEVERITY and metric, each run's value and each later
    run's paired difference to A on the perturbed images."""
    if rob["without"]:
        return f"robustness not compared: {', '.join(rob['without'])} evaluated without --perturb"
    w = 8
    head = f"{'perturbation':<17} {'metric':<13} " + " ".join(f"{x:>{w}}" for x in letters)
    for x in letters[1:]:
        head += f"  {'n':>5} {x + ' - ' + letters[0]:>8} {'95% CI':>19} {'p':>7}"
    lines = [
        "robustness (evaluate --perturb): each run on the perturbed images; the difference is paired over the "
        "question ids both answered under that perturbation",
        *filter(None, [_seed_line(rob.get("seeds") or [None] * len(letters), letters)]),
        head,
        "-" * len(head),
    ]
    for lab, entry in rob["passes"].items():
        for m in rob["metrics"]:
            row = f"{lab:<17} {m:<13} "
            row += " ".join(f"{v:>{w}.4f}" if isinstance(v, (int, float)) else f"{'-':>{w}}" for v in entry[m])
            for d in entry["differences"]:
                t = d.get(m)
                if t is None:
                    row += f"  {'-':>5} {'-':>8} {'-':>19} {'-':>7}"
                else:
                    lo, hi = t["ci95"]
                    row += (
                        f"  {d['n_shared']:>5} {t['mean']:>+8.4f} {f'[{lo:+.4f}, {hi:+.4f}]':>19} {t['p_value']:>7.4f}"
                    )
            lines.append(row)
    return "\n".join(lines)


def curve_metric(*metrics: dict | None) -> str:
    """The metric the report draws: the primary metric where the passes hold it, else vqa_accuracy."""
    for m in metrics:
        primary = (m or {}).get("primary_metric")
        if primary and all(primary in p for p in ((m or {}).get("robustness") or {}).values()):
            return primary
    return "vqa_accuracy"


def curves(metrics: dict, metric: str) -> dict[str, tuple[list[int], list[float]]]:
    """name -> (severities, values) of an evaluation's robustness; severity 0 is the clean images."""
    out: dict[str, tuple[list[int], list[float]]] = {}
    rob = metrics.get("robustness") or {}
    for name in dict.fromkeys([*PERTURBATIONS, *(lab.rsplit(":", 1)[0] for lab in rob)]):
        points = [(s, rob[f"{name}:{s}"][metric]) for s in SEVERITIES if metric in rob.get(f"{name}:{s}", {})]
        if points:
            clean = metrics.get(metric)
            xs = ([0] if isinstance(clean, (int, float)) else []) + [s for s, _ in points]
            ys = ([float(clean)] if isinstance(clean, (int, float)) else []) + [float(v) for _, v in points]
            out[name] = (xs, ys)
    return out


def plot_layout(drawn: dict[str, dict]) -> tuple[list[str], dict[str, str], tuple[float, float]]:
    """``(panels, colour per run, y range)`` of plot_robustness for run label -> curves(): the
    panels in data/perturb.py's order, run k in matplotlib's colour Ck, and the y range 0-1
    (a little margin) when every value lies in 0-1, else the values' range padded by 5%."""
    names = sorted(dict.fromkeys(n for c in drawn.values() for n in c), key=lambda n: _order(f"{n}:0"))
    colour = {label: f"C{i % 10}" for i, label in enumerate(drawn)}
    values = [y for c in drawn.values() for _, ys in c.values() for y in ys]
    if not values or (0.0 <= min(values) and max(values) <= 1.0):
        return names, colour, (-0.03, 1.03)
    lo, hi = min(values), max(values)
    pad = 0.05 * (hi - lo) or 0.5
    return names, colour, (lo - pad, hi + pad)


def plot_robustness(runs: dict[str, dict], metric: str) -> bytes:
    """A PNG: one small plot per perturbation, ``metric`` against severity (0: clean), a line per
    run (label -> metrics.json). Each run keeps one colour in every panel, named in one legend
    above them; the panels share the y range, 0 to 1 when every value lies there (accuracies),
    so that a flat line at 0 looks like one and panels compare at a glance."""
    # matplotlib is imported here, where the plot is drawn: compare.py imports this module for tables
    from matplotlib.figure import Figure  # the Agg canvas, as report.plot_curves
    from matplotlib.lines import Line2D

    drawn = {label: curves(m, metric) for label, m in runs.items()}
    names, colour, ylim = plot_layout(drawn)
    cols = min(4, len(names))
    rows = (len(names) + cols - 1) // cols
    fig = Figure(figsize=(3.0 * cols, 2.6 * rows + 0.5), dpi=100)
    for k, name in enumerate(names):
        ax = fig.add_subplot(rows, cols, k + 1)
        for label, c in drawn.items():
            if name in c:
                ax.plot(*c[name], marker="o", markersize=3, linewidth=1.2, color=colour[label])
        ax.set_title(name, fontsize=10)
        ax.set_xticks([0, *SEVERITIES], ["clean", *map(str, SEVERITIES)], fontsize=8)
        ax.set_ylim(*ylim)
        ax.set_xlabel("severity", fontsize=8)
        ax.set_ylabel(metric, fontsize=8)
        ax.grid(alpha=0.3)
    handles = [Line2D([], [], color=colour[label], marker="o", markersize=3, linewidth=1.2) for label in drawn]
    fig.legend(handles, list(drawn), loc="upper center", ncol=max(1, len(drawn)), fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.3 / fig.get_figheight()))
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def report_section(before: dict | None, after: dict | None) -> tuple[str, bytes] | None:
    """The report's robustness section and its PNG (plots/robustness.png) when an evaluation has
    robustness, else None: the plot, then per NAME:SEVERITY each run's metric and its difference to
    its own clean images."""
    runs = [(label, m) for label, m in (("before", before), ("after", after)) if m and m.get("robustness")]
    if not runs:
        return None
    metric = curve_metric(after, before)
    png = plot_robustness(dict(runs), metric)
    head = "<tr><th>perturbation</th>" + "".join(
        f"<th>{label} n</th><th>{label}</th><th>{label} \u2212 clean</th><th>95% CI</th>" for label, _ in runs
    )
    body = []
    for lab in dict.fromkeys(lab for _, m in runs for lab in m["robustness"]):
        cells = [f"<td>{escape_html(lab)}</td>"]
        for _, m in runs:
            p = m["robustness"].get(lab) or {}
            d = (p.get("difference") or {}).get(metric)
            cells += [f"<td class=num>{escape_html(p.get('n', '-'))}</td>", f"<td class=num>{pct(p.get(metric))}</td>"]
            if d:
                lo, hi = d["ci95"]
                cells.append(f"<td class=num>{100 * d['mean']:+.1f}</td>")
                cells.append(f"<td class=num>[{100 * lo:+.1f}, {100 * hi:+.1f}]</td>")
            else:
                cells += ["<td class=num>-</td>"] * 2
        body.append("<tr>" + "".join(cells) + "</tr>")
    html = (
        f"<p>{escape_html(metric)} in percent on perturbed copies of the images (<code>evaluate --perturb</code>, "
        "vqa_grpo/data/perturb.py), severity 0 the clean images; the difference to the clean images is "
        "paired over the same questions (evaluate's bootstrap).</p>\n"
        f'<figure><img src="{png_uri(png)}" alt="{escape_html(metric)} against severity per perturbation">'
        "<figcaption>plots/robustness.png</figcaption></figure>\n"
        f"<table>\n{head}</tr>\n" + "\n".join(body) + "\n</table>"
    )
    return html, png
