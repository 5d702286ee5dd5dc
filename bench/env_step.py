"""Seconds per environment rollout, and per rollout + gradient, split into parts.

IEEE 123 with 1,000 agents (``scenarios/ieee123_1000.yaml``), B training days of 24 steps, agents
driven by independent per-agent linear policies (stacked weights, one einsum: the cost of a policy
forward pass). Rows: ``rollout`` (no grad; the per-step device/policy loop then one batched
power flow over B x 24 samples), split into ``power flow``, ``policies`` and ``devices + env``
(the rest); ``rollout + grad`` (closed loop with autograd, then backward of cost + voltage
penalty through the implicit adjoint) split into forward and ``backward``. Prints a table; not a
test. Examples::

    python bench/env_step.py                        # CPU, B = 8
    python bench/env_step.py --device cuda --days 8 32
    python bench/env_step.py --tap-treatment frozen regulated   # the regulated/frozen cost ratio
    python bench/env_step.py --compile --sync-free 30   # compiled steps, power flow without host syncs
"""

from __future__ import annotations

import argparse
import platform
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def build(scenario: Path, device: str, tap_treatment: str | None = None, compile_steps: bool = False,
          sync_free: int | None = None):
    from gridflex.plugins.registry import load_registry
    from gridflex.scenario import load_scenario
    from gridflex.runs.world import build_world

    pm, registry = load_registry()
    overrides = [f"device={device}"] + ([f"feeder.tap_treatment={tap_treatment}"] if tap_treatment else [])
    overrides += ["environment.compile=true"] if compile_steps else []
    if sync_free:
        overrides += ["solver.params.sync_free=true", f"solver.params.max_iter={sync_free}",
                      f"solver.params.adjoint_max_iter={sync_free}"]
    loaded = load_scenario(scenario, overrides, registry)
    return build_world(loaded, registry, pm, progress=print)


def linear_policies(env, generator):
    """Per-agent linear maps u = sigmoid(W_i o_i + b_i) for every fleet (stacked weights)."""
    params = []
    for f, fleet in enumerate(env.fleets):
        w = 0.1 * torch.randn(fleet.n_agents, env.obs_dim(f), fleet.model.action_dim,
                              generator=generator, dtype=env.dtype).to(env.device)
        b = torch.zeros(fleet.n_agents, fleet.model.action_dim, dtype=env.dtype, device=env.device)
        params.append((w.requires_grad_(True), b.requires_grad_(True)))
    timer = {"policies": 0.0}

    def act(f, t, obs, state, inputs):
        sync(env.device)
        start = time.perf_counter()
        w, b = params[f]
        u = torch.sigmoid(torch.einsum("bnk,nkd->bnd", obs, w) + b)
        sync(env.device)
        timer["policies"] += time.perf_counter() - start
        return u

    return act, params, timer


def measure(world, days: int, repeats: int) -> dict[str, float]:
    from gridflex.learning.metrics import day_costs, network_terms

    env = world.env
    rng = np.random.default_rng(0)
    exo = env.exogenous(world.data.split("train").batch(days, rng))
    act, params, timer = linear_policies(env, torch.Generator().manual_seed(0))
    best: dict[str, float] = {}

    def keep(name, value):
        best[name] = min(best.get(name, float("inf")), value)

    for _ in range(repeats + 1):
        timer["policies"] = 0.0
        sync(env.device)
        t0 = time.perf_counter()
        with torch.no_grad():
            rollout = env.rollout(exo, act)
        sync(env.device)
        total = time.perf_counter() - t0
        t0 = time.perf_counter()
        with torch.no_grad():
            env.solve_at_taps(exo.load_scale, rollout.p_injection_kw, rollout.q_injection_kvar, rollout.taps)
        sync(env.device)
        pf = time.perf_counter() - t0
        keep("rollout", total)
        keep("  power flow", pf)
        keep("  policies", timer["policies"])
        keep("  devices + env", total - pf - timer["policies"])

        sync(env.device)
        t0 = time.perf_counter()
        rollout = env.rollout(exo, act)
        terms = network_terms(env, rollout, (0.955, 1.045))
        loss = sum(day_costs(env, rollout).values()).mean() + 1e3 * terms.v_residual_pu.sum()
        sync(env.device)
        forward = time.perf_counter() - t0
        t0 = time.perf_counter()
        loss.backward()
        sync(env.device)
        backward = time.perf_counter() - t0
        for w, b in params:
            w.grad = b.grad = None
        keep("rollout + grad", forward + backward)
        keep("  forward (with graph)", forward)
        keep("  backward (adjoint + BPTT)", backward)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scenario", type=Path, default=REPO / "scenarios" / "ieee123_1000.yaml")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--days", type=int, nargs="+", default=[8])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--tap-treatment", nargs="+", default=[None], choices=["frozen", "settled", "regulated"],
                        help="tap treatments to measure (default: the scenario's own); the last row "
                        "gives each one's rollout + grad time over the first's")
    parser.add_argument("--compile", action="store_true",
                        help="environment.compile: device steps through torch.compile (the best of "
                        "the repeats excludes the first call, which compiles)")
    parser.add_argument("--sync-free", type=int, metavar="MAX_ITER", default=None,
                        help="solver.params.sync_free with this max_iter and adjoint_max_iter: the power flow and its "
                        "adjoint run exactly that many iterations without host synchronisation")
    args = parser.parse_args()
    results = {}
    for treatment in args.tap_treatment:
        world = build(args.scenario, args.device, treatment, args.compile, args.sync_free)
        env = world.env
        print(f"# {world.loaded.config.name}: {env.n_agents} agents, {len(env.households)} households, "
              f"{env.grid.n_nodes} nodes; device {env.device}, {env.dtype}; taps {env.tap_treatment}; "
              f"device steps {'compiled' if env.compiled else 'eager'}; "
              f"power flow {'sync-free, max_iter %d' % args.sync_free if args.sync_free else 'adaptive'}; "
              f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
              f"{platform.processor() or platform.machine()}", flush=True)
        for days in args.days:
            results[(env.tap_treatment, days)] = measure(world, days, args.repeats)
            if env.tap_treatment == "regulated":
                results[(env.tap_treatment, days)]["tap states solved"] = float(len(env.tap_solvers))
    keys = list(results)
    first = {days: results[(keys[0][0], days)] for days in args.days}
    for key in keys:
        results[key][f"rollout + grad / {keys[0][0]}"] = results[key]["rollout + grad"] / first[key[1]]["rollout + grad"]
    names = list(dict.fromkeys(name for r in results.values() for name in r))
    print("| part | " + " | ".join(f"{t}, B = {d} days (s)" for t, d in keys) + " |")
    print("| --- |" + " --- |" * len(keys))
    for name in names:
        print(f"| {name} | " + " | ".join(f"{results[k][name]:.3f}" if name in results[k] else "" for k in keys) + " |")


if __name__ == "__main__":
    main()
