"""GradMAP family: environment gradient, one outer iteration, smoke runs, comparison contract.

A tiny world (IEEE 13, 16 agents, 2-day batches) keeps the whole module in seconds.
"""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch

from gridflex.plugins import load_registry
from gridflex.scenario import load_scenario
from gridflex.training import Trainer
from gridflex.world import build_world

TINY = """
name: tiny13
feeder: {file: ieee13, taps: file}
solver: {type: ac3ph, params: {tol_pu: 1.0e-12, adjoint_tol: 1.0e-13}}
population: {households_per_kw: 0.05, pv_share: 0.4}
devices:
  - {type: battery, count: 8, params: {reactive_power: true}}
  - {type: heat_pump, count: 4}
  - {type: generator, count: 4}
learner: {type: gradmap, params: {days_per_batch: 2, hidden_sizes: [8], warm_start_epochs: 2,
          budget_iterations: 2, validation_interval_iterations: 1, budget_seconds: null}}
data: {n_validation_days: 2, n_test_days: 1}
environment: {regulated_evaluation: false}
target: {max_violation_rate: 0.5}
"""
FAST = ["learner.params.days_per_batch=2", "learner.params.hidden_sizes=[8]",
        "learner.params.warm_start_epochs=2", "learner.params.budget_iterations=2",
        "learner.params.budget_seconds=null", "learner.params.validation_interval_iterations=1"]
TRAINING_LEARNERS = ("gradmap", "gradmap_e1", "ssl_penalty", "ssl_pd")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    path = tmp_path_factory.mktemp("scenario") / "tiny13.yaml"
    path.write_text(TINY)
    pm, registry = load_registry()
    loaded = load_scenario(path, [], registry)
    world = build_world(loaded, registry, pm)
    return path, pm, registry, loaded, world


def make_learner(setup, name="gradmap", **params):
    _, _, registry, loaded, world = setup
    cls = registry.get("learner", name)
    config = cls.Config.model_validate({**loaded.component_config("learner").model_dump(), **params}
                                       if name == "gradmap" else
                                       {"days_per_batch": 2, "hidden_sizes": [8], **params})
    return cls(config, world.env, seed=0)


def fixed_days(world, n=2):
    return world.env.exogenous(world.data.split("train").get(np.array([3, 40])[:n]))


def test_environment_gradient_matches_finite_differences_and_open_loop(setup):
    _, _, _, loaded, world = setup
    env = world.env
    learner = make_learner(setup, dual_init_voltage=50.0)
    trainer = Trainer(world, progress=False)
    exo = fixed_days(world, 1)
    rollout, lag, g = learner.environment_gradient(trainer, exo)

    # literal open-loop re-simulation with u_fixed = the policies' outputs: same gradient
    u = [traj.u.detach().clone().requires_grad_(True) for traj in rollout.fleets]
    value = learner._lagrangian(trainer, env.rollout(exo, u_fixed=u)).value
    g_open = torch.autograd.grad(value, u)
    assert torch.allclose(value, lag.value, rtol=1e-12)
    for a, b in zip(g, g_open):
        assert torch.allclose(a, b, rtol=1e-9, atol=1e-12)

    # finite differences at random outputs near mid-range: away from the |p| kink of battery
    # degradation at p = 0 and from the energy limits (a battery pinned at a limit sits on a kink)
    gen = torch.Generator().manual_seed(1)
    u = [(0.4 + 0.2 * torch.rand(x.shape, generator=gen, dtype=x.dtype)).requires_grad_(True) for x in u]
    g = torch.autograd.grad(learner._lagrangian(trainer, env.rollout(exo, u_fixed=u)).value, u)

    def lagrangian_at(us):
        with torch.no_grad():
            return float(learner._lagrangian(trainer, env.rollout(exo, u_fixed=us)).value)

    h = 1e-4  # central differences; the solver tolerance limits smaller steps (noise ~1e-6)
    for fleet, t, i, k in ((0, 2, 3, 0), (0, 5, 5, 1), (2, 17, 1, 0)):
        plus = [x.detach().clone() for x in u]
        minus = [x.detach().clone() for x in u]
        plus[fleet][0, t, i, k] += h
        minus[fleet][0, t, i, k] -= h
        fd = (lagrangian_at(plus) - lagrangian_at(minus)) / (2 * h)
        assert fd == pytest.approx(float(g[fleet][0, t, i, k]), rel=2e-4, abs=2e-6)


def test_one_outer_iteration_lowers_the_lagrangian(setup):
    _, _, _, _, world = setup
    learner = make_learner(setup, warm_start_epochs=0)
    trainer = Trainer(world, progress=False)
    exo = fixed_days(world)

    def closed_loop_lagrangian():
        with torch.no_grad():
            return float(learner._lagrangian(trainer, world.env.rollout(exo, learner.act)).value)

    before = closed_loop_lagrangian()
    duals = [t.clone() for t in learner.duals.tensors()]
    extras = learner.outer_iteration(trainer, exo, ascend=False)
    assert all(torch.equal(a, b) for a, b in zip(duals, learner.duals.tensors()))
    assert 0.0 <= extras["clipped_share"] <= 1.0
    assert closed_loop_lagrangian() < before


def test_learners_smoke_and_comparison_contract(setup, tmp_path):
    from gridflex.compare import compare

    path, pm, registry, _, world = setup
    learners = ["no_control", *TRAINING_LEARNERS]
    result = compare(path, learners, [0], tmp_path, overrides=FAST, registry=registry, pm=pm,
                     progress=False, echo=lambda *_: None)
    on_disk = json.loads((tmp_path / "comparison.json").read_text())
    assert on_disk == json.loads(json.dumps(result))
    assert set(on_disk["target"]) >= {"max_violation_rate", "max_cost_per_day", "reference", "evaluated_on"}
    assert on_disk["target"]["evaluated_on"] == "validation"
    assert set(on_disk["learners"]) == set(learners)
    for name, entry in on_disk["learners"].items():
        assert set(entry) >= {"runs", "time_to_target_s", "median", "iqr"}
        assert len(entry["runs"]) == len(entry["time_to_target_s"]) == 1
        assert "cost_per_day" in entry["median"] and "time_to_target_s" in entry["median"]
        assert len(entry["iqr"]["voltage_violation_rate"]) == 2
    assert on_disk["learners"]["no_control"]["time_to_target_s"] == [None]

    for name in TRAINING_LEARNERS:
        run_dir = tmp_path / name / "seed0"
        rows = list(csv.DictReader((run_dir / "history.csv").open()))
        assert [int(r["iteration"]) for r in rows] == [0, 1, 2]
        assert int(rows[-1]["env_gradient_evaluations"]) == 2
        assert int(rows[-1]["power_flow_solves"]) > int(rows[0]["power_flow_solves"])
        assert rows[0]["lagrangian"] == "" and rows[-1]["lagrangian"] != ""
        metrics = json.loads((run_dir / "metrics.json").read_text())
        assert metrics["env_gradient_evaluations"] == 2 and metrics["policy_updates"] > 0
        assert metrics["train_seconds"] == pytest.approx(float(rows[-1]["wall_s"]), rel=1e-5)
        state = torch.load(run_dir / "checkpoint.pt", weights_only=True)
        fresh = make_learner(setup, name)
        fresh.load_state_dict(state["learner"])
        assert fresh.env_gradient_evaluations == 2
        torch.load(run_dir / "policy.pt", weights_only=True)
