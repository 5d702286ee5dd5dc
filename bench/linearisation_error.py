"""Error of the linearised network (``linear3ph``) against the exact AC solver (``ac3ph``).

Usage::

    python bench/linearisation_error.py [--scenario scenarios/ieee123_1000.yaml] [--days N]

Prints two tables (Markdown) for docs/linearised.md:

1. IEEE 123 at uniform load levels 0.3x-1.5x, no devices, linearised at the base case (1.0x):
   max and mean |V| error over monitored nodes (pu) and source-power error (kW, % of import).
2. The scenario's validation days under ``no_control`` (all agents, PV, households; every step
   of every day), with the same base-case linearisation.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch


def _errors(env, lin_solver, load_scale, p_kw, q_kvar):
    with torch.no_grad():
        ac = env.solver.solve(load_scale, p_kw, q_kvar)
        li = lin_solver.solve(load_scale, p_kw, q_kvar)
        vm_ac = env.voltage_monitor.magnitudes_pu(ac.v_pu)
        vm_li = env.voltage_monitor.magnitudes_pu(li.v_pu)
    dv = (vm_li - vm_ac).abs()
    ds = (li.source_power_kw - ac.source_power_kw).abs()
    return dv, ds, ac


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenario", default="scenarios/ieee123_1000.yaml")
    parser.add_argument("--days", type=int, default=None, help="validation days (default: the scenario's)")
    args = parser.parse_args()

    from _world import scenario_world
    from gridflex.learning.training import validation_days_exogenous
    from gridflex_plugins.solvers.linear3ph import Linear3PhSolver

    registry, loaded, world = scenario_world(args.scenario, args.days)
    env = world.env
    t0 = time.perf_counter()
    lin = Linear3PhSolver(env.grid, {"point": "base", "point_load_mult": 1.0}, injection_nodes=env.injection_nodes)
    build_s = time.perf_counter() - t0
    n_loads, n_inj = len(env.grid.load_elements), len(env.injection_nodes)
    print(f"# {loaded.config.name}: {len(env.voltage_monitor)} monitored nodes, {n_inj} injection nodes, "
          f"linearised at the base case (1.0x) in {build_s:.2f} s\n")

    print("## Uniform load levels (no devices, no PV)\n")
    print("| load level | max abs(dV) (pu) | mean abs(dV) (pu) | source import (kW) | source-power error (kW) | (%) |")
    print("|---:|---:|---:|---:|---:|---:|")
    levels = np.round(np.arange(0.3, 1.51, 0.1), 2)
    scale = torch.as_tensor(levels, dtype=torch.float64)[:, None].expand(-1, n_loads)
    zeros = torch.zeros(len(levels), n_inj, dtype=torch.float64)
    dv, ds, ac = _errors(env, lin, scale, zeros, zeros)
    for k, level in enumerate(levels):
        p = float(ac.source_power_kw[k])
        print(f"| {level:.1f}x | {float(dv[k].max()):.2e} | {float(dv[k].mean()):.2e} | {p:.0f} | "
              f"{float(ds[k]):.1f} | {100 * float(ds[k]) / abs(p):.2f} |")

    exo = validation_days_exogenous(world)
    nc = registry.get("learner", "no_control")
    learner = nc(nc.Config(), env)
    with torch.no_grad():
        rollout = env.rollout(exo, learner.act)
    dv, ds, ac = _errors(env, lin, exo.load_scale, rollout.p_injection_kw, rollout.q_injection_kvar)
    v_min, v_max = loaded.config.limits.v_limits_pu
    vm_ac = env.voltage_monitor.magnitudes_pu(ac.v_pu)
    with torch.no_grad():
        vm_li = env.voltage_monitor.magnitudes_pu(lin.solve(exo.load_scale, rollout.p_injection_kw,
                                                            rollout.q_injection_kvar).v_pu)
    viol_ac = (vm_ac < v_min) | (vm_ac > v_max)
    viol_li = (vm_li < v_min) | (vm_li > v_max)
    print(f"\n## Validation days under no_control ({exo.batch} days x {exo.steps} steps)\n")
    print("| quantity | value |")
    print("|---|---:|")
    print(f"| max abs(dV) (pu) | {float(dv.max()):.2e} |")
    print(f"| mean abs(dV) (pu) | {float(dv.mean()):.2e} |")
    print(f"| 99th percentile abs(dV) (pu) | {float(torch.quantile(dv.flatten(), 0.99)):.2e} |")
    print(f"| max source-power error (kW) | {float(ds.max()):.1f} |")
    print(f"| mean source-power error (kW) | {float(ds.mean()):.1f} |")
    print(f"| mean source import, AC (kW) | {float(ac.source_power_kw.mean()):.0f} |")
    print(f"| daily energy-cost error (%) | {100 * float(((exo.price_per_kwh * (ds)).sum() / (exo.price_per_kwh * ac.source_power_kw.abs()).sum())):.2f} |")
    print(f"| voltage violation rate AC / linear | {float(viol_ac.double().mean()):.4f} / {float(viol_li.double().mean()):.4f} |")
    print(f"| samples classified differently (in/out of limits) | {float((viol_ac != viol_li).double().mean()):.4f} |")


if __name__ == "__main__":
    main()
