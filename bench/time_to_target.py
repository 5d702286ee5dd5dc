"""Time to target of gradmap vs gradmap_e1 vs ssl_penalty vs ssl_pd (docs/design.md §3 protocol).

Runs ``gridflex compare`` in-process on the small scenario (and on ``scenarios/ieee123_1000.yaml``
when it exists and ``--large`` is given) with default hyperparameters, the same training budget
for every learner, validation at equal training-clock intervals, ``--seeds`` seeds; writes
``OUT/<scenario>/comparison.json`` and prints one table per scenario (medians with IQR).

    python bench/time_to_target.py --seeds 0-4 --budget-s 600            # the real benchmark
    python bench/time_to_target.py --seeds 0-1 --budget-s 60 --out /tmp/b  # a quick check
    python bench/time_to_target.py --scenario S.yaml --rescore DIR       # re-score with S's current target

``--rescore DIR`` re-reads a finished comparison's histories and recomputes both kinds of time to
target with the scenario's current target (e.g. after ``gridflex targets`` wrote its sidecar).

A null time to target (never reached within the budget) ranks as +infinity.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from gridflex.runs.compare import compare, comparison_table, machine_load, parse_seeds, rescore
from gridflex.plugins.registry import load_registry
from gridflex.shipped import shipped_scenarios_dir

LEARNERS = ("gradmap", "gradmap_e1", "ssl_penalty", "ssl_pd")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenario", help="small scenario YAML (default: the embedded default)")
    parser.add_argument("--large", action="store_true", help="also run scenarios/ieee123_1000.yaml if present")
    parser.add_argument("--learners", default=",".join(LEARNERS), help="comma-separated learners")
    parser.add_argument("--seeds", default="0-4", help="learner seeds, e.g. 0-4")
    parser.add_argument("--budget-s", type=float, default=300.0, help="training-clock budget per run (s)")
    parser.add_argument("--validation-s", type=float, default=None,
                        help="validation interval (s of training clock; default budget/10)")
    parser.add_argument("--out", type=Path, default=Path("bench/results/time_to_target"), help="output folder")
    parser.add_argument("-o", "--override", action="append", default=[], help="extra scenario overrides")
    parser.add_argument("--rescore", type=Path, help="re-score DIR/comparison.json with the scenario's current target")
    args = parser.parse_args(argv)

    pm, registry = load_registry()
    if args.rescore:
        result = rescore(args.rescore, args.scenario, overrides=args.override, registry=registry)
        print(comparison_table(result))
        print(f"rewrote {args.rescore / 'comparison.json'}")
        return 0
    scenarios = [args.scenario]
    large = shipped_scenarios_dir() / "ieee123_1000.yaml"
    if args.large and large.exists():
        scenarios.append(str(large))
    interval = args.validation_s or args.budget_s / 10
    overrides = [f"learner.params.budget_seconds={args.budget_s}", "learner.params.budget_iterations=null",
                 f"learner.params.validation_interval_s={interval}",
                 "learner.params.validation_interval_iterations=null", *args.override]
    learners = [x for x in args.learners.split(",") if x]
    for scenario in scenarios:
        name = Path(scenario).stem if scenario else "default"
        t0 = time.perf_counter()
        result = compare(scenario, learners, parse_seeds(args.seeds), args.out / name, overrides=overrides,
                         registry=registry, pm=pm, progress=False)
        print(f"\n{result['scenario']}: {len(learners)} learners x {args.seeds} seeds, "
              f"budget {args.budget_s:.0f} s each ({time.perf_counter() - t0:.0f} s wall)")
        print(machine_load())  # wall-clock budgets depend on the machine's load and threads
        print(comparison_table(result))
        print(f"wrote {args.out / name / 'comparison.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
