"""One orchestration path and explicit contracts: the world is built once, the evaluation solver
judges whatever trains, counters live in one place, a run returns its history in memory, and
baselines are found by their declared role."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import torch

from conftest import world_from_text
from gridflex.errors import UserError
from gridflex.plugins.registry import load_registry
from gridflex.runs.evaluate import evaluate, held_out_days
from gridflex.runs.run import baseline_names, execute_run, plan_run
from gridflex.scenario import load_scenario

TINY = """
name: tiny_orchestration
seed: 3
feeder: {file: ieee13, taps: file, load_model: constant_pq}
data: {n_validation_days: 2, n_test_days: 2}
population: {households_per_kw: 0.2, pv_share: 0.4, peak_scale: 1.0}
devices:
  - {type: battery, count: 6}
  - {type: heat_pump, count: 4}
environment: {regulated_evaluation: false}
learner: {type: gradmap, params: {budget_iterations: 2, validation_interval_iterations: 1, days_per_batch: 2,
                                  epochs: 2}}
target: {max_violation_rate: 0.5}
"""


@pytest.fixture(scope="module")
def registry():
    return load_registry()


def test_branch_layout_is_a_property_of_the_grid(tmp_path, registry):
    _, _, _, world = world_from_text(tmp_path, TINY)
    with torch.no_grad():
        result = world.env.solver.solve()
    assert world.env.grid.branch_slices == result.branch_slices
    sizes = [len(b.terminal_nodes) for b in world.env.grid.branches]
    assert result.branch_currents_a.shape[-1] == sum(sizes)


def test_the_scenario_dtype_reaches_the_solver(tmp_path):
    _, _, _, world = world_from_text(tmp_path, TINY, overrides=["dtype=float32"])
    assert world.env.solver.dtype == torch.float32 == world.env.dtype
    with torch.no_grad():
        assert world.env.solver.solve().vm_pu.dtype == torch.float32


def test_ac3ph_has_no_dtype_of_its_own(tmp_path, registry):
    path = tmp_path / "s.yaml"
    path.write_text(TINY + "solver: {type: ac3ph, params: {dtype: float32}}\n")
    with pytest.raises(UserError, match="top-level `dtype`"):
        load_scenario(path, [], registry[1])


def test_linear3ph_trains_but_the_exact_solver_judges(tmp_path, registry):
    pytest.importorskip("cvxpy")
    pm, reg = registry
    _, _, _, linear = world_from_text(tmp_path, TINY + "solver: {type: linear3ph}\n", name="lin")
    _, _, _, exact = world_from_text(tmp_path, TINY, name="exact")
    assert type(linear.env.solver).name == "linear3ph"
    assert type(linear.eval_env.solver).name == "ac3ph" and linear.eval_env is not linear.env
    assert exact.eval_env is exact.env  # one solver: one environment
    nc = reg.get("learner", "no_control")
    days = held_out_days(exact)
    judged = evaluate(linear, nc(nc.Config(), linear.env), days, 2, regulated=False).metrics
    reference = evaluate(exact, nc(nc.Config(), exact.env), days, 2, regulated=False).metrics
    for key in ("voltage_violation_rate", "cost_per_day", "losses_kwh_per_day", "line_overload_rate"):
        assert judged[key] == pytest.approx(reference[key], rel=1e-9, abs=1e-12), key
    # away from its linearisation point the linear model gives other voltages: the judge really
    # is the exact solver
    half = torch.full((len(linear.env.grid.load_elements),), 0.5, dtype=torch.float64)
    with torch.no_grad():
        v_lin = linear.env.solver.solve(half).vm_pu
        v_ac = linear.eval_env.solver.solve(half).vm_pu
    assert float((v_lin - v_ac).abs().max()) > 1e-6


def test_judging_is_not_counted_as_training_work(tmp_path, registry):
    pm, reg = registry
    _, _, _, world = world_from_text(tmp_path, TINY)
    nc = reg.get("learner", "no_control")
    evaluate(world, nc(nc.Config(), world.env), held_out_days(world), 2, regulated=False)
    assert world.env.counters.as_dict() == {"power_flow_solves": 0, "env_gradient_evaluations": 0,
                                            "policy_updates": 0}
    exo = world.env.exogenous(world.data.split("train").get(np.arange(2)))
    with torch.no_grad():
        world.env.rollout(exo, nc(nc.Config(), world.env).act)
    assert world.env.counters.power_flow_solves == 2 * 24  # a training rollout is counted


def test_a_run_returns_its_history_and_the_world_is_built_once(tmp_path, registry, monkeypatch):
    pm, reg = registry
    path = tmp_path / "tiny.yaml"
    path.write_text(TINY)
    loaded = load_scenario(path, [], reg)
    plan = plan_run(loaded, reg, pm)
    assert bool(plan.base_case.converged.all()) and "base case  converged=True" in plan.describe()

    import gridflex.runs.run as run_module

    def no_second_world(*args, **kwargs):
        raise AssertionError("execute_run built a second world")

    monkeypatch.setattr(run_module, "build_world", no_second_world)
    out = tmp_path / "run"
    result = execute_run(loaded, reg, pm, out, world=plan.world, progress=False)
    rows = list(csv.DictReader((out / "history.csv").open()))
    assert [int(r["iteration"]) for r in rows] == [row["iteration"] for row in result.history] == [0, 1, 2]
    assert float(rows[-1]["val_cost_per_day"]) == pytest.approx(result.history[-1]["val_cost_per_day"], rel=1e-5)
    assert result.metrics["learner"] == "gradmap" and list(result.documents)[1:] == baseline_names(reg)
    assert result.metrics["env_gradient_evaluations"] == 2 == plan.world.env.counters.env_gradient_evaluations
    assert result.metrics["power_flow_solves"] == plan.world.env.counters.power_flow_solves > 0
    assert all(doc["power_flow_solves"] == 0 for name, doc in result.documents.items() if name != "gradmap")
    assert result.metrics["evaluation_solver"] == "ac3ph"
    with pytest.raises(ValueError, match="fresh world"):  # a world's counters belong to one run
        execute_run(loaded, reg, pm, tmp_path / "again", world=plan.world, progress=False)


def test_baselines_are_found_by_role_not_name(registry):
    _, reg = registry
    names = baseline_names(reg)
    assert names[:3] == ["no_control", "rule_based", "droop"]
    assert all(reg.get("learner", n).role == "baseline" for n in names)
    assert reg.get("learner", "reference").role == "planner"
    assert reg.get("learner", "gradmap").role == "learner" and "gradmap" not in names
