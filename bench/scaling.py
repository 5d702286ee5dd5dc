"""Scaling: seconds per GradMAP training iteration and peak memory at 1,000 / 3,000 / 10,000 agents.

Each size is the shipped ``ieee8500_10000`` scenario (IEEE 8500, sparse Z-bus power flow) with the
device counts set to the paper's 40/40/20 split of N agents (batteries / heat pumps / micro-CHP;
every other setting as shipped: households, PV, frozen taps, GradMAP's defaults, 8 training days
per iteration). Per size, in a fresh process (so the peak resident set is that size's own):
build the world, ``setup`` the learner (no-control statistics and the behaviour-cloning warm
start), run ``--warmup`` training iterations untimed, then ``--iterations`` timed ones. Reported:

* ``s/iter``: median seconds per training iteration (wall; CPU-process time beside it), split
  into the environment gradient (rollout + backward through the implicit power-flow adjoint) and
  the policy fit (GradMAP's inner epochs), as the learner reports them;
* ``PF solves/iter``: power-flow samples solved per iteration (the training counter: days x steps);
* ``peak RSS``: the process's peak resident set (``resource.getrusage``: build, warm start and
  iterations together; the sparse path's largest single item is still ``build_grid``'s dense
  admittance matrix, ~1.2 GB on IEEE 8500);
* with ``--device cuda``: ``torch.cuda.max_memory_allocated`` over the timed iterations.

Prints a Markdown table (and the per-size JSON lines it is built from); not a test. Examples::

    OMP_NUM_THREADS=1 python bench/scaling.py                    # CPU, 1,000 / 3,000 / 10,000
    python bench/scaling.py --device cuda --threads 0            # a GPU session (0: torch's default threads)
    python bench/scaling.py --agents 1000 --iterations 2         # one quick size
    python bench/scaling.py --scenario scenarios/ieee123_1000.yaml --agents 1000
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_SCENARIO = REPO / "scenarios" / "ieee8500_10000.yaml"
SPLIT = (("battery", 0.4), ("heat_pump", 0.4), ("generator", 0.2))  # the paper's proportions


def device_counts(n_agents: int) -> list[int]:
    """40/40/20 of ``n_agents`` (rounded; the remainder goes to the first group)."""
    counts = [int(round(share * n_agents)) for _, share in SPLIT]
    counts[0] += n_agents - sum(counts)
    return counts


def overrides(n_agents: int, device: str) -> list[str]:
    return [f"device={device}"] + [f"devices[{k}].count={c}" for k, c in enumerate(device_counts(n_agents))]


def measure(scenario: Path, n_agents: int, device: str, warmup: int, iterations: int, seed: int) -> dict:
    """One size in this process: build, warm start, ``warmup`` + ``iterations`` training iterations."""
    import torch

    from gridflex.learning.training import Trainer
    from gridflex.plugins.registry import load_registry
    from gridflex.runs.world import build_world
    from gridflex.scenario import load_scenario

    def sync() -> None:
        if torch.device(device).type == "cuda":
            torch.cuda.synchronize()

    pm, registry = load_registry()
    loaded = load_scenario(scenario, overrides(n_agents, device), registry)
    for k, (kind, _) in enumerate(SPLIT):
        if loaded.config.devices[k].type != kind:
            raise SystemExit(f"{scenario}: devices[{k}] is {loaded.config.devices[k].type}, expected {kind}")
    t0 = time.perf_counter()
    world = build_world(loaded, registry, pm)
    build_s = time.perf_counter() - t0
    env = world.env
    cls = registry.get("learner", loaded.config.learner.type)
    learner = cls(loaded.component_config("learner"), env, seed=seed)
    trainer = Trainer(world, progress=False, seed=seed)
    t0 = time.perf_counter()
    learner.setup(trainer)
    sync()
    setup_s = time.perf_counter() - t0
    rows = []
    for k in range(warmup + iterations):
        if k == warmup and torch.device(device).type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        solves = env.counters.power_flow_solves
        sync()
        wall, cpu = time.perf_counter(), time.process_time()
        info = learner.train_iteration(trainer)
        sync()
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        if k >= warmup:
            rows.append({"wall_s": wall, "cpu_s": cpu, "env_s": info.get("env_s", float("nan")),
                         "fit_s": info.get("fit_s", float("nan")),
                         "solves": env.counters.power_flow_solves - solves})
    solver = getattr(env, "solver", None)
    out = {
        "scenario": loaded.config.name, "agents": env.n_agents, "households": len(env.households),
        "nodes": env.grid.n_nodes, "device": str(env.device), "dtype": str(env.dtype).replace("torch.", ""),
        "method": getattr(solver, "method", None), "learner": loaded.config.learner.type,
        "days_per_batch": getattr(learner.config, "days_per_batch", None),
        "threads": torch.get_num_threads(), "build_s": build_s, "setup_s": setup_s,
        "iterations": len(rows),
        "wall_s_per_iter": statistics.median(r["wall_s"] for r in rows),
        "cpu_s_per_iter": statistics.median(r["cpu_s"] for r in rows),
        "env_s_per_iter": statistics.median(r["env_s"] for r in rows),
        "fit_s_per_iter": statistics.median(r["fit_s"] for r in rows),
        "wall_s_all": [round(r["wall_s"], 3) for r in rows],
        "pf_solves_per_iter": statistics.median(r["solves"] for r in rows),
        "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,  # KiB on Linux
    }
    if torch.device(device).type == "cuda":
        out["cuda_max_allocated_gb"] = torch.cuda.max_memory_allocated() / 2**30
        out["gpu"] = torch.cuda.get_device_name()
    return out


def table(results: list[dict]) -> list[str]:
    cuda = any("cuda_max_allocated_gb" in r for r in results)
    head = ("| scenario | agents | households | device, threads | s/iter (wall) | CPU s/iter | env gradient s "
            "| policy fit s | PF solves/iter | build s | warm start s | peak RSS GB"
            + (" | CUDA max allocated GB |" if cuda else " |"))
    lines = [head, "|" + " --- |" * head.count(" | ") + " --- |"]
    for r in results:
        lines.append(
            f"| {r['scenario']} | {r['agents']:,} | {r['households']:,} | {r['device']}, {r['threads']} "
            f"| {r['wall_s_per_iter']:.2f} | {r['cpu_s_per_iter']:.2f} | {r['env_s_per_iter']:.2f} "
            f"| {r['fit_s_per_iter']:.2f} | {r['pf_solves_per_iter']:.0f} | {r['build_s']:.1f} "
            f"| {r['setup_s']:.1f} | {r['peak_rss_gb']:.2f}"
            + (f" | {r.get('cuda_max_allocated_gb', float('nan')):.2f} |" if cuda else " |"))
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scenario", type=Path, default=DEFAULT_SCENARIO,
                        help="a scenario whose devices are battery, heat_pump, generator in that order")
    parser.add_argument("--agents", type=int, nargs="+", default=[1000, 3000, 10000])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--warmup", type=int, default=1, help="untimed training iterations per size")
    parser.add_argument("--iterations", type=int, default=3, help="timed training iterations per size")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (0: leave torch's default)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--one", action="store_true", help=argparse.SUPPRESS)  # a child process: one size
    args = parser.parse_args()
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    if args.one:
        print(json.dumps(measure(args.scenario, args.agents[0], args.device, args.warmup, args.iterations,
                                 args.seed)), flush=True)
        return
    import torch

    print(f"# {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; {platform.machine()}, "
          f"{platform.processor() or 'cpu'}; Python {platform.python_version()}, torch {torch.__version__}; "
          f"command: python bench/scaling.py {' '.join(sys.argv[1:])}", flush=True)
    results = []
    for n in args.agents:
        cmd = [sys.executable, __file__, "--one", "--scenario", str(args.scenario), "--agents", str(n),
               "--device", args.device, "--warmup", str(args.warmup), "--iterations", str(args.iterations),
               "--threads", str(args.threads), "--seed", str(args.seed)]
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0:
            print(f"# {n} agents failed (exit {done.returncode}):\n{done.stderr[-3000:]}", flush=True)
            continue
        result = json.loads(done.stdout.strip().splitlines()[-1])
        print(json.dumps(result), flush=True)
        results.append(result)
    print("\n".join(table(results)))


if __name__ == "__main__":
    main()
