"""``gridflex report DIR [DIR ...]``: read the folders, aggregate, draw, write
``report.html``, ``report.md``, ``report.json`` and the PNGs into one output folder.

``report.json``::

    {"generated_by", "bootstrap": {"reps", "confidence", "seed", "library"},
     "sections": [{"source", "kind", "scenario", "target", "machine", "day",
                   "learners": {name: {"n_runs", "trains", "deterministic",
                                       "aggregates": {metric: {"iqm", "ci_low", "ci_high", "n",
                                                               "n_censored", "lower_bound", ["n_reached"]}},
                                       "runs": [{"seed", "folder", "reused_from", "values": {metric: v},
                                                 "train_seconds", "env_gradient_evaluations"}]}},
                   "probability_of_improvement", "speedup", "performance_profile",
                   "figures": {name: file}, "notes": [...]}]}

Metric keys, units and the statistics: :mod:`gridflex.report.aggregate`; docs/report.md.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from gridflex import __version__
from gridflex.errors import UserError
from gridflex.report import aggregate, figures
from gridflex.report.collect import Section, read_folder
from gridflex.report.feeder_map import feeder_maps, map_data
from gridflex.report.page import render_html, render_markdown

NO_CONTROL = "no_control"


def build_report(folders: list[Path], out_dir: Path | None = None, day: int | None = None) -> dict:
    """Write the report of ``folders`` into ``out_dir`` (default: ``folders[0]/report`` for one
    folder; required for several) and return the report.json document. ``day``: the test day of
    the voltage heatmaps (default: the day of most no-control violations, else 0)."""
    folders = [Path(f) for f in folders]
    out_dir = default_out(folders) if out_dir is None else out_dir
    if day is not None and day < 0:
        raise UserError(f"--day {day}: a test-day index is 0 or more")
    sections = [read_folder(f) for f in folders]  # every folder checked before anything is written
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    report = {"generated_by": f"gridflex {__version__} report of {', '.join(str(f) for f in folders)}",
              "bootstrap": {"reps": aggregate.BOOTSTRAP_REPS, "confidence": aggregate.CONFIDENCE,
                            "seed": aggregate.BOOTSTRAP_SEED, "library": _library_version()},
              "sections": []}
    images: list[dict[str, Path]] = []
    for k, section in enumerate(sections):
        doc, pictures = _section(section, out_dir, f"s{k}_", day)
        report["sections"].append(doc)
        images.append(pictures)
    report = _json_safe(report)
    (out_dir / "report.json").write_text(json.dumps(report, indent=2))
    (out_dir / "report.html").write_text(render_html(report, images), encoding="utf-8")
    (out_dir / "report.md").write_text(render_markdown(report, images, out_dir), encoding="utf-8")
    return report


def default_out(folders: list[Path]) -> Path:
    """``DIR/report`` for one folder; several need ``--out`` (:class:`UserError`)."""
    if not folders:
        raise UserError("gridflex report needs at least one folder")
    if len(folders) > 1:
        raise UserError("gridflex report with several folders needs --out OUT (where the one page goes)")
    return Path(folders[0]) / "report"


def summary(report: dict, out_dir: Path) -> str:
    """What the command prints: one line per section, then the files written."""
    lines = [f"{s['scenario']} ({s['kind']}, {s['source']}): "
             + ", ".join(f"{name} x{learner['n_runs']}" for name, learner in s["learners"].items())
             for s in report["sections"]]
    n_png = sum(len(s["figures"]) for s in report["sections"])
    return "\n".join(lines + [f"wrote {out_dir}/report.html, report.md, report.json and {n_png} PNGs"])


def _library_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return f"rliable {version('rliable')}"
    except PackageNotFoundError:
        return "rliable"


def _section(section: Section, out_dir: Path, stem: str, day: int | None) -> tuple[dict, dict[str, Path]]:
    notes = list(section.notes)
    learners = {}
    values = {}
    for name, runs in section.learners.items():
        values[name] = [aggregate.run_values(r) for r in runs]
        trains = any(r.trains for r in runs)
        learners[name] = {
            "n_runs": len(runs), "trains": trains, "deterministic": not trains and len(runs) == 1,
            "aggregates": aggregate.learner_aggregates(runs),
            "runs": [{"seed": r.seed, "folder": None if r.folder is None else str(r.folder),
                      "reused_from": r.reused_from, "values": v,
                      "train_seconds": r.metrics.get("train_seconds"),
                      "env_gradient_evaluations": r.metrics.get("env_gradient_evaluations")}
                     for r, v in zip(runs, values[name])],
        }
        for r in runs:
            if r.folder is None:
                notes.append(f"{name} seed {r.seed}: no run folder"
                             + (f" (reused from {r.reused_from})" if r.reused_from else "")
                             + "; its numbers are shown, it has no map, heatmap or learning curve")
        if any(learners[name]["aggregates"].get(k, {}).get("lower_bound") for k in aggregate.TIME_METRICS):
            notes.append(f"{name}: {learners[name]['aggregates']['time_to_target_s']['n_censored']} of {len(runs)} "
                         "runs never met the target; they count at their budget, so its time-to-target IQM and "
                         "interval are lower bounds")
    chosen_day = _choose_day(section, day, notes)  # a bad --day fails before any figure is drawn
    doc = {"source": str(section.source), "kind": section.kind, "scenario": section.scenario,
           "target": section.target, "machine": section.machine, "day": chosen_day, "learners": learners,
           "probability_of_improvement": aggregate.probability_of_improvement(section),
           "speedup": aggregate.speedups(section), "performance_profile": aggregate.performance_profiles(section)}
    colour = figures.colours(list(section.learners))
    pictures: dict[str, Path] = {}

    def keep(name: str, path: Path | None) -> None:
        if path is not None:
            pictures[name] = path

    keep("learning_curves", figures.learning_curves(section, out_dir / f"{stem}learning_curves.png", colour))
    keep("performance_profile", figures.performance_profile(doc["performance_profile"],
                                                             out_dir / f"{stem}performance_profile.png", colour))
    keep("scatter", figures.cost_violation_scatter(section, values, out_dir / f"{stem}cost_violation.png", colour))
    maps, panels = {}, {}
    for name, runs in section.learners.items():
        run = figures.first_with_schedules(runs)
        if run is None:
            notes.append(f"{name}: no schedules.npz, so no feeder map or heatmap")
            continue
        label = name if len(runs) == 1 else f"{name} (seed {run.seed})"
        data, why = map_data(run.schedules)
        if data is None:
            notes.append(f"{name}: no feeder map: {why}")
        else:
            maps[label] = data
        with np.load(run.schedules, allow_pickle=False) as s:
            buses, v, limits = figures.bus_voltages(s)
            if doc["day"] < v.shape[0]:
                panels[label] = (buses, v[doc["day"]], float(s["dt_h"]))
            else:
                notes.append(f"{name}: test day {doc['day']} does not exist (its schedules hold {v.shape[0]} days)")
    keep("feeder_maps", feeder_maps(maps, out_dir / f"{stem}feeder_maps.png"))
    if panels:
        keep("heatmap", figures.voltage_heatmaps(panels, limits, doc["day"], out_dir / f"{stem}voltage_heatmap.png"))
    doc["figures"] = {name: path.name for name, path in pictures.items()}
    doc["notes"] = notes
    return doc, pictures


def _choose_day(section: Section, day: int | None, notes: list[str]) -> int:
    """``day`` if given; else the test day on which no_control violates most; else 0."""
    if day is not None:
        run = next((r for runs in section.learners.values() for r in runs if r.schedules is not None), None)
        if run is not None:
            with np.load(run.schedules, allow_pickle=False) as s:
                n_days = int(s["vm_pu"].shape[0])
            if day >= n_days:
                raise UserError(f"--day {day}: {section.source} has {n_days} test day(s), numbered 0 to {n_days - 1}")
        return day
    runs = section.learners.get(NO_CONTROL, [])
    run = figures.first_with_schedules(runs)
    if run is None:
        notes.append("heatmap day 0 (no no_control schedules to pick the worst day from)")
        return 0
    with np.load(run.schedules, allow_pickle=False) as s:
        rates = figures.day_violation_rates(s)
    chosen = int(np.argmax(rates))
    notes.append(f"heatmap day {chosen}: the test day of most no-control voltage violations "
                 f"({100 * rates[chosen]:.2f} % of monitored bus-steps, worst phase per bus); choose another with --day")
    return chosen


def _json_safe(value):
    """NaN and infinities as null (strict JSON)."""
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, np.generic):
        return _json_safe(value.item())
    return value
