"""Which rated conductors the test-day schedules of some controllers overload, and by how much.

Usage::

    python bench/line_overloads.py SCENARIO RUN_DIR [RUN_DIR ...]

Each RUN_DIR holds the ``schedules.npz`` of a ``gridflex run`` (the learner's folder, or
``baselines/<name>``). Its frozen-tap nodal injections are re-solved with the scenario's AC solver
(the largest |V| difference to the stored solution is printed as a check that the replay is the
run's), and per controller the script prints the overload rate (share of conductor-hours above
their rating), the loading of the overloaded conductor-hours (median, 95th percentile, max, in
units of the rating) and the conductors most often overloaded. Last, the conductor-hours
overloaded under *every* controller given: overloads that none of these schedules removes.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch


def loading_of_run(env, run_dir: Path) -> tuple[np.ndarray, float]:
    """``|I| / I_max`` of the run's frozen-tap test days ``[B, T, n_rated]`` and max |dV| (pu)."""
    data = np.load(run_dir / "schedules.npz")
    names = [env.grid.node_names[n] for n in env.injection_nodes]
    if list(data["injection_nodes"]) != names:
        raise SystemExit(f"{run_dir}: its injection nodes are not this scenario's")
    p_kw, q_kvar, load_scale = data["p_kw"], data["q_kvar"], data["load_scale"]
    batch, steps = p_kw.shape[:2]
    tensor = dict(device=env.device, dtype=env.dtype)
    flat = lambda a: torch.as_tensor(a.reshape(batch * steps, -1), **tensor)  # noqa: E731
    with torch.no_grad():
        flow = env.solver.solve(flat(load_scale), flat(p_kw), flat(q_kvar))
        loading = env.current_monitor.loading(flow.branch_currents_a).cpu().numpy()
        vm = flow.vm_pu.cpu().numpy()
    dv = float(np.abs(vm.reshape(data["vm_pu"].shape) - data["vm_pu"]).max())
    return loading.reshape(batch, steps, -1), dv


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("scenario")
    parser.add_argument("runs", nargs="+", type=Path, help="run folders with schedules.npz")
    parser.add_argument("--top", type=int, default=8, help="conductors listed per controller")
    args = parser.parse_args()

    from gridflex.plugins.registry import load_registry
    from gridflex.scenario import load_scenario
    from gridflex.runs.world import build_world

    pm, registry = load_registry()
    world = build_world(load_scenario(args.scenario, [], registry), registry, pm)
    env = world.env
    names = np.array(env.current_monitor.names)
    overloaded = []
    for run_dir in args.runs:
        loading, dv = loading_of_run(env, run_dir)
        over = loading > 1.0
        overloaded.append(over)
        hot = loading[over]
        quantiles = np.quantile(hot, [0.5, 0.95, 1.0]) if hot.size else np.zeros(3)
        print(f"{run_dir}: {loading.shape[0]} days, replay max |dV| {dv:.1e} pu; overload rate {over.mean():.2%} "
              f"of {over.size} conductor-hours; loading when overloaded: median {quantiles[0]:.3f}, "
              f"95 % {quantiles[1]:.3f}, max {quantiles[2]:.3f} x rating")
        counts = over.sum(axis=(0, 1))
        for k in np.argsort(-counts)[: args.top]:
            if counts[k]:
                print(f"    {names[k]:<28} {counts[k]:4d} h, max {loading[..., k].max():.3f} x rating")
    if len(overloaded) > 1:
        common = np.logical_and.reduce(overloaded)
        print(f"overloaded under every controller above: {common.mean():.2%} of conductor-hours; "
              + ", ".join(f"{'/'.join(r.parts[-2:])}: {common.sum() / max(o.sum(), 1):.0%} of its own"
                          for r, o in zip(args.runs, overloaded)))


if __name__ == "__main__":
    main()
