"""The headline comparison (issue 16): every learner with its tuned overlay, every controller, many
seeds, one scenario, one command per scenario; then ``gridflex report`` on the folder.

    python bench/headline.py scenarios/ieee13_small.yaml --seeds 0-9 --out runs/headline/ieee13_small
    python bench/headline.py scenarios/ieee123_1000.yaml --seeds 0-4 --out runs/headline/ieee123_1000 \\
        --reuse reference=docs/measurements/cpu_issue13_ieee123_reference_test_metrics.json

Protocol (fixed before running, the same for every learner):

* params: the committed tuning overlays ``tuning/tuned/<learner>.yaml`` (docs/tuning.md);
* training clock: ``--budget-s`` of CPU time (``training_clock: cpu``, one thread per run) for the
  gradient learners, ``--marl-factor`` times that for IPPO; validation every tenth of the
  gradient learners' budget (IPPO: every tenth of its own budget when ``--marl-validation
  tenth``, the default on large feeders where a validation costs seconds);
* ``gridflex compare --jobs J``: J runs at a time, each pinned to its own core;
* the budget and validation cadence are written into per-learner overlays
  ``OUT-params/<learner>.yaml`` (the tuned params plus the budget), so one ``compare`` call can
  give IPPO its own clock; the exact command is saved as ``OUT/command.txt``.
"""

from __future__ import annotations

import argparse
import shlex
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
TRAINED = ("ippo", "gradmap", "gradmap_e1", "ssl_penalty", "ssl_pd")  # longest runs first
FIXED = ("no_control", "rule_based", "droop", "reference")


def overlay(learner: str, tuned_dir: Path, budget_s: float, validation_s: float) -> dict:
    """The tuned params of ``learner`` plus the comparison's budget and validation cadence."""
    doc = yaml.safe_load((tuned_dir / f"{learner}.yaml").read_text())
    params = dict(doc["learner"]["params"])
    params.update(budget_seconds=budget_s, budget_iterations=None, validation_interval_s=validation_s,
                  validation_interval_iterations=None, training_clock="cpu")
    return {"learner": {"type": learner, "params": params}}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("scenario")
    parser.add_argument("--seeds", default="0-9")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--budget-s", type=float, default=20.0, help="gradient learners' CPU clock (s)")
    parser.add_argument("--marl-factor", type=float, default=10.0, help="IPPO's clock as a multiple")
    parser.add_argument("--marl-validation", choices=("same", "tenth"), default="same",
                        help="IPPO validates as often as the gradient learners (same) or every tenth of its budget")
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--tuned", type=Path, default=ROOT / "tuning" / "tuned")
    parser.add_argument("--learners", default=",".join(TRAINED + FIXED))
    parser.add_argument("--reuse", action="append", default=[], metavar="NAME=METRICS_JSON")
    parser.add_argument("--gridflex", default=str(Path(sys.executable).with_name("gridflex")))
    args = parser.parse_args(argv)

    learners = [n for n in args.learners.split(",") if n]
    params_dir = args.out.parent / f"{args.out.name}-params"
    params_dir.mkdir(parents=True, exist_ok=True)
    command = [args.gridflex, "compare", args.scenario, "--learners", ",".join(learners), "--seeds", args.seeds,
               "--jobs", str(args.jobs), "--out", str(args.out)]
    gradient_validation_s = args.budget_s / 10
    for learner in learners:
        if learner not in TRAINED:
            continue
        budget = args.budget_s * (args.marl_factor if learner == "ippo" else 1.0)
        validation = budget / 10 if (learner == "ippo" and args.marl_validation == "tenth") else gradient_validation_s
        path = params_dir / f"{learner}.yaml"
        path.write_text(f"# bench/headline.py: tuning/tuned/{learner}.yaml + the comparison's budget\n"
                        + yaml.safe_dump(overlay(learner, args.tuned, budget, validation), sort_keys=False))
        command += ["--params", str(path)]
    for item in args.reuse:
        command += ["--reuse", item]
    print("+", shlex.join(command), flush=True)
    code = subprocess.call(command, cwd=ROOT, env={**__import__("os").environ, "OMP_NUM_THREADS": "1"})
    if code == 0:
        (args.out / "command.txt").write_text(shlex.join(["python", "bench/headline.py", *sys.argv[1:]]) + "\n"
                                             + shlex.join(command) + "\n")
    return code


if __name__ == "__main__":
    sys.exit(main())
