#!/usr/bin/env python3
"""Calibrate a scenario's population before any learner exists: is the benchmark *reachable*?

For each candidate (a set of dotted overrides of the scenario), run ``no_control`` on the
scenario's validation days with the exact AC solver and compute the fleet-authority bound
(:mod:`gridflex.learning.authority`). A candidate *qualifies* when, all at once:

* ``no_control`` violates 2-10 % of the validation node-hours under the scenario's own tap
  treatment (``feeder.tap_treatment``: frozen, settled or regulated; the rate with the
  RegControl-like tap controller is shown beside it for information);
* the fleet-authority bound (every device at the extreme that helps, per node-hour, energy
  limits relaxed) leaves <= 0.1 % of node-hours **and** <= 0.1 % of conductor-hours unfixable;
* loading stays plausible: no rated conductor above 1.2x its rating under ``no_control``.

The report (``docs/calibration/<scenario>.md`` unless ``--out``) holds the command line, this
run's table with the plausibility figures (installed PV, the fleet's rated power per device
type, the sum of household peaks), the bound's details per candidate, the chosen candidate and
the scenario's sha256, and an "All candidates" table to which every run appends its rows
(earlier text of the report that does not fit that table is kept under "Earlier records").

    python tuning/calibrate.py scenarios/ieee13_small.yaml \
        --candidate "population.peak_scale=1.3" --candidate "population.peak_scale=1.6" ...

With no ``--candidate`` the scenario is evaluated as written (the record of the final choice).
"""

from __future__ import annotations

import argparse
import platform
import re
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import torch

from gridflex.learning.authority import authority_bound, describe
from gridflex.runs.evaluate import Evaluation, evaluate, validation_days
from gridflex.plugins.registry import load_registry
from gridflex.scenario import load_scenario
from gridflex.runs.world import World, build_world

LOW, HIGH = 0.02, 0.10  # no_control violation rate under the scenario's tap treatment
MAX_UNFIXABLE = 0.001  # authority bound: unfixable node-hours and conductor-hours
MAX_LOADING = 1.2  # largest no_control conductor loading |I| / I_max
DEVICE_COLUMNS = (("battery", "batteries MW"), ("heat_pump", "heat pumps MW"), ("generator", "generators MW"))
ALL_HEADING = "## All candidates"
EARLIER_HEADING = "## Earlier records"


def scenario_tap_treatment(world: World, result: Evaluation):
    """``(label, metrics, rollout, taps)`` of ``no_control`` under the scenario's tap treatment.

    :func:`gridflex.runs.evaluate.evaluate` rolls out under the scenario's treatment
    (``result.metrics``): with fixed taps (frozen or settled) ``rollout.taps`` is ``None`` and
    the bound solves at the environment's taps; under ``regulated`` it holds the per-sample taps
    ``[B, T, n_reg]`` the tap controller chose, and the bound solves every sweep point at those.
    """
    treatment = getattr(world.env, "tap_treatment", "frozen")
    return treatment, result.metrics, result.rollout, result.rollout.taps


def plausibility(world: World, exo) -> dict:
    """Installed PV (MWp), rated power per device type (MW, sum of ``p_max_kw``) and the sum of
    the households' peaks over the evaluated days (MW)."""
    env = world.env
    rated: dict[str, float] = {}
    for fleet in env.fleets:
        p_max = getattr(fleet.model, "p_max_kw", None)
        mw = float(torch.as_tensor(p_max).sum()) / 1000 if p_max is not None else float("nan")
        rated[fleet.model.name] = rated.get(fleet.model.name, 0.0) + mw
    return {
        "pv_mwp": float(np.sum(env.households.pv_kwp)) / 1000,
        "rated_mw": rated,
        "household_peaks_mw": float(exo.household_kw.amax(dim=(0, 2)).sum()) / 1000,
    }


def evaluate_candidate(path: str, overrides: list[str], registry, pm, points: int = 5) -> dict:
    """One candidate: one world build, ``no_control`` (frozen and regulated taps), the bound."""
    loaded = load_scenario(path, overrides, registry)
    world = build_world(loaded, registry, pm)
    cfg = loaded.config
    no_control = registry.get("learner", "no_control")
    learner = no_control(no_control.Config(), world.env, seed=cfg.seed)
    # the info column with the tap controller, unless the scenario switches regulated evaluation
    # off (IEEE 8500: per-sample taps need the dense Z-bus, beyond a 24 GB machine)
    result = evaluate(world, learner, validation_days(world), cfg.data.n_validation_days,
                      regulated=cfg.environment.regulated_evaluation)
    treatment, metrics, rollout, taps = scenario_tap_treatment(world, result)
    bound = authority_bound(world.env, rollout.exogenous, tuple(cfg.limits.v_limits_pu),
                            cfg.limits.line_limits, taps=taps, points=points, rollout=rollout)
    checks = {
        f"no_control rate {metrics['voltage_violation_rate']:.2%} outside [{LOW:.0%}, {HIGH:.0%}]":
            LOW <= metrics["voltage_violation_rate"] <= HIGH,
        f"unfixable node-h {bound['unfixable_node_hours']:.2%} > {MAX_UNFIXABLE:.1%}":
            bound["unfixable_node_hours"] <= MAX_UNFIXABLE,
        f"unfixable conductor-h {bound['unfixable_conductor_hours']:.2%} > {MAX_UNFIXABLE:.1%}":
            bound["unfixable_conductor_hours"] <= MAX_UNFIXABLE,
        f"max loading {bound['max_line_loading']:.2f} > {MAX_LOADING}":
            bound["max_line_loading"] <= MAX_LOADING,
    }
    return {
        "overrides": overrides,
        "sha256": loaded.sha256(),
        "households": len(world.env.households),
        "agents": world.env.n_agents,
        "treatment": treatment,
        "judged": metrics,
        "regulated": result.metrics_regulated,
        "bound": bound,
        **plausibility(world, rollout.exogenous),
        "no_regulated": ("(not evaluated: environment.regulated_evaluation false)"
                         if world.feeder.regcontrols else "(no regulators)"),
        "fails": [reason for reason, ok in checks.items() if not ok],
        "qualifies": all(checks.values()),
    }


def _pct(x: float) -> str:
    return f"{x:.2%}"


HEADER = ("| candidate | households | household peaks MW | PV MWp | "
          + " | ".join(label for _, label in DEVICE_COLUMNS)
          + " | agents | no control: viol. (under / over) | regulated: viol. (info) | line overload "
          "| max loading (conductor) | bound: unfixable node-h | bound: unfixable conductor-h "
          "| peak import kW | qualifies |")


def table_row(row: dict) -> str:
    j, r, b = row["judged"], row["regulated"], row["bound"]
    rated = " | ".join(f"{row['rated_mw'][name]:.2f}" if name in row["rated_mw"] else "0"
                       for name, _ in DEVICE_COLUMNS)
    regulated = (f"{_pct(r['voltage_violation_rate'])} ({_pct(r['undervoltage_rate'])} / "
                 f"{_pct(r['overvoltage_rate'])})") if r else row.get("no_regulated", "(no regulators)")
    verdict = "yes" if row["qualifies"] else "no: " + "; ".join(row["fails"])
    return (
        f"| `{'; '.join(row['overrides']) or '(as written)'}` | {row['households']} "
        f"| {row['household_peaks_mw']:.2f} | {row['pv_mwp']:.2f} | {rated} | {row['agents']} "
        f"| {row['treatment']}: {_pct(j['voltage_violation_rate'])} ({_pct(j['undervoltage_rate'])} / "
        f"{_pct(j['overvoltage_rate'])}) | {regulated} | {_pct(b['line_overload_rate'])} "
        f"| {b['max_line_loading']:.2f} ({b['max_loading_conductor']}) | {_pct(b['unfixable_node_hours'])} "
        f"| {_pct(b['unfixable_conductor_hours'])} | {j['peak_import_kw']:.0f} | {verdict} |"
    )


def table(rows: list[dict], date: str | None = None) -> list[str]:
    """Markdown table lines; with ``date``, a leading run column (the all-candidates table)."""
    head = HEADER if date is None else "| run " + HEADER
    lines = [head, "|" + " --- |" * head.count(" | ") + " --- |"]
    lines += [(table_row(row) if date is None else f"| {date} " + table_row(row)) for row in rows]
    return lines


def earlier(out: Path, all_header: str) -> tuple[list[str], list[str]]:
    """From an existing report: its all-candidates rows (same header) and earlier text to keep."""
    if not out.is_file():
        return [], []
    text = out.read_text().splitlines()
    if ALL_HEADING not in text:  # a report from before this format: keep it all, headings demoted
        body = text[1:] if text and text[0].startswith("# ") else text
        kept = [re.sub(r"^(#+) ", lambda m: "#" * max(3, len(m.group(1)) + 1) + " ", line) for line in body]
        return [], _trim(kept)
    start = text.index(ALL_HEADING)
    end = text.index(EARLIER_HEADING) if EARLIER_HEADING in text else len(text)
    kept = text[end + 1:] if end < len(text) else []
    table_lines = [line for line in text[start + 1:end] if line.startswith("|")]
    if table_lines and table_lines[0] == all_header:
        return table_lines[2:], _trim(kept)
    old = ["### All candidates of an earlier format", ""] + text[start + 1:end]
    return [], _trim(old + [""] + kept)


def _trim(lines: list[str]) -> list[str]:
    while lines and not lines[0].strip():
        lines = lines[1:]
    while lines and not lines[-1].strip():
        lines = lines[:-1]
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("scenario")
    parser.add_argument("--candidate", action="append", default=[],
                        help="';'-separated dotted overrides; repeat for several candidates")
    parser.add_argument("--points", type=int, default=5,
                        help="authority-bound sweep points on down -> no_control -> up (odd, >= 3)")
    parser.add_argument("--out", type=Path, help="Markdown report (default docs/calibration/<name>.md)")
    args = parser.parse_args()
    pm, registry = load_registry()
    candidates = [[o for o in c.split(";") if o] for c in args.candidate] or [[]]
    rows = []
    t0 = time.perf_counter()
    for overrides in candidates:
        row = evaluate_candidate(args.scenario, overrides, registry, pm, args.points)
        rows.append(row)
        print(table([row])[-1], flush=True)
        print(describe(row["bound"]), flush=True)
    loaded = load_scenario(args.scenario, [], registry)
    chosen = next((row for row in rows if row["qualifies"]), None)
    date = time.strftime("%Y-%m-%d", time.gmtime())
    out = args.out or Path("docs/calibration") / f"{loaded.config.name}.md"
    all_lines = table(rows, f"{date}, {args.points} points")
    previous_rows, kept = earlier(out, all_lines[0])
    report = [
        f"# Calibration of `{loaded.config.name}`",
        "",
        f"Command: `python tuning/calibrate.py {shlex.join(sys.argv[1:])}`",
        f"Machine: {platform.machine()}, {torch.get_num_threads()} torch threads, "
        f"Python {platform.python_version()}, torch {torch.__version__}; {date}; "
        f"{time.perf_counter() - t0:.0f} s.",
        "",
        "`no_control` on the validation days, exact AC power flow. Rule (reachable benchmark): "
        f"`no_control` violates [{LOW:.0%}, {HIGH:.0%}] of the monitored node-hours under the scenario's "
        f"tap treatment, **and** the fleet-authority bound leaves <= {MAX_UNFIXABLE:.1%} of node-hours and "
        f"<= {MAX_UNFIXABLE:.1%} of rated conductor-hours unfixable, **and** no conductor exceeds "
        f"{MAX_LOADING}x its rating under `no_control`. The bound (`gridflex/learning/authority.py`, {args.points} "
        "points): the whole fleet swept from every device at its voltage-lowering extreme through "
        "`no_control` to its voltage-raising extreme (energy and comfort limits relaxed, ratings kept); "
        "an element is unfixable when it is violated at every point. It is optimistic per element "
        "(each node-hour may pick a different point), not a proof of reachability.",
        "",
        "Household peaks: sum over households of each one's peak on the evaluated days. Rated MW: sum "
        "of the fleet's `p_max_kw` per device type. Line overload and max loading: `no_control`, same "
        "tap treatment.",
        "",
        *table(rows),
        "",
        f"Chosen: `{'; '.join(chosen['overrides']) or '(as written)'}`" if chosen else "No candidate qualified.",
        "",
        f"Scenario file as committed: sha256 of the resolved scenario `{loaded.sha256()}`. "
        "Any later change to the scenario means re-running every comparison.",
        "",
        "### Bound details",
        "",
    ]
    for row in rows:
        report += [f"`{'; '.join(row['overrides']) or '(as written)'}`:", "", "```",
                   describe(row["bound"]), "```", ""]
    report += [ALL_HEADING, "", "Every candidate evaluated into this record, oldest first.", "",
               all_lines[0], all_lines[1], *previous_rows, *all_lines[2:]]
    if kept:
        report += ["", EARLIER_HEADING, "", *kept]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(report) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
