"""Tap treatments (``feeder.tap_treatment``): one treatment from calibration to test.

For each of ``frozen``, ``settled`` and ``regulated`` on a tiny IEEE 13 world, the no-control
validation rate that calibration judges, the rate the target sidecar records, the taps the
training rollouts use and the test metrics of ``gridflex run`` are each checked against an
independent computation on a *frozen* world (explicit taps or an explicit tap controller).
"""

from __future__ import annotations

import importlib.util
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from gridflex.learning.metrics import evaluation_metrics
from gridflex.scenario import load_scenario
from gridflex.learning.training import Trainer, validation_days_exogenous
from gridflex.runs.world import build_world

TINY = """
name: taps13
feeder: {file: ieee13, taps: file, tap_treatment: frozen}
solver: {type: ac3ph}
population: {households_per_kw: 0.05, pv_share: 0.4}
devices:
  - {type: battery, count: 8, params: {reactive_power: true}}
  - {type: heat_pump, count: 4}
  - {type: generator, count: 4}
learner: {type: gradmap, params: {days_per_batch: 2, hidden_sizes: [8], warm_start_epochs: 1,
          budget_iterations: 1, validation_interval_iterations: 1, budget_seconds: null}}
data: {n_validation_days: 2, n_test_days: 2}
target: {max_violation_rate: 0.5}
"""
TREATMENTS = ("frozen", "settled", "regulated")
LIMITS = (0.95, 1.05)
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from conftest import world_from_text

    return world_from_text(tmp_path_factory.mktemp("taps"), TINY, "taps13")


def no_control(env):
    return lambda f, t, o, s, i: env.fleets[f].model.baseline_u("no_control", s, i)


def independent_rate(frozen_world, exo, treatment: str, settled_taps: dict | None) -> dict:
    """No-control metrics of ``exo`` on the frozen world, with the treatment applied by hand."""
    env = frozen_world.env
    with torch.no_grad():
        if treatment == "regulated":
            rollout = env.rollout(exo, no_control(env), regulate=True)
        else:
            rollout = env.rollout(exo, no_control(env))
            if treatment == "settled":
                names = list(env.base_taps)
                taps = np.broadcast_to(np.array([settled_taps[n] for n in names]),
                                       (exo.batch, exo.steps, len(names)))
                flow = env.solve_at_taps(exo.load_scale, rollout.p_injection_kw, rollout.q_injection_kvar, taps)
                rollout = replace(rollout, flow=flow)
        return evaluation_metrics(env, rollout, LIMITS, True)


def load_calibrate():
    spec = importlib.util.spec_from_file_location("calibrate", REPO / "tuning" / "calibrate.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("treatment", TREATMENTS)
def test_one_treatment_from_calibration_to_test(setup, treatment, tmp_path, monkeypatch):
    from gridflex.runs.evaluate import held_out_days
    from gridflex.runs.run import execute_run
    from gridflex.runs.target_costs import compute_targets

    path, pm, registry, frozen = setup
    override = [f"feeder.tap_treatment={treatment}"]
    loaded = load_scenario(path, override, registry)
    world = build_world(loaded, registry, pm)
    env = world.env
    assert env.tap_treatment == treatment
    settled = world.settled["taps"] if treatment == "settled" else None
    if treatment == "settled":
        assert env.base_taps == settled and world.settled["n_training_days"] == len(world.data.split("train"))
        assert env.grid.meta["taps"] == settled
        assert settled != frozen.env.base_taps  # the file's neutral taps are not where the controller sits

    # calibration judges no_control under the treatment
    exo_val = validation_days_exogenous(world)
    expected_val = independent_rate(frozen, exo_val, treatment, settled)
    row = load_calibrate().evaluate_candidate(str(path), override, registry, pm, points=3)
    assert row["treatment"] == treatment
    assert row["judged"]["voltage_violation_rate"] == pytest.approx(expected_val["voltage_violation_rate"], abs=1e-12)
    assert row["judged"]["cost_per_day"] == pytest.approx(expected_val["cost_per_day"], rel=1e-7)  # solver tolerance 1e-8 pu

    # training rollouts carry regulator taps exactly when the treatment regulates
    seen = []
    original = env.rollout

    def spy(*args, **kwargs):
        rollout = original(*args, **kwargs)
        seen.append(rollout.taps is not None)
        return rollout

    monkeypatch.setattr(env, "rollout", spy)
    cls = registry.get("learner", "gradmap")
    learner = cls(loaded.component_config("learner"), env, seed=0)
    trainer = Trainer(world, progress=False)
    learner.train_iteration(trainer)
    assert seen and all(s == (treatment == "regulated") for s in seen)
    validation = trainer.validate(learner)
    assert seen[-1] == (treatment == "regulated")
    assert 0.0 <= validation["voltage_violation_rate"] <= 1.0
    monkeypatch.undo()

    # the target sidecar records the treatment and no_control's rate under it
    doc = compute_targets(loaded, registry, pm, reference=False, progress=lambda line: None)
    assert doc["tap_treatment"] == treatment and doc["taps"] == env.base_taps
    assert doc["no_control_violation_rate"] == pytest.approx(expected_val["voltage_violation_rate"], abs=1e-12)
    assert doc["c_no_control"] == pytest.approx(expected_val["cost_per_day"], rel=1e-7)  # solver tolerance 1e-8 pu

    # test metrics of a run: the treatment, plus the tap controller as the second evaluation
    run_loaded = load_scenario(path, override + ["learner.type=no_control", "learner.params={}"], registry)
    docs = execute_run(run_loaded, registry, pm, tmp_path / "run", references=False, progress=False).documents
    metrics = docs["no_control"]
    days = held_out_days(world)
    positions = np.unique(np.linspace(0, len(days) - 1, num=2).round().astype(int))
    exo_test = world.env.exogenous(days.get(positions))
    expected_test = independent_rate(frozen, exo_test, treatment, settled)
    assert metrics["tap_treatment"] == treatment
    assert metrics["test"]["voltage_violation_rate"] == pytest.approx(expected_test["voltage_violation_rate"], abs=1e-12)
    regulated = independent_rate(frozen, exo_test, "regulated", None)
    assert metrics["test_regulated"]["voltage_violation_rate"] == pytest.approx(
        regulated["voltage_violation_rate"], abs=1e-12)
    schedules = np.load(tmp_path / "run" / "schedules.npz")
    assert str(schedules["tap_treatment"]) == treatment
    assert ("taps_per_step" in schedules.files) == (treatment == "regulated")
    written = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert written["base_taps"] == env.base_taps


def test_settled_taps_are_cached_with_provenance(setup, tmp_path, monkeypatch):
    import gridflex.runs.world

    monkeypatch.setattr(gridflex.runs.world, "SETTLED_CACHE_DIR", tmp_path / "cache")
    path, pm, registry, _ = setup
    loaded = load_scenario(path, ["feeder.tap_treatment=settled"], registry)
    record_path = path.parent / "taps13.taps.json"
    first = build_world(loaded, registry, pm).settled
    assert record_path.is_file()
    record = json.loads(record_path.read_text())
    assert record["taps"] == first["taps"] and record["key"] == first["key"]
    assert {"rule", "n_training_days", "tap_range", "base_taps", "created", "gridflex_version"} <= set(record)
    lines = []
    again = build_world(loaded, registry, pm, progress=lines.append).settled
    assert again == record and not lines  # read from the record, not recomputed
    other = load_scenario(path, ["feeder.tap_treatment=settled", "population.pv_share=0.6"], registry)
    build_world(other, registry, pm, progress=lines.append)
    assert lines and "settling" in lines[0]  # another population: another key, recomputed


def test_regulated_gradient_matches_finite_differences(setup):
    """Taps are piecewise constant: with them unchanged, the regulated rollout's gradient with
    respect to the policy outputs is the derivative of the solution at those taps."""
    path, pm, registry, _ = setup
    tight = ["solver.params={tol_pu: 1.0e-12, adjoint_tol: 1.0e-13}"]
    loaded = load_scenario(path, ["feeder.tap_treatment=regulated", *tight], registry)
    world = build_world(loaded, registry, pm)
    env = world.env
    exo = env.exogenous(world.data.split("train").get(np.array([5])))
    with torch.no_grad():
        base = env.rollout(exo, no_control(env))
    u0 = [traj.u.clone().clamp(0.2, 0.8) for traj in base.fleets]

    def loss(u):
        rollout = env.rollout(exo, u_fixed=u)
        value = rollout.flow.source_power_kw.sum() + 100.0 * rollout.flow.vm_pu.square().sum()
        return value, rollout.taps

    u = [x.clone().requires_grad_(True) for x in u0]
    value, taps = loss(u)
    grads = torch.autograd.grad(value, u)
    eps = 1e-4  # central differences; 1e-6 loses digits to cancellation in the summed loss
    # battery reactive power, heat pump, generator: away from the battery's |p| kink at idle
    for f, t, i, d in ((0, 12, 1, 1), (1, 7, 2, 0), (2, 18, 0, 0)):
        plus = [x.clone() for x in u0]
        minus = [x.clone() for x in u0]
        plus[f][0, t, i, d] += eps
        minus[f][0, t, i, d] -= eps
        with torch.no_grad():
            (vp, taps_p), (vm, taps_m) = loss(plus), loss(minus)
        assert np.array_equal(taps_p, taps) and np.array_equal(taps_m, taps)
        fd = float(vp - vm) / (2 * eps)
        assert fd == pytest.approx(float(grads[f][0, t, i, d]), rel=5e-5, abs=1e-7)
