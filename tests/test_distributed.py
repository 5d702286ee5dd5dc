"""Agents across processes (docs/distributed.md): gloo ranks on CPU reproduce one process.

* ``gridflex run`` of the shipped small scenario under ``torchrun --nproc-per-node 2`` writes the
  run folder of a single-process run: metrics (learner and baselines), history, ``policy.pt``
  and ``checkpoint.pt`` agree to 1e-10 (they are in fact bitwise equal);
* in two ranks started with ``torch.multiprocessing``: the environment gradient each rank keeps
  is its own slice of one process's (not multiplied by the world size), closed-loop gradients
  through the step-by-step power flow likewise, duals are bitwise identical on every rank and
  a gathered state dict is one process's;
* bad input exits 2 with one paragraph before any process group starts.
"""

from __future__ import annotations

import csv
import json
import math
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import REPO_ROOT

SMALL = REPO_ROOT / "scenarios" / "ieee13_small.yaml"
TIMING = {"train_seconds", "validation_eval_seconds", "time_to_target_s", "wall_s", "eval_wall_s",
          "env_s", "fit_s"}
TOL = 1e-10


def _env() -> dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    return env


def _gridflex_run(out: Path, processes: int, *args: str) -> subprocess.CompletedProcess:
    launcher = [] if processes == 1 else ["-m", "torch.distributed.run", "--standalone",
                                          f"--nproc-per-node={processes}"]
    command = [sys.executable, *launcher, "-m", "gridflex", "run", str(SMALL), *args, "--out", str(out)]
    return subprocess.run(command, cwd=REPO_ROOT, env=_env(), capture_output=True, text=True, timeout=300)


def _close(a, b, where: str) -> None:
    """Nested JSON-like values (and tensors) equal to ``TOL`` (relative for large numbers)."""
    if isinstance(a, dict):
        assert set(a) == set(b), f"{where}: keys {sorted(set(a) ^ set(b))}"
        for key in a:
            if key not in TIMING:
                _close(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            _close(x, y, f"{where}[{i}]")
    elif isinstance(a, torch.Tensor):
        assert a.shape == b.shape and a.dtype == b.dtype, where
        if a.is_floating_point():
            assert torch.allclose(a, b, rtol=TOL, atol=TOL), f"{where}: {float((a - b).abs().max())}"
        else:
            assert torch.equal(a, b), where
    elif isinstance(a, float) and isinstance(b, float):
        assert math.isclose(a, b, rel_tol=TOL, abs_tol=TOL) or (math.isnan(a) and math.isnan(b)), \
            f"{where}: {a!r} vs {b!r}"
    else:
        assert a == b, f"{where}: {a!r} vs {b!r}"


def test_two_ranks_write_the_run_of_one_process(tmp_path):
    """The shipped small scenario (GradMAP, 160 agents in 3 fleets; test days also with the tap
    controller, baselines beside it) for 2 iterations: 2 gloo ranks == 1 process."""
    args = ("-o", "learner.params.budget_iterations=2", "-o", "learner.params.validation_interval_iterations=1",
            "-o", "data.n_test_days=2", "-o", "data.n_validation_days=2")
    one, two = tmp_path / "one", tmp_path / "two"
    for out, n in ((one, 1), (two, 2)):
        done = _gridflex_run(out, n, *args)
        assert done.returncode == 0, done.stderr[-3000:]
    assert "test metrics" in done.stdout and done.stdout.count("test metrics") == 1  # rank 0 speaks
    folders = [Path("."), *(Path("baselines") / b for b in ("no_control", "rule_based", "droop"))]
    for folder in folders:
        a, b = (json.loads((run / folder / "metrics.json").read_text()) for run in (one, two))
        if folder == Path("."):
            assert (b.pop("processes"), b.pop("process_backend")) == (2, "gloo")
        _close(a, b, f"{folder}/metrics.json")
    rows = [list(csv.DictReader((run / "history.csv").open())) for run in (one, two)]
    assert len(rows[0]) == len(rows[1]) == 3
    _close([{k: v for k, v in r.items() if k not in TIMING} for r in rows[0]],
           [{k: v for k, v in r.items() if k not in TIMING} for r in rows[1]], "history.csv")
    for name in ("policy.pt", "checkpoint.pt"):
        a, b = (torch.load(run / name, weights_only=True) for run in (one, two))
        _close(a, b, name)
    for name in ("schedules.npz",):
        import numpy as np

        with np.load(one / name) as a, np.load(two / name) as b:
            for key in a.files:
                if a[key].dtype.kind == "f":
                    assert np.allclose(a[key], b[key], rtol=TOL, atol=TOL, equal_nan=True), key


# ------------------------------------------------------------------------------------------------
# two ranks in this test's own processes: gradients, duals, state dicts
# ------------------------------------------------------------------------------------------------

SCENARIO = """
name: shards
feeder: {file: ieee13, taps: file}
solver: {type: ac3ph, params: {tol_pu: 1.0e-10}}
population: {households_per_kw: 0.05, pv_share: 0.4}
devices:
  - {type: battery, count: 5, params: {reactive_power: true}}
  - {type: heat_pump, count: 2}
learner: {type: gradmap, params: {days_per_batch: 2, hidden_sizes: [8], warm_start_epochs: 1,
          budget_iterations: 3, validation_interval_iterations: 1, budget_seconds: null}}
data: {n_validation_days: 1, n_test_days: 1}
environment: {regulated_evaluation: false, observe_voltage: true}
target: {max_violation_rate: 0.5}
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _experiments(directory: Path, rank: int | None, world_size: int, port: int) -> dict:
    """What the test compares, from one process (``rank None``) or one of ``world_size`` ranks."""
    import torch.distributed as dist

    from conftest import world_from_text
    from gridflex.learning.training import Trainer

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    if rank is not None:
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
        dist.init_process_group("gloo", rank=rank, world_size=world_size)
    out: dict = {}
    try:
        # agents observe their previous voltage: the power flow is solved step by step, and the
        # demand gathered every step (the shipped-scenario test covers the once-per-rollout path)
        path, pm, registry, world = world_from_text(directory, SCENARIO, name=f"shards{rank}")
        if rank is not None:
            from gridflex.learning.distributed import Ranks
            from gridflex.runs.launch import shard_world

            world = shard_world(world, Ranks(rank, world_size))
            out["bounds"] = [world.env.shard.bounds(f) for f in range(len(world.env.fleets))]
        for name in ("gradmap", "ssl_pd"):
            learner = registry.get("learner", name)(registry.get("learner", name).Config.model_validate(
                {"days_per_batch": 2, "hidden_sizes": [8], "warm_start_epochs": 1, "budget_iterations": 3,
                 "budget_seconds": None}), world.env, seed=3)
            trainer = Trainer(world, seed=3, progress=False)
            learner.setup(trainer)
            exo = trainer.sample_days(2)
            if name == "gradmap":
                _, _, g = learner.environment_gradient(trainer, exo)
                out["gradmap/G"] = [x.detach() for x in g]
            else:  # closed loop: through the policies, the dynamics and every step's power flow
                rollout = world.env.rollout(exo, lambda f, t, o, s, i: learner.policies[f](o))
                learner.optimizer.zero_grad(set_to_none=True)
                learner._lagrangian(trainer, rollout).value.backward()
                out["ssl_pd/grads"] = {f"{f}.{n}": p.grad.detach().clone()
                                       for f, pol in enumerate(learner.policies) for n, p in pol.named_parameters()}
            for _ in range(2):
                learner.train_iteration(trainer)
            out[f"{name}/duals"] = [t.clone() for t in learner.duals.tensors()]
            out[f"{name}/state"] = learner.state_dict()
            learner.dual_report()  # checks bitwise equality over ranks (raises otherwise)
    finally:
        torch.set_num_threads(threads)
        if rank is not None:
            dist.barrier()
            dist.destroy_process_group()
    return out


def _rank_main(rank: int, world_size: int, port: int, directory: str) -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    result = _experiments(Path(directory), rank, world_size, port)
    torch.save(result, Path(directory) / f"rank{rank}.pt")


def test_ranks_keep_their_gradient_slice_and_identical_duals(tmp_path):
    import torch.multiprocessing as mp

    world_size, port = 2, _free_port()
    mp.start_processes(_rank_main, args=(world_size, port, str(tmp_path)), nprocs=world_size,
                       start_method="spawn", join=True)
    one = _experiments(tmp_path, None, 1, 0)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(world_size)]
    assert ranks[0]["bounds"] == [(0, 3), (0, 1)] and ranks[1]["bounds"] == [(3, 5), (1, 2)]
    for r, got in enumerate(ranks):
        # G = dL/du gathered whole on every rank, equal to one process's (not W times it)
        for g, g1 in zip(got["gradmap/G"], one["gradmap/G"]):
            assert torch.equal(g, g1), f"rank {r}: G differs from one process's"
        # closed-loop gradients: each rank's policies hold their own agents' slice
        for key, grad in got["ssl_pd/grads"].items():
            a, b = got["bounds"][int(key.split(".")[0])]
            assert torch.equal(grad, one["ssl_pd/grads"][key][a:b]), f"rank {r}: gradient {key}"
        for name in ("gradmap", "ssl_pd"):
            for lam, lam1 in zip(got[f"{name}/duals"], one[f"{name}/duals"]):
                assert torch.equal(lam, lam1), f"rank {r}: {name} duals differ from one process's"
            _close(got[f"{name}/state"], one[f"{name}/state"], f"rank {r}: {name} state_dict")


# ------------------------------------------------------------------------------------------------
# refusals: exit 2 with one paragraph, before any process group
# ------------------------------------------------------------------------------------------------

def _as_rank0_of(monkeypatch, world_size: int) -> None:
    for key, value in {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": str(world_size),
                       "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "1"}.items():
        monkeypatch.setenv(key, value)


def test_a_learner_that_cannot_shard_is_refused(cli, monkeypatch, tmp_path):
    scenario = tmp_path / "ippo.yaml"
    scenario.write_text(SCENARIO.replace("learner: {type: gradmap, params: {days_per_batch: 2, hidden_sizes: [8], "
                                         "warm_start_epochs: 1,", "learner: {type: ippo, params: {"))
    _as_rank0_of(monkeypatch, 2)
    code, out, err = cli("run", str(scenario), "--out", str(tmp_path / "run"))
    assert code == 2, err
    assert "learner 'ippo' cannot shard its agents over 2 processes" in err and "Traceback" not in err
    assert not (tmp_path / "run").exists()


def test_more_processes_than_agents_of_a_fleet_is_refused(cli, monkeypatch, tmp_path):
    _as_rank0_of(monkeypatch, 41)
    code, out, err = cli("run", str(SMALL), "--out", str(tmp_path / "run"))
    assert code == 2, err
    assert "41 processes but devices[1] (40 x heat_pump) and devices[2] (40 x generator) have fewer agents" in err
    assert "at most 40 processes" in err and "Traceback" not in err


def test_other_commands_refuse_several_processes(cli, monkeypatch):
    _as_rank0_of(monkeypatch, 2)
    code, out, err = cli("validate", str(SMALL))
    assert code == 2 and "only `gridflex run` shards agents" in err
