"""Seconds per training iteration with the agents sharded over 1, 2, ... processes (CPU, gloo).

For each process count W in ``--processes`` it runs ``gridflex run SCENARIO`` (W = 1: one plain
process; W > 1: ``python -m torch.distributed.run --standalone --nproc-per-node W``), every process
with ``OMP_NUM_THREADS=1``, on an iteration budget with validation at iteration 0 and at the end
only, no baselines and a single test day. From ``history.csv``: seconds per iteration = (training
clock at the end - at iteration 0) / iterations, i.e. outer iterations only (the warm start and
validation excluded); the clock is elapsed time (``training_clock: wall``), since ranks wait for
each other, or with ``--clock cpu`` each process's CPU time (the largest over ranks), which on a
shared machine leaves out the time a process waited for a core. The last iteration's ``env_s`` (rollout + environment gradient, replicated work: every
process solves the same power flow) and ``fit_s`` (the proximal fit, divided among processes) are
shown beside it. ``--repeats`` runs each count several times (interleaved) and reports the
median. Prints a table and the machine; not a test. docs/benchmarks.md has measured figures.

    python bench/distributed.py                                  # ieee13_small, W = 1, 2; 20 iterations
    python bench/distributed.py --processes 1 2 4 --iterations 10 --scenario scenarios/ieee123_1000.yaml
"""

from __future__ import annotations

import argparse
import csv
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def one_run(scenario: Path, processes: int, iterations: int, learner: str, out: Path, clock: str) -> dict:
    """One ``gridflex run`` with ``processes`` processes; the timing read from its history."""
    launcher = [] if processes == 1 else ["-m", "torch.distributed.run", "--standalone",
                                          f"--nproc-per-node={processes}"]
    overrides = [f"learner.type={learner}", f"learner.params.budget_iterations={iterations}",
                 "learner.params.budget_seconds=null", f"learner.params.validation_interval_iterations={iterations}",
                 f"learner.params.training_clock={clock}", "environment.regulated_evaluation=false",
                 "data.n_test_days=1"]
    command = [sys.executable, *launcher, "-m", "gridflex", "run", str(scenario), "--no-references",
               "--out", str(out), "--force"]
    for item in overrides:
        command += ["-o", item]
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env["OMP_NUM_THREADS"] = "1"
    start = time.perf_counter()
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    if done.returncode != 0:
        sys.exit(f"gridflex run with {processes} process(es) failed:\n{done.stderr[-3000:]}")
    rows = list(csv.DictReader((out / "history.csv").open()))
    first, last = rows[0], rows[-1]
    per_iteration = (float(last["wall_s"]) - float(first["wall_s"])) / (int(last["iteration"]) - int(first["iteration"]))
    return {"per_iteration_s": per_iteration, "env_s": float(last["env_s"]) if last.get("env_s") else float("nan"),
            "fit_s": float(last["fit_s"]) if last.get("fit_s") else float("nan"), "elapsed_s": elapsed}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scenario", type=Path, default=REPO / "scenarios" / "ieee13_small.yaml")
    parser.add_argument("--processes", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--iterations", type=int, default=20)
    parser.add_argument("--learner", default="gradmap")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                        help="training clock: elapsed time (default) or each process's CPU time (the "
                        "slowest rank's; excludes time spent waiting for a core on a shared machine)")
    args = parser.parse_args()
    load_before = os.getloadavg()
    results: dict[int, list[dict]] = {w: [] for w in args.processes}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.repeats):
            for w in args.processes:
                results[w].append(one_run(args.scenario, w, args.iterations, args.learner,
                                          Path(tmp) / f"w{w}_{r}", args.clock))
    import torch

    print(f"# {args.scenario.name}, {args.learner}, {args.iterations} iterations, OMP_NUM_THREADS=1 per "
          f"process, gloo, {args.clock} clock; median of {args.repeats}")
    print(f"# {time.strftime('%Y-%m-%d')}, {platform.machine()}, {os.cpu_count()} CPUs, Python "
          f"{platform.python_version()}, torch {torch.__version__}; load average before "
          f"{load_before[0]:.2f}, after {os.getloadavg()[0]:.2f}")
    print("processes  s/iteration  speed-up  env_s (last)  fit_s (last)  run elapsed s")
    base = statistics.median(x["per_iteration_s"] for x in results[args.processes[0]])
    for w in args.processes:
        med = {k: statistics.median(x[k] for x in results[w]) for k in ("per_iteration_s", "env_s", "fit_s", "elapsed_s")}
        print(f"{w:9d}  {med['per_iteration_s']:11.3f}  {base / med['per_iteration_s']:8.2f}  "
              f"{med['env_s']:12.3f}  {med['fit_s']:12.3f}  {med['elapsed_s']:13.1f}")


if __name__ == "__main__":
    main()
