#!/usr/bin/env python3
"""Calibrate a scenario's population before any learner exists (issue: fleets on IEEE 123).

For each candidate (a set of dotted overrides of the scenario), run ``no_control`` on the
scenario's validation days with the exact AC solver, frozen and regulated taps, and report the
voltage-violation rate split into under- and over-voltage. A candidate *qualifies* when, with
regulators active, the rate lies in [2 %, 10 %] with both under- and over-voltage present
(DESIGN §3 targets are fixed in the YAML before this runs). ``--criterion frozen`` judges the
frozen-tap rate instead (for the quick scenario, whose fleet must be able to clear it). The output (a Markdown table, the
chosen candidate and the scenario's sha256) is written to ``docs/calibration/<scenario>.md``.

    python tuning/calibrate.py scenarios/ieee13_small.yaml \
        --candidate "population.peak_scale=1.3" --candidate "population.peak_scale=1.6" ...

With no ``--candidate`` the scenario is evaluated as written (the record of the final choice).
"""

from __future__ import annotations

import argparse
import platform
import time
from pathlib import Path

import torch

from gridflex.evaluate import evaluate, validation_days
from gridflex.plugins import load_registry
from gridflex.scenario import load_scenario
from gridflex.world import build_world

LOW, HIGH = 0.02, 0.10


def evaluate_candidate(path: str, overrides: list[str], registry, pm, criterion: str = "regulated") -> dict:
    loaded = load_scenario(path, overrides, registry)
    world = build_world(loaded, registry, pm)
    no_control = registry.get("learner", "no_control")
    learner = no_control(no_control.Config(), world.env, seed=loaded.config.seed)
    days = validation_days(world)
    result = evaluate(world, learner, days, loaded.config.data.n_validation_days, regulated=True)
    regulated = result.metrics_regulated or result.metrics
    judged = regulated if criterion == "regulated" else result.metrics
    qualifies = LOW <= judged["voltage_violation_rate"] <= HIGH
    if criterion == "regulated":
        qualifies = qualifies and judged["undervoltage_rate"] > 0 and judged["overvoltage_rate"] > 0
    return {
        "overrides": overrides,
        "sha256": loaded.sha256(),
        "households": len(world.env.households),
        "agents": world.env.n_agents,
        "frozen": result.metrics,
        "regulated": regulated,
        "qualifies": qualifies,
    }


def table(rows: list[dict]) -> str:
    head = ("| candidate | households | agents | frozen: viol. (under / over) | regulated: viol. "
            "(under / over) | line overload (reg.) | peak import kW | qualifies |")
    lines = [head, "|" + " --- |" * 8]
    for row in rows:
        f, r = row["frozen"], row["regulated"]
        lines.append(
            f"| `{'; '.join(row['overrides']) or '(as written)'}` | {row['households']} | {row['agents']} "
            f"| {f['voltage_violation_rate']:.2%} ({f['undervoltage_rate']:.2%} / {f['overvoltage_rate']:.2%}) "
            f"| {r['voltage_violation_rate']:.2%} ({r['undervoltage_rate']:.2%} / {r['overvoltage_rate']:.2%}) "
            f"| {r['line_overload_rate']:.2%} | {f['peak_import_kw']:.0f} | {'yes' if row['qualifies'] else 'no'} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("scenario")
    parser.add_argument("--candidate", action="append", default=[],
                        help="';'-separated dotted overrides; repeat for several candidates")
    parser.add_argument("--out", type=Path, help="Markdown report (default docs/calibration/<name>.md)")
    parser.add_argument(
        "--criterion", choices=("regulated", "frozen"), default="regulated",
        help="regulated: rate with the tap controller in [2%%, 10%%] with under- and over-voltage "
        "(the headline scenario); frozen: rate with frozen taps in [2%%, 10%%] (a quick training "
        "scenario whose fleet must be able to clear it)")
    args = parser.parse_args()
    pm, registry = load_registry()
    candidates = [[o for o in c.split(";") if o] for c in args.candidate] or [[]]
    rows = []
    t0 = time.perf_counter()
    for overrides in candidates:
        rows.append(evaluate_candidate(args.scenario, overrides, registry, pm, args.criterion))
        print(table(rows[-1:]).splitlines()[-1], flush=True)
    loaded = load_scenario(args.scenario, [], registry)
    chosen = next((row for row in rows if row["qualifies"]), None)
    report = [
        f"# Calibration of `{loaded.config.name}`",
        "",
        f"Command: `python tuning/calibrate.py {args.scenario} --criterion {args.criterion} "
        + " ".join(f'--candidate "{";".join(c)}"' for c in candidates if c) + "`",
        f"Machine: {platform.machine()}, {torch.get_num_threads()} torch threads, "
        f"Python {platform.python_version()}, torch {torch.__version__}; "
        f"{time.strftime('%Y-%m-%d', time.gmtime())}; {time.perf_counter() - t0:.0f} s.",
        "",
        "`no_control` on the validation days, exact AC power flow. Criterion: "
        + (f"with regulators active, violation rate in [{LOW:.0%}, {HIGH:.0%}] with both under- and "
           "over-voltage." if args.criterion == "regulated" else
           f"with frozen taps (the training target's basis), violation rate in [{LOW:.0%}, {HIGH:.0%}]."),
        "",
        table(rows),
        "",
        f"Chosen: `{'; '.join(chosen['overrides']) or '(as written)'}`" if chosen else "No candidate qualified.",
        "",
        f"Scenario file as committed: sha256 of the resolved scenario `{loaded.sha256()}`. "
        "Any later change to the scenario means re-running every comparison.",
    ]
    out = args.out or Path("docs/calibration") / f"{loaded.config.name}.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(report) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
