"""Credit share of every PPO reward offered (issue #21): each agent's own reward term against its
exact marginal effect on the team's network cost, at the no-control operating points.

Usage::

    python bench/credit_share.py [--scenario scenarios/ieee13_small.yaml] [--points 6] [--days N]

No training: one ``no_control`` rollout on the scenario's validation days, then at the ``--points``
day-steps with the most violated node-phases and conductors (training limits) one exact AC
linearisation each (:func:`gridflex_plugins.learners.ippo.credit.credit_diagnostic`). Prices are
the fixed defaults (20 EUR per 0.01 pu per node-step, 20 EUR per unit overload per conductor-step).
Prints a Markdown table: per reward, the least-squares share ``sum rho tau / sum tau^2`` over all
agents and points, the range of the per-fleet shares, the median per-agent ratio and the cosine;
the global term of ``own_node`` (weight 1) adds ``1/N`` to any reward that keeps it.
"""

from __future__ import annotations

import argparse
import time

import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenario", default="scenarios/ieee13_small.yaml")
    parser.add_argument("--points", type=int, default=6, help="day-steps linearised (most violations first)")
    parser.add_argument("--days", type=int, default=None, help="validation days (default: the scenario's)")
    args = parser.parse_args()

    from _world import scenario_world
    from gridflex.learning.training import validation_days_exogenous
    from gridflex_plugins.learners.ippo.credit import credit_diagnostic

    registry, loaded, world = scenario_world(args.scenario, args.days)
    env = world.env
    limits = loaded.config.limits
    exo = validation_days_exogenous(world)
    nc = registry.get("learner", "no_control")
    with torch.no_grad():
        rollout = env.rollout(exo, nc(nc.Config(), env).act)
    t0 = time.perf_counter()
    result = credit_diagnostic(env, rollout, tuple(limits.v_limits_train_pu), limits.line_limits,
                               max_points=args.points)
    seconds = time.perf_counter() - t0
    points = result.pop("_points")
    print(f"# {loaded.config.name}: {env.n_agents} agents, {len(env.voltage_monitor)} monitored node-phases, "
          f"{len(env.current_monitor)} rated conductors; {len(points)} no-control day-steps "
          f"(day, step, violated node-phases, overloaded conductors): {points}; {seconds:.1f} s\n")
    if not points:
        print("no violation at any no-control day-step: every marginal is zero")
        return
    fleets = [f.model.name for f in env.fleets]
    print("| reward | credit share (all agents) | per fleet (" + ", ".join(fleets) + ") | median rho/tau | cosine |")
    print("|---|---:|---|---:|---:|")
    for kind, row in result.items():
        per = ", ".join(f"{100 * row[f].share:.1f} %" for f in fleets)
        a = row["all"]
        print(f"| {kind} | {100 * a.share:.1f} % | {per} | {100 * a.median_ratio:.1f} % | {a.cosine:.3f} |")
    print(f"\nglobal term (reward_global = 1): {100 / env.n_agents:.2f} % of the team marginal per agent "
          f"(1/N); add it to any reward that keeps it")


if __name__ == "__main__":
    main()
