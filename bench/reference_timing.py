"""Time the centralised reference (build, compile, solve, AC loop) per day on one scenario.

Usage::

    python bench/reference_timing.py scenarios/ieee123_1000.yaml [--days 1]

Prints the problem size, the one-off build and compile time and, per validation day, the
iterations, Clarabel solve seconds, wall seconds and the AC violation / overload rates.
"""

from __future__ import annotations

import argparse
import time


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("scenario")
    parser.add_argument("--days", type=int, default=1)
    args = parser.parse_args()

    import cvxpy as cp

    from gridflex.plugins.registry import load_registry
    from gridflex.scenario import load_scenario
    from gridflex.learning.training import validation_days_exogenous
    from gridflex.runs.world import build_world
    from gridflex_plugins.learners.reference import ReferenceLearner, ReferenceOPF

    pm, registry = load_registry()
    loaded = load_scenario(args.scenario, [f"data.n_validation_days={args.days}"], registry)
    world = build_world(loaded, registry, pm)
    env, cfg = world.env, loaded.config
    exo = validation_days_exogenous(world)
    config = ReferenceLearner.Config(v_limits_pu=tuple(cfg.limits.v_limits_pu), line_limits=cfg.limits.line_limits)
    t0 = time.perf_counter()
    opf = ReferenceOPF(env, config, exo.steps, exo.dt_h)
    build = time.perf_counter() - t0
    print(f"{cfg.name}: {env.n_agents} agents, {len(env.injection_nodes)} injection nodes, "
          f"{len(env.voltage_monitor)} monitored nodes, {len(opf.rating_a)} rated conductors, {exo.steps} steps")
    print(f"build {build:.1f} s (linearisation, device models)")
    if not opf.ignore_dpp:  # with ignore_dpp every solve compiles (its time is inside 'solve')
        t0 = time.perf_counter()
        data, _, _ = opf.problem.get_problem_data(cp.CLARABEL)
        print(f"conic problem: {data['A'].shape[1]} variables, {data['A'].shape[0]} rows, nnz(A) {data['A'].nnz}; "
              f"DPP compile {time.perf_counter() - t0:.1f} s (once)")
    else:
        print("parameters as constants (ignore_dpp): each solve below includes its compile")
    for b in range(exo.batch):
        _, report = opf.plan_day(exo, b)
        print(f"day {b}: {report['iterations']} iterations, solve {report['solve_seconds']:.1f} s, "
              f"wall {report['wall_seconds']:.1f} s, AC violation rate {report['ac_violation_rate']:.4f}, "
              f"line overload rate {report['ac_line_overload_rate']:.4f}, AC cost {report['ac_cost']:.1f}")


if __name__ == "__main__":
    main()
