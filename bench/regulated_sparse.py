"""Regulated rollouts on a large feeder: per-sample regulator taps on the sparse Z-bus path.

Builds a scenario's world (default ``scenarios/ieee8500_10000.yaml``: 10,000 agents, 12
regulators, sparse method), then rolls out the no-control baseline on validation days with frozen
taps and with the tap controller (every day-step at its own taps in one batched solve per step,
docs/network.md), and prints times, violation rates, the tap states met and the process's peak
memory. Not a test. Example::

    OMP_NUM_THREADS=1 python bench/regulated_sparse.py --days 2
"""

from __future__ import annotations

import argparse
import platform
import resource
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    from gridflex.learning.metrics import evaluation_metrics
    from gridflex.plugins.registry import load_registry
    from gridflex.runs.world import build_world
    from gridflex.scenario import load_scenario

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scenario", type=Path, default=REPO / "scenarios" / "ieee8500_10000.yaml")
    parser.add_argument("--days", type=int, default=2)
    args = parser.parse_args()
    pm, registry = load_registry()
    start = time.perf_counter()
    loaded = load_scenario(args.scenario, [], registry)
    world = build_world(loaded, registry, pm)
    env = world.env
    print(f"# {loaded.config.name}: {env.n_agents} agents, {env.grid.n_nodes} nodes, "
          f"{len(env.feeder.regcontrols)} regulators, method {env.solver.method}; torch "
          f"{torch.__version__}, {torch.get_num_threads()} threads, {platform.machine()}; "
          f"build {time.perf_counter() - start:.1f} s")
    exo = env.exogenous(world.data.split("validation").get(np.arange(args.days)))

    def no_control(f, t, obs, state, inputs):
        return env.fleets[f].model.baseline_u("no_control", state, inputs)

    limits = loaded.config.limits
    print("| taps | rollout s | violation rate | cost EUR/day | all converged |")
    print("| --- | ---: | ---: | ---: | --- |")
    for name, regulate in (("frozen", False), ("regulated", True)):
        t0 = time.perf_counter()
        with torch.no_grad():
            rollout = env.rollout(exo, no_control, regulate=regulate)
        seconds = time.perf_counter() - t0
        metrics = evaluation_metrics(env, rollout, tuple(limits.v_limits_pu), limits.line_limits)
        print(f"| {name} | {seconds:.1f} | {metrics['voltage_violation_rate']:.2%} | "
              f"{metrics['cost_per_day']:,.1f} | {bool(rollout.flow.converged.all())} |")
    bank = env.solver.network.tap_bank
    print(f"tap states solved: {len(env.tap_solvers)}; bank rank (regulator terminal nodes): "
          f"{bank.rank if bank is not None else '-'}; peak RSS "
          f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6:.2f} GB")


if __name__ == "__main__":
    main()
