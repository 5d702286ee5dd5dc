"""The fleet-authority bound (gridflex.learning.authority) on the small shipped scenario, 2 validation days."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from gridflex.learning.authority import authority_bound, extreme_injections, no_control_rollout
from gridflex.learning.metrics import evaluation_metrics


@pytest.fixture(scope="module")
def small():
    from gridflex.plugins.registry import load_registry
    from gridflex.scenario import load_scenario, shipped_scenarios_dir
    from gridflex.runs.world import build_world

    pm, registry = load_registry()
    loaded = load_scenario(str(shipped_scenarios_dir() / "ieee13_small.yaml"), [], registry)
    world = build_world(loaded, registry, pm)
    days = world.data.split("validation")
    exo = world.env.exogenous(days.get(np.array([0, len(days) - 1])))
    rollout = no_control_rollout(world.env, exo)
    limits = tuple(loaded.config.limits.v_limits_pu)
    bound = authority_bound(world.env, exo, limits, loaded.config.limits.line_limits, rollout=rollout)
    return world, exo, rollout, limits, bound


def test_unfixable_shares_are_shares_below_the_no_control_rates(small):
    world, exo, rollout, limits, bound = small
    assert bound["n_days"] == 2 and bound["points"] == [-1.0, -0.5, 0.0, 0.5, 1.0]
    for key in ("voltage_violation_rate", "unfixable_node_hours", "line_overload_rate",
                "unfixable_conductor_hours", "unfixable_undervoltage", "unfixable_overvoltage"):
        assert 0.0 <= bound[key] <= 1.0, key
    assert bound["unfixable_node_hours"] <= bound["voltage_violation_rate"]
    assert bound["unfixable_conductor_hours"] <= bound["line_overload_rate"]
    assert bound["unfixable_node_hours"] <= min(bound["violation_rate_per_point"])
    assert bound["unfixable_conductor_hours"] <= min(bound["line_overload_rate_per_point"])
    assert bound["unfixable_undervoltage"] + bound["unfixable_overvoltage"] <= bound["unfixable_node_hours"] + 1e-12
    # the no-control point is the rollout itself: same rates as the evaluation metrics
    metrics = evaluation_metrics(world.env, rollout, limits, world.loaded.config.limits.line_limits)
    assert bound["voltage_violation_rate"] == pytest.approx(metrics["voltage_violation_rate"])
    assert bound["line_overload_rate"] == pytest.approx(metrics["line_overload_rate"])
    assert bound["max_line_loading"] == pytest.approx(metrics["max_line_loading"])
    assert bound["max_loading_conductor"] in world.env.current_monitor.names


def test_down_extreme_lowers_and_up_extreme_raises_the_mean_voltage(small):
    *_, bound = small
    vm = bound["mean_vm_pu"]
    assert vm[0] < vm[1] < vm[2] < vm[3] < vm[4]
    assert sum(bound["nonconverged_per_point"]) == 0


def test_extreme_injections_add_every_device_at_its_rated_extreme(small):
    world, exo, rollout, *_ = small
    env = world.env
    p_down, q_down = extreme_injections(env, rollout, +1)
    p_up, q_up = extreme_injections(env, rollout, -1)
    assert p_down.shape == p_up.shape == rollout.p_injection_kw.shape
    # each agent's demand is spread over its nodes (rows of the fleet maps sum to 1)
    rated = {"battery": 0.0, "heat_pump": 0.0, "generator": 0.0}
    for fleet in env.fleets:
        rated[fleet.model.name] += float(fleet.model.p_max_kw.sum())
    pv = exo.pv_injection_kw.sum(-1)
    torch.testing.assert_close(p_down.sum(-1), pv + rated["battery"] + rated["heat_pump"])
    torch.testing.assert_close(p_up.sum(-1), pv - rated["battery"] - rated["generator"])
    assert torch.all(q_down.sum(-1) > 0) and torch.all(q_up.sum(-1) < 0)
    assert torch.all(p_down >= rollout.p_injection_kw - 1e-9) and torch.all(p_up <= rollout.p_injection_kw + 1e-9)


def test_bound_argument_checks_and_the_tap_path(small):
    world, exo, rollout, limits, bound = small
    env = world.env
    with pytest.raises(ValueError, match="odd"):
        authority_bound(env, exo, limits, points=4, rollout=rollout)
    names = [rc.transformer for rc in world.feeder.regcontrols]
    base = world.feeder.regulator_taps()
    taps = np.tile(np.array([base[n] for n in names], dtype=np.int64), (exo.batch, exo.steps, 1))
    at_fixed = authority_bound(env, exo, limits, taps=taps, rollout=rollout)
    assert at_fixed["taps"] == "given"
    for key in ("voltage_violation_rate", "unfixable_node_hours", "unfixable_conductor_hours"):
        assert at_fixed[key] == pytest.approx(bound[key])
    # at the taps a regulated no_control rollout ran at, the no-control point is that rollout
    line_limits = world.loaded.config.limits.line_limits
    with torch.no_grad():
        regulated = env.rollout(exo, lambda f, t, obs, state, inputs: env.fleets[f].model.baseline_u(
            "no_control", state, inputs), regulate=True)
    assert regulated.taps.shape[:2] == (exo.batch, exo.steps)
    at_regulated = authority_bound(env, exo, limits, line_limits, taps=regulated.taps, rollout=regulated)
    metrics = evaluation_metrics(env, regulated, limits, line_limits)
    assert at_regulated["voltage_violation_rate"] == pytest.approx(metrics["voltage_violation_rate"])
    assert at_regulated["line_overload_rate"] == pytest.approx(metrics["line_overload_rate"])
    assert at_regulated["unfixable_node_hours"] <= at_regulated["voltage_violation_rate"]
