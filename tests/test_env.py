"""The multi-agent environment: population, decentralisation, gradients, metrics, regulators."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from gridflex.errors import UserError
from gridflex.runs.evaluate import evaluate, validation_days
from gridflex.learning.metrics import day_costs, evaluation_metrics, network_terms
from gridflex.plugins.registry import load_registry
from gridflex.scenario import load_scenario
from gridflex.runs.world import build_world

SMALL = """
name: tiny
feeder: {file: ieee13, taps: file}
population: {households_per_kw: 0.05, peak_scale: 1.7, pv_share: 0.7}
devices:
  - {type: battery, count: 6, params: {reactive_power: true}}
  - {type: heat_pump, count: 6}
  - {type: generator, count: 4}
learner: {type: no_control}
data: {n_test_days: 2, n_validation_days: 2}
"""


@pytest.fixture(scope="module")
def registry():
    return load_registry()


@pytest.fixture(scope="module")
def world(registry, tmp_path_factory):
    path = tmp_path_factory.mktemp("env") / "tiny.yaml"
    path.write_text(SMALL)
    pm, reg = registry
    return build_world(load_scenario(path, [], reg), reg, pm)


@pytest.fixture(scope="module")
def day(world):
    return world.env.exogenous(world.data.split("train").get(np.array([10, 200])))


def no_control(world, registry):
    cls = registry[1].get("learner", "no_control")
    return cls(cls.Config(), world.env)


def test_households_replace_spot_loads(world):
    env = world.env
    hh = env.households
    assert len(hh) == sum(max(1, round(0.05 * p)) for p in hh.spot_p_kw)
    # each spot load's aggregate training-day peak equals peak_scale x its kW
    train = world.data.split("train")
    kw = np.concatenate([b.household_kw for b in train.batches(64)]) * hh.kw_scale[None, :, None]
    for l, p_kw in enumerate(hh.spot_p_kw):
        peak = kw[:, hh.load == l].sum(1).max()
        assert peak == pytest.approx(1.7 * p_kw, rel=1e-5)


def test_devices_on_distinct_households_per_type(world):
    for fleet in world.env.fleets:
        assert len(set(fleet.placement.household.tolist())) == fleet.n_agents


def test_sign_convention_and_power_balance(world, registry, day):
    with torch.no_grad():
        rollout = world.env.rollout(day, no_control(world, registry).act)
    flow = rollout.flow
    assert bool(flow.converged.all())
    drawn = flow.load_power_kw + flow.device_power_kw
    assert torch.allclose(flow.source_power_kw, drawn + flow.losses_kw)
    assert bool((flow.losses_kw > 0).all())
    # device + PV injections at the nodes equal the per-agent demands plus (negative) PV
    total_agents = sum(t.p_kw.sum(-1) for t in rollout.fleets)
    assert torch.allclose(rollout.p_injection_kw.sum(-1), total_agents - day.pv_kw.sum(1))


def test_agent_action_ignores_other_agents_observations(world, day):
    """Perturb every household but agent 0's: agent 0's observations and outputs are unchanged."""
    env = world.env
    fleet = env.fleets[0]
    own = int(fleet.placement.household[0])
    weights = torch.randn(env.obs_dim(0), dtype=torch.float64)

    def act(f, t, obs, state, inputs):  # a per-agent controller: u_i = sigmoid(w . o_i)
        return torch.sigmoid(obs @ weights)[..., None].expand(*obs.shape[:2], fleet.model.action_dim) if f == 0 \
            else torch.full((*obs.shape[:2], env.fleets[f].model.action_dim), 0.5, dtype=obs.dtype)

    with torch.no_grad():
        base = env.rollout(day, act)
        other = type(day)(**{**vars(day)})
        noise = torch.rand_like(day.household_kw)
        noise[:, own] = 1.0
        other.household_kw = day.household_kw * noise
        other.pv_kw = day.pv_kw * torch.where(torch.arange(day.pv_kw.shape[1])[None, :, None] == own, 1.0, 0.3)
        changed = env.rollout(other, act)
    # agent 0's observation at step 0 (no network feedback) and its output are identical
    assert torch.equal(base.fleets[0].observations[:, 0, 0], changed.fleets[0].observations[:, 0, 0])
    assert torch.equal(base.fleets[0].u[:, 0, 0], changed.fleets[0].u[:, 0, 0])
    # while other agents' observations did change
    assert not torch.equal(base.fleets[0].observations[:, 0, 1:], changed.fleets[0].observations[:, 0, 1:])


def test_closed_loop_gradient_matches_finite_differences(world, day):
    """d(cost + voltage penalty)/d(theta) through policy -> state -> next observation and the
    implicit power flow, against central differences (float64)."""
    env = world.env
    one_day = type(day)(**{k: (v[:1] if isinstance(v, torch.Tensor) else v) for k, v in vars(day).items()})
    one_day.day_of_year = day.day_of_year[:1]
    theta = [torch.zeros(env.obs_dim(f), dtype=torch.float64) + 0.05 for f in range(len(env.fleets))]

    def objective(params):
        def act(f, t, obs, state, inputs):
            u = torch.sigmoid(obs @ params[f] - 0.5)
            return u[..., None].expand(*u.shape, env.fleets[f].model.action_dim)

        rollout = env.rollout(one_day, act)
        terms = network_terms(env, rollout, (0.955, 1.045))
        cost = sum(day_costs(env, rollout).values()).sum()
        return cost + 1e4 * terms.v_residual_pu.sum()

    params = [t.clone().requires_grad_(True) for t in theta]
    objective(params).backward()
    f, k = 0, 3  # battery fleet, the price feature
    h = 1e-5
    with torch.no_grad():
        plus = [t.clone() for t in theta]
        minus = [t.clone() for t in theta]
        plus[f][k] += h
        minus[f][k] -= h
        fd = (objective(plus) - objective(minus)) / (2 * h)
    assert float(params[f].grad[k]) == pytest.approx(float(fd), rel=1e-4, abs=1e-6)


def test_metrics_definitions(world, registry, day):
    env = world.env
    with torch.no_grad():
        rollout = env.rollout(day, no_control(world, registry).act)
    m = evaluation_metrics(env, rollout, (0.95, 1.05))
    flow = rollout.flow
    vm = env.voltage_monitor.magnitudes_pu(flow.v_pu)
    outside = (vm < 0.95) | (vm > 1.05)
    assert m["voltage_violation_rate"] == pytest.approx(float(outside.double().mean()))
    energy = (day.price_per_kwh * flow.source_power_kw).sum() * day.dt_h / day.batch
    assert m["cost_breakdown"]["energy"] == pytest.approx(float(energy))
    assert m["cost_per_day"] == pytest.approx(sum(m["cost_breakdown"].values()))
    assert m["losses_kwh_per_day"] == pytest.approx(float(flow.losses_kw.sum() * day.dt_h / day.batch))
    assert m["peak_import_kw"] == pytest.approx(float(flow.source_power_kw.max()))
    residual = torch.relu(vm - 1.05) + torch.relu(0.95 - vm)
    assert m["voltage_violation_pu_h"] == pytest.approx(float(residual.sum() * day.dt_h / day.batch))
    assert 0 <= m["max_vuf_pct"] < 10


def test_nonconverged_samples_count_as_violated(world, registry, day):
    env = world.env
    with torch.no_grad():
        rollout = env.rollout(day, no_control(world, registry).act)
    rollout.flow.converged[0, 5] = False
    m = evaluation_metrics(env, rollout, (0.0, 10.0))  # nothing violates these limits
    assert m["pf_nonconverged"] == 1
    assert m["voltage_violation_rate"] == pytest.approx(1 / (day.batch * day.steps))


def test_regulated_taps_move_and_stay_in_range(world, registry):
    days = validation_days(world)
    result = evaluate(world, no_control(world, registry), days, 2, regulated=True)
    taps = result.rollout_regulated.taps
    assert taps.shape[:2] == (2, 24)
    assert np.abs(taps).max() <= 16
    assert (np.diff(taps, axis=1) != 0).any(), "the tap controller never moved"
    assert result.metrics_regulated["voltage_violation_rate"] <= result.metrics["voltage_violation_rate"]


def test_three_phase_device_on_single_phase_bus_is_an_error(registry, tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text(SMALL.replace("{type: generator, count: 4}",
                                  "{type: generator, count: 1, nodes: ['611'], params: {three_phase: true}}"))
    pm, reg = registry
    with pytest.raises(UserError, match=r"devices\[2\]\.nodes\[0\].*three-phase"):
        build_world(load_scenario(path, [], reg), reg, pm)


def test_too_many_devices_is_a_clear_error(registry, tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text(SMALL.replace("{type: battery, count: 6, params: {reactive_power: true}}",
                                  "{type: battery, count: 5000}"))
    pm, reg = registry
    with pytest.raises(UserError, match=r"devices\[0\]\.count: 5000"):
        build_world(load_scenario(path, [], reg), reg, pm)


def test_run_writes_metrics_and_verify_agrees_with_opendss(tmp_path, cli):
    pytest.importorskip("dss")
    scenario = tmp_path / "tiny.yaml"
    scenario.write_text(SMALL.replace("learner: {type: no_control}", "learner: {type: rule_based}"))
    out = tmp_path / "run"
    code, stdout, err = cli("run", str(scenario), "--out", str(out))
    assert code == 0, err
    doc = json.loads((out / "metrics.json").read_text())
    for key in ("scenario", "scenario_sha256", "learner", "seeds", "device", "dtype", "gridflex_version",
                "n_test_days", "train_seconds", "power_flow_solves", "env_gradient_evaluations",
                "policy_updates", "test", "test_regulated"):
        assert key in doc
    assert doc["learner"] == "rule_based" and doc["n_test_days"] == 2
    assert doc["test"]["voltage_violation_rate"] >= 0 and doc["test_regulated"]
    for name in ("no_control", "droop"):
        assert (out / "baselines" / name / "metrics.json").is_file()
    assert "rule_based" in stdout and "no_control" in stdout
    assert (out / "plots" / "voltage_envelope.png").stat().st_size > 10_000
    code, stdout, err = cli("verify", str(out), "--json", str(tmp_path / "verify.json"))
    assert code == 0, err
    report = json.loads((tmp_path / "verify.json").read_text())
    assert report["max_abs_vm_difference_pu"] < 1e-6
    assert report["gridflex"]["voltage_violation_rate"] == pytest.approx(report["opendss"]["voltage_violation_rate"])
