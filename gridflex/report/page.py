"""The report as one self-contained HTML page (inline CSS, images as base64 PNG, no script) and
as Markdown (the same tables, the PNGs referenced beside it), both from the ``report.json``
document of :func:`gridflex.report.build.build_report`.

Every number on the HTML page sits in an element ``<span data-key="sections.0.learners.gradmap.
aggregates.test_cost_per_day.iqm" data-kind="money">8,048.3</span>``: its path in report.json
and its format (:func:`fmt`), so the page can be checked against the JSON number by number.
"""

from __future__ import annotations

import base64
import html
from pathlib import Path

from gridflex.report.aggregate import METRICS

#: kind -> how a number of that kind is shown (:func:`fmt`).
FORMATS = {
    "money": lambda v: f"{v:,.1f}",
    "rate": lambda v: f"{100 * v:.2f} %",
    "seconds": lambda v: f"{v:,.1f}",
    "count": lambda v: f"{v:,.0f}",
    "count_mean": lambda v: f"{v:,.1f}",  # an IQM of counts
    "int": lambda v: f"{int(v):d}",
    "prob": lambda v: f"{v:.2f}",
    "ratio": lambda v: f"{v:.2f}×",
    "percent": lambda v: f"{100 * v:.0f} %",  # a confidence level
}
MISSING = "–"
LABELS = {m.key: m.label for m in METRICS}
KINDS = {m.key: m.kind for m in METRICS}
CSS = """
body{font-family:-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:2em auto;max-width:1250px;color:#222;
line-height:1.45;padding:0 1em}
h1{font-size:1.6em}h2{border-bottom:2px solid #ccc;padding-bottom:.2em;margin-top:2em}h3{margin-top:1.5em}
table{border-collapse:collapse;margin:.6em 0 1.2em;font-size:.88em}
th,td{border:1px solid #ccc;padding:.3em .6em;text-align:right;white-space:nowrap}
th{background:#f2f2f2}td:first-child,th:first-child{text-align:left}
.ci{color:#666;font-size:.9em}.note{color:#555;font-size:.9em;max-width:60em}
img{max-width:100%;border:1px solid #ddd;margin:.4em 0}code{background:#f5f5f5;padding:0 .2em}
"""


def fmt(value, kind: str) -> str:
    """A number as the page shows it (:data:`FORMATS`; None as an en dash)."""
    return MISSING if value is None else FORMATS[kind](value)


def _num(key: str, value, kind: str) -> str:
    return f'<span data-key="{html.escape(key)}" data-kind="{kind}">{html.escape(fmt(value, kind))}</span>'


def _estimate(prefix: str, entry: dict, kind: str, point: str = "iqm") -> str:
    """``IQM [low, high]`` with data-keys; a lower bound gets a leading ``≥``."""
    kind = "count_mean" if kind == "count" else kind
    text = _bound_mark(entry) + _num(
        f"{prefix}.{point}", entry.get(point), kind)
    if entry.get("ci_low") is not None:
        text += (f' <span class="ci">[{_num(prefix + ".ci_low", entry["ci_low"], kind)}, '
                 f'{_num(prefix + ".ci_high", entry["ci_high"], kind)}]</span>')
    return text


def _table(header: list[str], rows: list[list[str]], text_columns: tuple[int, ...] = ()) -> str:
    """An HTML table; ``text_columns``: cells of free text (paths), marked ``class="text"``."""
    head = "".join(f"<th>{h}</th>" for h in header)
    body = "".join("<tr>" + "".join(f'<td class="text">{c}</td>' if j in text_columns else f"<td>{c}</td>"
                                    for j, c in enumerate(row)) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _headline_columns(section: dict) -> list[str]:
    present = {k for learner in section["learners"].values() for k in learner["aggregates"]}
    return [m.key for m in METRICS if m.key in present]


def section_html(k: int, section: dict, images: dict[str, Path]) -> str:
    """One folder's part of the page."""
    base = f"sections.{k}"
    parts = [f"<h2>{html.escape(section['scenario'])} <small>({section['kind']}: "
             f"<code>{html.escape(section['source'])}</code>)</small></h2>"]
    target = section["target"]
    bound = target.get("max_cost_per_day")
    parts.append("<p>Target (validation days): voltage violations ≤ "
                 + _num(f"{base}.target.max_violation_rate", target.get("max_violation_rate"), "rate")
                 + (", cost ≤ " + _num(f"{base}.target.max_cost_per_day", bound, "money") + " EUR/day"
                    if bound is not None else " (violation-only: no cost bound)") + ".</p>")
    columns = _headline_columns(section)
    rows = []
    for name, learner in section["learners"].items():
        prefix = f"{base}.learners.{name}"
        agg = learner["aggregates"]
        cells = [html.escape(name), _num(f"{prefix}.n_runs", learner["n_runs"], "int")]
        for key in columns:
            if key not in agg:
                cells.append(MISSING)
                continue
            cell = _estimate(f"{prefix}.aggregates.{key}", agg[key], KINDS[key])
            if key in ("time_to_target_s", "gradients_to_target"):
                cell += (" <span class=\"ci\">(" + _num(f"{prefix}.aggregates.{key}.n_reached", agg[key]["n_reached"], "int")
                         + " of " + _num(f"{prefix}.aggregates.{key}.n", agg[key]["n"], "int") + " reached)</span>")
            cells.append(cell)
        rows.append(cells)
    parts.append("<h3>Aggregates over seeds</h3>")
    parts.append(_table(["learner", "runs"] + [LABELS[c] + "<br>IQM [95 % CI]" for c in columns], rows))
    parts.append('<p class="note">IQM: interquartile mean over a learner\'s runs (the mean with fewer than 4 '
                 "runs); [ ]: 95 % stratified-bootstrap interval (rliable). A deterministic controller has one "
                 "run and no interval. Time to target: a run that never met the target counts at its budget "
                 "(its training seconds or environment gradients), so where any run is censored the IQM and "
                 "its interval are <b>lower bounds</b> (marked ≥; \"k of n reached\").</p>")
    if section["probability_of_improvement"]:
        metric_keys = [m for m in ("test_cost_per_day", "test_violation_rate", "time_to_target_s")]
        rows = []
        for pair, entry in section["probability_of_improvement"].items():
            prefix = f"{base}.probability_of_improvement.{pair}"
            rows.append([html.escape(pair.replace("_vs_", " vs "))] + [
                _estimate(f"{prefix}.{m}", entry[m], "prob", "p") if m in entry else MISSING for m in metric_keys])
        parts.append("<h3>Probability of improvement</h3>")
        parts.append(_table(["pair"] + [LABELS[m] for m in metric_keys], rows))
        parts.append('<p class="note">P(a run of the first learner is better, i.e. lower, than a run of the '
                     "second), ties counting one half, with a 95 % bootstrap interval over both learners' runs "
                     "(rliable). For time to target a run that never met the target is slower than any that "
                     "did.</p>")
    if section["speedup"]:
        rows = []
        for pair, entry in section["speedup"].items():
            prefix = f"{base}.speedup.{pair}"
            rows.append([html.escape(pair)] + [
                _estimate(f"{prefix}.{m}", entry[m], "ratio", "ratio") + BOUND_NOTE.get(entry[m]["bound"], "")
                if m in entry else MISSING for m in ("time_to_target_s", "gradients_to_target")])
        parts.append("<h3>Where we stand: speed-up ratios</h3>")
        parts.append(_table(["IQM time to target ratio", "training seconds", "environment gradients"], rows))
        parts.append('<p class="note">IQM(other) / IQM(gradmap) of time to target, with a 95 % bootstrap interval '
                     "(independent resampling of both learners' runs). Above 1: gradmap reaches the target "
                     "sooner. gradmap_e1 / gradmap in environment gradients is the reuse factor. ≥: censored "
                     "runs in the numerator only (at least this); ≤: in gradmap's only (at most this); "
                     "censored on both sides: no bound.</p>")
    parts.append("<h3>Every run</h3>")
    parts.append(_runs_table(base, section))
    for title, name in (("Learning curves", "learning_curves"), ("Performance profile", "performance_profile"),
                        ("Cost against violations", "scatter"), ("Feeder maps", "feeder_maps"),
                        ("Bus × hour voltage", "heatmap")):
        if name in images:
            data = base64.b64encode(images[name].read_bytes()).decode("ascii")
            parts.append(f"<h3>{title}</h3><img alt=\"{title}\" src=\"data:image/png;base64,{data}\">")
    if section["notes"]:
        parts.append("<h3>Notes</h3><ul>" + "".join(f"<li>{html.escape(n)}</li>" for n in section["notes"]) + "</ul>")
    return "\n".join(parts)


def _runs_table(base: str, section: dict) -> str:
    present = _headline_columns(section)
    rows = []
    for name, learner in section["learners"].items():
        for j, run in enumerate(learner["runs"]):
            prefix = f"{base}.learners.{name}.runs.{j}"
            where = "reused from " + run["reused_from"] if run.get("reused_from") else (
                "" if run.get("folder") else "no run folder")
            rows.append([html.escape(name), MISSING if run["seed"] is None else _num(f"{prefix}.seed", run["seed"], "int")]
                        + [_num(f"{prefix}.values.{k}", run["values"].get(k), KINDS[k]) for k in present]
                        + [html.escape(where)])
    header = ["learner", "seed"] + [LABELS[k] for k in present] + ["source"]
    return _table(header, rows, text_columns=(len(header) - 1,))


def render_html(report: dict, images: list[dict[str, Path]]) -> str:
    """The whole page; ``images[k]``: figure name -> PNG of section k."""
    body = "\n".join(section_html(k, s, images[k]) for k, s in enumerate(report["sections"]))
    boot = report["bootstrap"]
    return (f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>gridflex report</title>"
            f"<style>{CSS}</style></head><body>\n<h1>gridflex report</h1>\n"
            f"<p class=\"note\">{html.escape(report['generated_by'])}. Intervals: "
            f"{_num('bootstrap.confidence', boot['confidence'], 'percent')} percentile bootstrap, "
            f"{_num('bootstrap.reps', boot['reps'], 'int')} resamples, seed {_num('bootstrap.seed', boot['seed'], 'int')}, "
            f"{html.escape(boot['library'])}. "
            f"Numbers are also in report.json; see docs/report.md for every definition.</p>\n{body}\n</body></html>\n")


def render_markdown(report: dict, images: list[dict[str, Path]], out_dir: Path) -> str:
    """The tables as Markdown, the figures as image links relative to ``out_dir``."""
    lines = ["# gridflex report", "", f"{report['generated_by']}; definitions in docs/report.md.", ""]
    for k, section in enumerate(report["sections"]):
        lines += [f"## {section['scenario']} ({section['kind']}: `{section['source']}`)", ""]
        columns = _headline_columns(section)
        lines.append("| learner | runs | " + " | ".join(LABELS[c] + ", IQM [95 % CI]" for c in columns) + " |")
        lines.append("|---" * (2 + len(columns)) + "|")
        for name, learner in section["learners"].items():
            cells = []
            for key in columns:
                entry = learner["aggregates"].get(key)
                cells.append(MISSING if entry is None else _plain(entry, KINDS[key], "iqm") + (
                    f" ({entry['n_reached']} of {entry['n']} reached)" if "n_reached" in entry else ""))
            lines.append(f"| {name} | {learner['n_runs']} | " + " | ".join(cells) + " |")
        lines.append("")
        for title, key, point, kind in (("Probability of improvement", "probability_of_improvement", "p", "prob"),
                                        ("Speed-up ratios (IQM other / IQM gradmap)", "speedup", "ratio", "ratio")):
            if section[key]:
                lines += [f"### {title}", ""]
                for pair, entry in section[key].items():
                    shown = ", ".join(f"{LABELS[m]}: {_plain(v, kind, point)}{BOUND_NOTE.get(v.get('bound'), '')}"
                                      for m, v in entry.items())
                    lines.append(f"- {pair.replace('_vs_', ' vs ')}: {shown}")
                lines.append("")
        for name, path in images[k].items():
            lines += [f"![{name}]({path.relative_to(out_dir).as_posix()})", ""]
        lines += [f"- {note}" for note in section["notes"]] + [""]
    return "\n".join(lines)


#: what a speed-up ratio's censoring means (``aggregate.speedups``)
BOUND_NOTE = {"lower": " (censored numerator: at least this)", "upper": " (censored denominator: at most this)",
              "none": " (censored on both sides: no bound)"}


def _bound_mark(entry: dict) -> str:
    """``≥`` before a lower bound, ``≤`` before an upper one."""
    if entry.get("lower_bound") or entry.get("bound") == "lower":
        return "≥ "
    return "≤ " if entry.get("bound") == "upper" else ""


def _plain(entry: dict, kind: str, point: str) -> str:
    kind = "count_mean" if kind == "count" else kind
    text = _bound_mark(entry) + fmt(entry.get(point), kind)
    if entry.get("ci_low") is not None:
        text += f" [{fmt(entry['ci_low'], kind)}, {fmt(entry['ci_high'], kind)}]"
    return text
