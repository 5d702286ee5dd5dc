"""The centralised perfect-foresight reference (``reference``) and ``gridflex targets``."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

pytest.importorskip("cvxpy")

TINY = ["devices[0].count=4", "devices[1].count=4", "devices[2].count=4", "data.n_validation_days=1"]


@pytest.fixture(scope="module")
def world():
    from gridflex.plugins.registry import load_registry
    from gridflex.scenario import default_scenario_path, load_scenario
    from gridflex.runs.world import build_world

    pm, registry = load_registry()
    loaded = load_scenario(default_scenario_path(), TINY, registry)
    return build_world(loaded, registry, pm), registry


@pytest.fixture(scope="module")
def rollouts(world):
    from gridflex.runs.evaluate import held_out_days
    from gridflex.learning.metrics import evaluation_metrics

    w, registry = world
    env = w.env
    exo = env.exogenous(held_out_days(w).get(np.array([0])))
    out = {}
    for name in ("no_control", "reference"):
        cls = registry.get("learner", name)
        learner = cls(cls.Config(), env)
        learner.prepare(exo)
        with torch.no_grad():
            rollout = env.rollout(exo, learner.act)
        out[name] = (learner, rollout, evaluation_metrics(env, rollout, (0.95, 1.05), True))
    return out


def test_reference_beats_no_control_on_ac(rollouts):
    _, _, nc = rollouts["no_control"]
    learner, _, ref = rollouts["reference"]
    assert ref["voltage_violation_rate"] <= nc["voltage_violation_rate"]
    assert ref["cost_per_day"] <= nc["cost_per_day"] + 1e-6
    day = learner.report()["days"][0]
    assert day["iterations"] >= 1 and day["solve_seconds"] > 0
    assert abs(day["ac_cost"] - ref["cost_per_day"]) < 1e-3 * abs(ref["cost_per_day"])  # plan replays exactly


def test_reference_schedule_respects_devices(world, rollouts):
    w, _ = world
    learner, rollout, _ = rollouts["reference"]
    for f, (fleet, traj) in enumerate(zip(w.env.fleets, rollout.fleets)):
        planned = learner._plans[f]
        # the plan lies inside the bounds, so the replay reproduces it (q to the smoothed circle)
        assert (traj.actions - planned).abs().max() < 1e-3, fleet.model.name
        if traj.terminal.numel():  # end-of-day conditions
            assert traj.terminal.max() < 1e-5, fleet.model.name
    battery = w.env.fleets[0].model
    e = rollout.fleets[0].states[..., 0]
    assert (e >= battery.e_min_kwh - 1e-6).all() and (e <= battery.e_max_kwh + 1e-6).all()
    diagnostics = learner.report()["days"][0]["diagnostics"][0]
    assert diagnostics["simultaneous_charge_discharge"] == 0 and diagnostics["max_simultaneous_kw"] < 1e-2


def test_targets_writes_the_sidecar(tmp_path, cli):
    from gridflex.plugins.registry import load_registry
    from gridflex.scenario import default_scenario_path, load_scenario
    from gridflex.learning.targets import read_target, targets_key

    scenario = tmp_path / "ieee13_small.yaml"
    shutil.copy(default_scenario_path(), scenario)
    overrides = [a for o in TINY for a in ("-o", o)]
    code, out, err = cli("targets", str(scenario), *overrides)
    assert code == 0, err
    doc = json.loads((tmp_path / "ieee13_small.targets.json").read_text())
    loaded = load_scenario(scenario, TINY, load_registry()[1])
    assert doc["scenario_sha256"] == targets_key(loaded)
    assert doc["n_validation_days"] == 1 and doc["c_ref"] is not None
    assert doc["c_ref"] <= doc["c_no_control"] + 1e-6
    assert doc["reference_ac_violation_rate"] <= doc["no_control_violation_rate"]
    assert {"computed", "command", "no_control_line_overload_rate", "reference_line_overload_rate"} <= set(doc)
    target = read_target(loaded)
    assert target.c_ref == doc["c_ref"] and target.max_cost_per_day is not None

    # the same command again: an up-to-date sidecar is a result, never overwritten silently
    before = (tmp_path / "ieee13_small.targets.json").read_bytes()
    code, out, err = cli("targets", str(scenario), *overrides)
    assert code == 2 and "--force" in err and "already holds" in err
    assert (tmp_path / "ieee13_small.targets.json").read_bytes() == before
    code, out, err = cli("targets", str(scenario), *overrides, "--no-reference")
    assert code == 2 and (tmp_path / "ieee13_small.targets.json").read_bytes() == before


def test_run_with_the_reference_writes_its_days(tmp_path, cli):
    """`gridflex run` with learner.type=reference: metrics.json as any learner, plus the planner's
    per-day report (iterations, solve seconds, AC metrics) and one progress line per day."""
    from gridflex.scenario import default_scenario_path

    overrides = TINY + ["data.n_test_days=2", "learner.type=reference", "learner.params={}"]
    code, out, err = cli("run", str(default_scenario_path()), "--no-references", "--out", str(tmp_path),
                         *[a for o in overrides for a in ("-o", o)])
    assert code == 0, err
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    extras = json.loads((tmp_path / "learner_extras.json").read_text())
    assert metrics["learner"] == "reference" and len(extras["days"]) == 2
    assert all(day["iterations"] >= 1 and day["solve_seconds"] > 0 for day in extras["days"])
    assert err.count("reference day ") == 2
