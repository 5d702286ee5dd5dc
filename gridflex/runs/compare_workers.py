"""``gridflex compare --jobs J``: the comparison's runs in J worker processes on one machine.

Each worker is a fresh (spawned) process pinned to its own CPU core (``os.sched_setaffinity``
where the platform has it) with one torch/OpenMP thread, so J runs time like J runs on a
machine of J quiet cores. A worker builds the world of its run itself (the same scenario, so
the same world) and writes the run folder exactly as ``jobs=1`` does; the parent collects each
run's ``metrics.json`` document and validation rows in task order. Runs are submitted in the
given order; a failing run fails the comparison after the running ones end (no partial
``comparison.json`` is written).
"""

from __future__ import annotations

import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path


def _init_worker(next_core, cores: list[int]) -> None:
    os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = "1"
    with next_core.get_lock():
        index = next_core.value
        next_core.value += 1
    if cores and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {cores[index % len(cores)]})
    import torch

    torch.set_num_threads(1)


def _run_one(scenario, name: str, seed: int, learner_ov: list[str], run_dir: str) -> tuple[dict, list[dict]]:
    from gridflex.plugins.registry import load_registry
    from gridflex.runs.run import execute_run
    from gridflex.scenario import load_scenario

    pm, registry = load_registry()
    loaded = load_scenario(scenario, learner_ov, registry)
    run = execute_run(loaded, registry, pm, Path(run_dir), learner_seed=seed, references=False, progress=False)
    return run.metrics, run.history


def run_in_workers(scenario, tasks: list[tuple], out_dir: Path, jobs: int, echo,
                   machine_load) -> list[tuple[dict, list[dict]]]:
    """(metrics document, validation rows) per ``(learner, seed, overrides)`` task, in task order;
    ``machine_load()`` is the load line printed beside each start and end."""
    cores = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    context = multiprocessing.get_context("spawn")
    next_core = context.Value("i", 0)
    echo(f"[compare] {len(tasks)} runs in {jobs} worker processes (one core and one thread each"
         f"{'' if cores else '; this platform cannot pin them'}); {machine_load()}")
    with ProcessPoolExecutor(max_workers=jobs, mp_context=context, initializer=_init_worker,
                             initargs=(next_core, cores)) as pool:
        futures = [pool.submit(_run_one, scenario, name, seed, list(ov), str(out_dir / name / f"seed{seed}"))
                   for name, seed, ov in tasks]
        outputs = []
        for (name, seed, _), future in zip(tasks, futures):
            outputs.append(future.result())
            echo(f"[compare] {name} seed {seed} done; {machine_load()}")
    return outputs
