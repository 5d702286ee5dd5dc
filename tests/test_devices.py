"""Device fleets ``battery``, ``heat_pump``, ``generator``: dynamics, limits, signs, gradients,
reference controllers and config validation (docs/design.md §1, docs/devices.md)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError
from scipy.integrate import solve_ivp

from gridflex.plugins.contracts import DeviceModel, StepInputs
from gridflex.fleet.profiles import DATA_FILE, data_dir, resample_mean
from gridflex_plugins.devices import Battery, Generator, HeatPump
from gridflex_plugins.devices._inverter import (reactive_limit_kvar, volt_var_injection_frac,
                                                volt_watt_limit_frac)
from gridflex_plugins.devices.heat_pump import cop_air_source

F64 = torch.float64


def make_fleet(cls, n=8, seed=0, dt_h=1.0, dtype=F64, **params):
    return cls(params, n, torch.Generator().manual_seed(seed), dt_h=dt_h, dtype=dtype)


def make_inputs(batch, n, *, t=0, dt_h=1.0, temp_out_c=5.0, price=0.3, v_pu=1.0, dtype=F64):
    """StepInputs with scalars or ``[B]`` / ``[B, N]`` tensors broadcast to their shapes."""
    def per_day(x):
        return torch.as_tensor(x, dtype=dtype).expand(batch).clone()

    return StepInputs(
        t=t, dt_h=dt_h, hour_of_day=t * dt_h,
        temp_out_c=per_day(temp_out_c), price_per_kwh=per_day(price),
        household_kw=torch.ones(batch, n, dtype=dtype), pv_kw=torch.zeros(batch, n, dtype=dtype),
        v_prev_pu=torch.as_tensor(v_pu, dtype=dtype).expand(batch, n).clone(),
    )


def rollout(fleet, u_fn, inputs_fn, steps, batch):
    """States ``[T+1, B, N, S]`` and actions ``[T, B, N, d]`` of a closed loop."""
    state = fleet.initial_state(batch, inputs_fn(0).temp_out_c)
    states, actions = [state], []
    for t in range(steps):
        inputs = inputs_fn(t)
        action = fleet.action(u_fn(t, state, inputs), state, inputs)
        state = fleet.step(state, action, inputs)
        states.append(state)
        actions.append(action)
    return torch.stack(states), torch.stack(actions)


def coldest_day_temp_c(dt_h: float) -> np.ndarray:
    """Outdoor temperature of the data's coldest day (2016-01-04, min -13.3 degC), per step."""
    with np.load(data_dir() / DATA_FILE) as npz:
        temp = npz["temp_out_c"].astype(np.float64)
    day = int(temp.min(axis=1).argmin())
    return resample_mean(temp[day], int(round(24 / dt_h)))


# ============================================================================ registry and config
def test_plugin_registers_the_three_fleets():
    from gridflex.plugins.registry import load_registry

    registry = load_registry()[1]
    assert {"battery", "heat_pump", "generator"} <= set(registry.names("device"))
    assert registry.get("device", "battery") is Battery


@pytest.mark.parametrize("cls", [Battery, HeatPump, Generator])
def test_every_config_field_has_a_description_and_defaults_validate(cls):
    for name, field in cls.Config.model_fields.items():
        assert field.description, f"{cls.name}.{name} has no description"
    cls.Config()


@pytest.mark.parametrize("cls, params, field", [
    (Battery, {"capacity_kwh": (10.0, 5.0)}, "capacity_kwh"),
    (Battery, {"capacity_kwh": (-1.0, 5.0)}, "capacity_kwh"),
    (Battery, {"eta_charge": (0.9, 1.2)}, "eta_charge"),
    (Battery, {"soc_min": (0.5, 0.6)}, "soc_min"),
    (Battery, {"rule_charge_below_eur_per_kwh": 0.4}, "rule_charge_below_eur_per_kwh"),
    (Battery, {"p_maxkw": (1.0, 2.0)}, "p_maxkw"),
    (HeatPump, {"theta_min_c": (22.0, 24.0), "theta_max_c": (23.0, 25.0)}, "theta_min_c"),
    (HeatPump, {"c_kwh_per_c": (0.0, 5.0)}, "c_kwh_per_c"),
    (HeatPump, {"thermostat_deadband_c": 3.0}, "thermostat_deadband_c"),
    (Generator, {"eta_el": (0.3, 1.5)}, "eta_el"),
    (Generator, {"p_max_kw": (5.0, 2.0)}, "p_max_kw"),
    (Generator, {"fuel_price_eur_per_kwh": (float("nan"), 0.1)}, "fuel_price_eur_per_kwh"),
])
def test_config_rejects_bad_values_naming_the_field(cls, params, field):
    with pytest.raises(ValidationError) as err:
        cls.Config(**params)
    assert field in str(err.value)


@pytest.mark.parametrize("cls", [Battery, HeatPump, Generator])
def test_parameters_differ_per_agent_and_are_reproducible(cls):
    a, b, c = make_fleet(cls, n=50, seed=3), make_fleet(cls, n=50, seed=3), make_fleet(cls, n=50, seed=4)
    assert torch.equal(a.p_max_kw, b.p_max_kw)
    assert not torch.equal(a.p_max_kw, c.p_max_kw)
    assert a.p_max_kw.unique().numel() == 50


def test_sampled_values_lie_in_their_ranges_and_a_point_range_is_a_constant():
    fleet = make_fleet(Battery, n=200, capacity_kwh=(5.0, 13.5), p_max_kw=(4.0, 4.0))
    assert fleet.capacity_kwh.min() >= 5.0 and fleet.capacity_kwh.max() <= 13.5
    assert torch.all(fleet.p_max_kw == 4.0)
    assert fleet.capacity_kwh.dtype == F64
    assert make_fleet(Battery, dtype=torch.float32).capacity_kwh.dtype == torch.float32


# ============================================================================ battery
def test_battery_energy_step_matches_hand_computation():
    fleet = make_fleet(Battery, n=2, eta_charge=(0.95, 0.95), eta_discharge=(0.9, 0.9),
                       capacity_kwh=(10.0, 10.0), soc_init=(0.5, 0.5), p_max_kw=(5.0, 5.0),
                       degradation_eur_per_kwh=(0.03, 0.03), dt_h=0.5)
    state = fleet.initial_state(1, torch.zeros(1))
    action = torch.tensor([[[2.0], [-1.8]]], dtype=F64)
    nxt = fleet.step(state, action, make_inputs(1, 2, dt_h=0.5))
    torch.testing.assert_close(nxt[0, :, 0], torch.tensor([5.0 + 0.95 * 2.0 * 0.5, 5.0 - 1.8 / 0.9 * 0.5], dtype=F64))
    torch.testing.assert_close(nxt[..., 1], state[..., 1])  # start energy carried
    cost = fleet.cost(state, action, make_inputs(1, 2, dt_h=0.5))
    torch.testing.assert_close(cost, torch.tensor([[0.03 * 2.0 * 0.5, 0.03 * 1.8 * 0.5]], dtype=F64))


def test_battery_round_trip_loses_exactly_the_efficiency_losses():
    fleet = make_fleet(Battery, n=4)
    state = fleet.initial_state(1, torch.zeros(1))
    inputs = make_inputs(1, 4)
    charge = torch.full((1, 4, 1), 1.0, dtype=F64)
    charged = fleet.step(state, charge, inputs)
    stored = charged[..., 0] - state[..., 0]
    discharge_kw = stored * fleet.eta_discharge  # empties exactly what was stored, over 1 h
    back = fleet.step(charged, -discharge_kw.unsqueeze(-1), inputs)
    torch.testing.assert_close(back[..., 0], state[..., 0])
    torch.testing.assert_close(discharge_kw, fleet.eta_charge * fleet.eta_discharge * charge[..., 0])


def test_battery_demand_sign_charging_is_positive():
    fleet = make_fleet(Battery, n=3, reactive_power=True)
    state = fleet.initial_state(2, torch.zeros(2))
    inputs = make_inputs(2, 3)
    p_kw, q_kvar = fleet.demand(fleet.action(torch.full((2, 3, 2), 1.0, dtype=F64), state, inputs), state)
    assert torch.all(p_kw > 0) and torch.all(q_kvar > 0)  # charging, absorbing
    p_kw, q_kvar = fleet.demand(fleet.action(torch.zeros(2, 3, 2, dtype=F64), state, inputs), state)
    assert torch.all(p_kw < 0) and torch.all(q_kvar < 0)  # discharging, injecting


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), dt_h=st.sampled_from([0.5, 1.0]), reactive=st.booleans())
def test_battery_random_rollouts_stay_feasible(seed, dt_h, reactive):
    fleet = make_fleet(Battery, n=16, seed=seed, dt_h=dt_h, reactive_power=reactive)
    g = torch.Generator().manual_seed(seed)
    d = fleet.action_dim
    # u biased to the corners, where the limits bind
    def u_fn(t, state, inputs):
        return torch.rand(3, 16, d, generator=g, dtype=F64).pow(3).where(
            torch.rand(3, 16, d, generator=g) < 0.5, 1 - torch.rand(3, 16, d, generator=g, dtype=F64).pow(3))
    steps = int(24 / dt_h)
    states, actions = rollout(fleet, u_fn, lambda t: make_inputs(3, 16, t=t, dt_h=dt_h), steps, 3)
    e = states[..., 0]
    tol = 1e-9
    assert torch.all(e >= fleet.e_min_kwh - tol) and torch.all(e <= fleet.e_max_kwh + tol)
    assert torch.all(actions[..., 0].abs() <= fleet.p_max_kw + tol)
    if reactive:
        s2 = actions[..., 0] ** 2 + actions[..., 1] ** 2
        assert torch.all(s2 <= fleet.s_max_kva**2 * (1 + 1e-12))
    assert torch.isfinite(states).all() and torch.isfinite(actions).all()


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), dt_h=st.sampled_from([0.5, 1.0]),
       temp_out_c=st.floats(-20.0, 38.0))
def test_heat_pump_random_rollouts_stay_between_free_floating_and_full_power(seed, dt_h, temp_out_c):
    fleet = make_fleet(HeatPump, n=16, seed=seed, dt_h=dt_h)
    g = torch.Generator().manual_seed(seed)
    inputs = make_inputs(3, 16, dt_h=dt_h, temp_out_c=temp_out_c)
    state = fleet.initial_state(3, inputs.temp_out_c)
    for _ in range(int(24 / dt_h)):
        action = fleet.action(torch.rand(3, 16, 1, generator=g, dtype=F64), state, inputs)
        nxt = fleet.step(state, action, inputs)
        off = fleet.step(state, torch.zeros_like(action), inputs)[..., 0]
        full = fleet.step(state, fleet.p_max_kw.expand(3, 16).unsqueeze(-1), inputs)[..., 0]
        assert torch.all((action[..., 0] >= 0) & (action[..., 0] <= fleet.p_max_kw))
        assert torch.all(nxt[..., 0] >= off - 1e-9) and torch.all(nxt[..., 0] <= full + 1e-9)
        assert torch.all(fleet.residuals(state, action, nxt, inputs) >= 0)
        state = nxt
    assert torch.isfinite(state).all()


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), reactive=st.booleans())
def test_generator_random_actions_respect_rating_and_circle(seed, reactive):
    fleet = make_fleet(Generator, n=16, seed=seed, reactive_power=reactive)
    u = torch.rand(4, 16, fleet.action_dim, generator=torch.Generator().manual_seed(seed), dtype=F64)
    state = fleet.initial_state(4, torch.zeros(4))
    action = fleet.action(u, state, make_inputs(4, 16))
    p_out = action[..., 0]
    assert torch.all((p_out >= 0) & (p_out <= fleet.p_max_kw))
    if reactive:
        assert torch.all(p_out**2 + action[..., 1] ** 2 <= fleet.s_max_kva**2 * (1 + 1e-12))
    assert torch.all(fleet.cost(state, action, make_inputs(4, 16)) >= 0)
    assert torch.all(fleet.demand(action, state)[0] <= 0)


def test_battery_power_limits_formula_and_edges():
    fleet = make_fleet(Battery, n=3, capacity_kwh=(10.0, 10.0), soc_min=(0.1, 0.1), p_max_kw=(5.0, 5.0),
                       eta_charge=(0.95, 0.95), eta_discharge=(0.95, 0.95))
    e = torch.tensor([[1.0, 9.8, 5.0]], dtype=F64)
    state = torch.stack([e, e], -1)
    lo, hi = fleet.action_bounds(state, make_inputs(1, 3))
    torch.testing.assert_close(lo[..., 0], torch.tensor([[0.0, -5.0, -4.0 * 0.95]], dtype=F64))
    torch.testing.assert_close(hi[..., 0], torch.tensor([[5.0, 0.2 / 0.95, 5.0]], dtype=F64))


def test_inverter_circle_holds_for_any_p_and_is_tight():
    fleet = make_fleet(Battery, n=64, reactive_power=True, s_max_over_p_max=(1.0, 1.2))
    state = fleet.initial_state(1, torch.zeros(1))
    u = torch.rand(5, 64, 2, generator=torch.Generator().manual_seed(1), dtype=F64)
    u[..., 1] = torch.where(u[..., 1] > 0.5, 1.0, 0.0)  # rim of the circle
    state = state.expand(5, 64, 2)
    a = fleet.action(u, state, make_inputs(5, 64))
    s = torch.sqrt(a[..., 0] ** 2 + a[..., 1] ** 2)
    assert torch.all(s <= fleet.s_max_kva + 1e-12)
    assert torch.all(s >= fleet.s_max_kva * (1 - 1e-4))  # tight up to the smoothing
    p = torch.linspace(-2.0, 2.0, 9, dtype=F64)
    q = reactive_limit_kvar(p, torch.tensor(2.0, dtype=F64))
    assert q[0] == 0 and q[-1] == 0
    torch.testing.assert_close(q[4], torch.tensor(2.0, dtype=F64), rtol=1e-4, atol=0)


def test_battery_terminal_residual_is_the_energy_shortfall():
    fleet = make_fleet(Battery, n=2)
    first = fleet.initial_state(1, torch.zeros(1))
    last = first.clone()
    last[..., 0] = last[..., 0] + torch.tensor([[-1.5, 2.0]], dtype=F64)
    torch.testing.assert_close(fleet.terminal_residuals(first, last)[..., 0], torch.tensor([[1.5, 0.0]], dtype=F64))
    assert fleet.residuals(first, None, last, None).shape == (1, 2, 0)


def test_battery_observation_is_unit_scaled():
    fleet = make_fleet(Battery, n=5)
    obs = fleet.observation(fleet.initial_state(2, torch.zeros(2)), make_inputs(2, 5))
    assert obs.shape == (2, 5, 2)
    assert torch.all((obs[..., 0] >= 0) & (obs[..., 0] <= 1)) and torch.all(obs[..., 1] == 0)


# ----------------------------------------------------------------------------- battery controllers
@pytest.mark.parametrize("reactive", [False, True])
def test_no_control_battery_is_idle(reactive):
    fleet = make_fleet(Battery, n=10, reactive_power=reactive)
    state = fleet.initial_state(2, torch.zeros(2))
    inputs = make_inputs(2, 10, v_pu=0.9)
    u = fleet.baseline_u("no_control", state, inputs)
    assert u.shape == (2, 10, fleet.action_dim) and torch.all((u >= 0) & (u <= 1))
    action = fleet.action(u, state, inputs)
    torch.testing.assert_close(action, torch.zeros_like(action), atol=1e-12, rtol=0)


def test_rule_based_battery_follows_price_and_ends_the_day_above_its_start_energy():
    dt_h, steps = 1.0, 24
    with np.load(data_dir() / DATA_FILE) as npz:
        prices = torch.as_tensor(npz["price_per_kwh"][:64].astype(np.float64))  # [64 days, 24]
    fleet = make_fleet(Battery, n=20, dt_h=dt_h)

    def inputs_fn(t):
        return make_inputs(64, 20, t=t, dt_h=dt_h, price=prices[:, t])

    states, actions = rollout(fleet, lambda t, s, i: fleet.baseline_u("rule_based", s, i), inputs_fn, steps, 64)
    shortfall = fleet.terminal_residuals(states[0], states[-1])
    assert torch.all(shortfall <= 1e-9)
    p = actions[..., 0]
    cheap = (prices.T <= 0.27)[..., None].expand_as(p)
    dear = (prices.T >= 0.33)[..., None].expand_as(p)
    assert torch.all(p[cheap] >= -1e-12) and torch.all(p[dear] <= 1e-12)
    assert torch.all(p[~cheap & ~dear].abs() <= 1e-12)
    assert p.max() > 0 and p.min() < 0  # it does trade


def test_droop_battery_injects_reactive_power_at_low_voltage_and_absorbs_at_high():
    fleet = make_fleet(Battery, n=4, reactive_power=True)
    state = fleet.initial_state(3, torch.zeros(3))
    v = torch.tensor([0.90, 1.00, 1.10], dtype=F64)[:, None].expand(3, 4)
    inputs = make_inputs(3, 4, v_pu=v)
    p_kw, q_kvar = fleet.demand(fleet.action(fleet.baseline_u("droop", state, inputs), state, inputs), state)
    torch.testing.assert_close(p_kw, torch.zeros_like(p_kw), atol=1e-12, rtol=0)
    torch.testing.assert_close(q_kvar[0], -0.44 * fleet.s_max_kva)  # injects 44 % of S
    torch.testing.assert_close(q_kvar[1], torch.zeros(4, dtype=F64))
    torch.testing.assert_close(q_kvar[2], 0.44 * fleet.s_max_kva)  # absorbs


def test_droop_without_reactive_power_leaves_the_battery_idle():
    fleet = make_fleet(Battery, n=4)
    state = fleet.initial_state(1, torch.zeros(1))
    inputs = make_inputs(1, 4, v_pu=0.9)
    action = fleet.action(fleet.baseline_u("droop", state, inputs), state, inputs)
    torch.testing.assert_close(action, torch.zeros_like(action), atol=1e-12, rtol=0)


def test_unknown_controller_is_an_error():
    fleet = make_fleet(Battery, n=2)
    with pytest.raises(ValueError, match="unknown controller"):
        fleet.baseline_u("pid", fleet.initial_state(1, torch.zeros(1)), make_inputs(1, 2))


def test_ieee1547_curves_at_their_breakpoints():
    v = torch.tensor([0.85, 0.92, 0.95, 0.98, 1.0, 1.02, 1.05, 1.08, 1.2], dtype=F64)
    torch.testing.assert_close(volt_var_injection_frac(v),
                               torch.tensor([0.44, 0.44, 0.22, 0, 0, 0, -0.22, -0.44, -0.44], dtype=F64))
    v = torch.tensor([1.0, 1.06, 1.08, 1.10, 1.2], dtype=F64)
    torch.testing.assert_close(volt_watt_limit_frac(v), torch.tensor([1.0, 1.0, 0.6, 0.2, 0.2], dtype=F64))


# ============================================================================ heat pump
def test_rc_step_is_the_exact_solution_of_the_ode():
    dt_h = 0.5
    fleet = make_fleet(HeatPump, n=3, dt_h=dt_h)
    temp_out, theta0 = -3.0, torch.tensor([18.0, 21.0, 25.0], dtype=F64)
    p_kw = torch.tensor([0.0, 1.5, 3.0], dtype=F64)
    state = torch.stack([theta0, torch.zeros(3, dtype=F64)], -1)[None]
    nxt = fleet.step(state, p_kw[None, :, None], make_inputs(1, 3, dt_h=dt_h, temp_out_c=temp_out))
    cop = fleet.cop(torch.tensor([temp_out], dtype=F64))[0]
    for i in range(3):
        r, c, q = fleet.r_c_per_kw[i].item(), fleet.c_kwh_per_c[i].item(), (cop[i] * p_kw[i]).item()
        sol = solve_ivp(lambda t, y: [((temp_out - y[0]) / r + q) / c], (0.0, dt_h), [theta0[i].item()],
                        rtol=1e-12, atol=1e-12)
        assert nxt[0, i, 0].item() == pytest.approx(sol.y[0, -1], abs=1e-9)
        closed = temp_out + r * q + (theta0[i].item() - temp_out - r * q) * math.exp(-dt_h / (r * c))
        assert nxt[0, i, 0].item() == pytest.approx(closed, abs=1e-12)


def test_cop_rises_with_outdoor_temperature_and_matches_staffell():
    temp = torch.linspace(-25.0, 40.0, 300, dtype=F64)
    for t_supply in (35.0, 45.0, 55.0):
        cop = cop_air_source(temp, torch.tensor(t_supply, dtype=F64), torch.tensor(1.0, dtype=F64))
        assert torch.all(torch.diff(cop) >= 0) and torch.all(cop >= 1.0)
    dT = 35.0 - 2.0  # A2/W35
    cop = cop_air_source(torch.tensor(2.0, dtype=F64), torch.tensor(35.0, dtype=F64), torch.tensor(0.85, dtype=F64))
    assert cop.item() == pytest.approx(0.85 * (6.81 - 0.121 * dT + 0.000630 * dT**2))


def test_heat_pump_is_sized_for_the_design_temperature():
    fleet = make_fleet(HeatPump, n=100)
    cop = fleet.cop(-14.0)[0]
    held_c = -14.0 + fleet.r_c_per_kw * cop * fleet.p_max_kw  # steady state at full power
    assert torch.all(held_c >= fleet.theta_mid_c + 0.1 * (fleet.theta_mid_c + 14.0) - 1e-9)
    assert 2.0 < fleet.p_max_kw.min() and fleet.p_max_kw.max() < 10.0  # residential electric kW


@pytest.mark.parametrize("dt_h", [1.0, 0.5])
def test_thermostat_keeps_every_house_in_band_on_the_coldest_day(dt_h):
    temp = torch.as_tensor(coldest_day_temp_c(dt_h))
    fleet = make_fleet(HeatPump, n=200, dt_h=dt_h)
    inputs_fn = lambda t: make_inputs(1, 200, t=t, dt_h=dt_h, temp_out_c=temp[t])  # noqa: E731
    states, actions = rollout(fleet, lambda t, s, i: fleet.baseline_u("no_control", s, i), inputs_fn,
                              len(temp), 1)
    theta = states[..., 0]
    assert torch.all(theta >= fleet.theta_min_c) and torch.all(theta <= fleet.theta_max_c)
    res = torch.stack([fleet.residuals(states[t], actions[t], states[t + 1], inputs_fn(t)) for t in range(len(temp))])
    assert torch.all(res == 0) and torch.all(fleet.terminal_residuals(states[0], states[-1]) == 0)
    assert torch.all(actions[..., 0] >= 0) and torch.all(actions[..., 0] <= fleet.p_max_kw + 1e-12)
    assert torch.all(theta[1:] <= fleet.theta_mid_c + 0.5 + 1e-9)  # the thermostat stops at the upper threshold
    for controller in ("rule_based", "droop"):
        torch.testing.assert_close(fleet.baseline_u(controller, states[5], inputs_fn(5)),
                                   fleet.baseline_u("no_control", states[5], inputs_fn(5)))


def test_thermostat_hysteresis_uses_the_on_flag():
    fleet = make_fleet(HeatPump, n=1, theta_min_c=(20.0, 20.0), theta_max_c=(24.0, 24.0),
                       r_c_per_kw=(5.0, 5.0), c_kwh_per_c=(8.0, 8.0))  # mid-band 22, switch at 21.5 / 22.5
    inputs = make_inputs(5, 1, temp_out_c=10.0)
    a = fleet.decay.item()
    ends_at_21_6 = (21.6 - (1 - a) * 10.0) / a  # free-floating temperature 21.6 at the end of the step
    theta = torch.tensor([21.6, ends_at_21_6, 22.0, 22.0, 22.6], dtype=F64)[:, None]
    on = torch.tensor([0.0, 0.0, 0.0, 1.0, 1.0], dtype=F64)[:, None]
    state = torch.stack([theta, on], -1)
    p = fleet.thermostat_p_kw(state, inputs)[:, 0]
    # would fall below 21.5 -> on; stays above with the flag off -> off; flag on -> keeps heating;
    # at or above 22.5 -> off
    assert (p > 0).tolist() == [True, False, False, True, False]
    nxt = fleet.step(state, fleet.action(fleet.baseline_u("no_control", state, inputs), state, inputs), inputs)
    torch.testing.assert_close(nxt[[0, 3], 0, 0], torch.full((2,), 22.5, dtype=F64))  # heats to the upper threshold
    assert nxt[..., 1].tolist() == [[1.0], [0.0], [0.0], [1.0], [0.0]]


def test_heat_pump_residuals_and_demand():
    fleet = make_fleet(HeatPump, n=3, theta_min_c=(20.0, 20.0), theta_max_c=(24.0, 24.0),
                       power_factor=(0.96, 0.96))
    theta = torch.tensor([[18.5, 22.0, 25.0]], dtype=F64)
    state = torch.stack([theta, torch.zeros_like(theta)], -1)
    expected_c = torch.tensor([[1.5, 0.0, 1.0]], dtype=F64)
    torch.testing.assert_close(fleet.residuals(state, None, state, None)[..., 0], expected_c)
    torch.testing.assert_close(fleet.terminal_residuals(state, state)[..., 0], expected_c)
    p_kw, q_kvar = fleet.demand(torch.full((1, 3, 1), 2.0, dtype=F64), state)
    assert torch.all(p_kw == 2.0)
    torch.testing.assert_close(q_kvar, torch.full((1, 3), 2.0 * math.tan(math.acos(0.96)), dtype=F64))
    assert torch.all(fleet.cost(state, torch.ones(1, 3, 1, dtype=F64), None) == 0)


# ============================================================================ generator
def test_generator_demand_is_negative_output_and_cost_is_fuel():
    fleet = make_fleet(Generator, n=3, reactive_power=True, eta_el=(0.25, 0.25),
                       fuel_price_eur_per_kwh=(0.08, 0.08), c2_eur_per_kw2h=(0.004, 0.004), dt_h=0.5)
    state = fleet.initial_state(1, torch.zeros(1))
    inputs = make_inputs(1, 3, dt_h=0.5)
    action = fleet.action(torch.tensor([[[1.0, 1.0], [0.5, 0.0], [0.0, 0.5]]], dtype=F64), state, inputs)
    p_kw, q_kvar = fleet.demand(action, state)
    torch.testing.assert_close(p_kw, -action[..., 0])
    assert p_kw[0, 0] < 0 and q_kvar[0, 0] < 0 and q_kvar[0, 1] > 0 and p_kw[0, 2] == 0
    p = action[..., 0]
    torch.testing.assert_close(fleet.cost(state, action, inputs), (0.004 * p**2 + 0.32 * p) * 0.5)
    torch.testing.assert_close(fleet.step(state, action, inputs)[..., 0], p)


def test_rule_based_generator_runs_where_marginal_cost_equals_price():
    fleet = make_fleet(Generator, n=1, p_max_kw=(5.0, 5.0), eta_el=(0.25, 0.25),
                       fuel_price_eur_per_kwh=(0.075, 0.075), c2_eur_per_kw2h=(0.004, 0.004))
    prices = torch.tensor([0.20, 0.30, 0.316, 0.40], dtype=F64)  # c1 = 0.30
    state = fleet.initial_state(4, torch.zeros(4))
    inputs = make_inputs(4, 1, price=prices)
    p = fleet.action(fleet.baseline_u("rule_based", state, inputs), state, inputs)[:, 0, 0]
    torch.testing.assert_close(p, torch.tensor([0.0, 0.0, 2.0, 5.0], dtype=F64))
    off = fleet.action(fleet.baseline_u("no_control", state, inputs), state, inputs)
    assert torch.all(off == 0)


def test_droop_generator_curtails_by_volt_watt_and_supports_voltage():
    fleet = make_fleet(Generator, n=1, reactive_power=True, p_max_kw=(4.0, 4.0), c2_eur_per_kw2h=(0.0, 0.0),
                       fuel_price_eur_per_kwh=(0.05, 0.05))
    v = torch.tensor([0.90, 1.00, 1.08, 1.12], dtype=F64)[:, None]
    state = fleet.initial_state(4, torch.zeros(4))
    inputs = make_inputs(4, 1, price=0.35, v_pu=v)
    action = fleet.action(fleet.baseline_u("droop", state, inputs), state, inputs)[:, 0]
    torch.testing.assert_close(action[:, 0], torch.tensor([4.0, 4.0, 2.4, 0.8], dtype=F64))
    q = action[:, 1]
    assert q[0] > 0 and q[1] == 0 and q[2] < 0 and q[3] < 0  # injects at low, absorbs at high voltage
    q_lim = reactive_limit_kvar(action[:, 0], fleet.s_max_kva)
    assert q[0] == pytest.approx(min(0.44 * fleet.s_max_kva.item(), q_lim[0].item()))


# ============================================================================ all fleets
FLEETS = [
    (Battery, {"reactive_power": True}),
    (Battery, {}),
    (HeatPump, {}),
    (Generator, {"reactive_power": True}),
]


@pytest.mark.parametrize("cls, params", FLEETS)
def test_gradcheck_action_and_step_with_respect_to_u(cls, params):
    fleet = make_fleet(cls, n=3, seed=5, **params)
    state = fleet.initial_state(2, torch.zeros(2))
    inputs = make_inputs(2, 3, temp_out_c=-2.0)
    u = (0.1 + 0.8 * torch.rand(2, 3, fleet.action_dim, generator=torch.Generator().manual_seed(0),
                                dtype=F64)).requires_grad_()
    if cls is Battery:  # keep p away from the kink of max(p, 0)
        u = u.detach()
        u[..., 0] = torch.where((u[..., 0] - 0.5).abs() < 0.1, u[..., 0] + 0.2, u[..., 0])
        u.requires_grad_()
    assert torch.autograd.gradcheck(lambda x: fleet.action(x, state, inputs), (u,))
    assert torch.autograd.gradcheck(lambda x: fleet.step(state, fleet.action(x, state, inputs), inputs)[..., 0], (u,))
    assert torch.autograd.gradcheck(lambda x: fleet.cost(state, fleet.action(x, state, inputs), inputs), (u,))


@pytest.mark.parametrize("cls, params", FLEETS)
def test_no_nan_at_the_corners_of_u_and_of_the_state(cls, params):
    fleet = make_fleet(cls, n=4, **params)
    state = fleet.initial_state(3, torch.zeros(3))
    if cls is Battery:  # empty, full, and start-of-day
        e = torch.stack([fleet.e_min_kwh, fleet.e_max_kwh, fleet.e_init_kwh])
        state = torch.stack([e, e], -1)
    inputs = make_inputs(3, 4, temp_out_c=-13.3)
    for corner in (0.0, 1.0):
        u = torch.full((3, 4, fleet.action_dim), corner, dtype=F64, requires_grad=True)
        action = fleet.action(u, state, inputs)
        nxt = fleet.step(state, action, inputs)
        p_kw, q_kvar = fleet.demand(action, state)
        total = nxt[..., 0].sum() + fleet.cost(state, action, inputs).sum() + p_kw.sum() + q_kvar.sum()
        total.backward()
        assert torch.isfinite(action).all() and torch.isfinite(nxt).all() and torch.isfinite(u.grad).all()


@pytest.mark.parametrize("cls, params", FLEETS)
def test_shapes_and_baselines_lie_in_the_unit_box(cls, params):
    fleet = make_fleet(cls, n=6, **params)
    state = fleet.initial_state(2, torch.zeros(2))
    inputs = make_inputs(2, 6, v_pu=torch.linspace(0.9, 1.1, 12, dtype=F64).reshape(2, 6))
    assert state.shape == (2, 6, fleet.state_dim)
    assert fleet.observation(state, inputs).shape == (2, 6, fleet.obs_dim)
    lo, hi = fleet.action_bounds(state, inputs)
    assert lo.shape == hi.shape == (2, 6, fleet.action_dim) and torch.all(lo <= hi)
    for controller in ("no_control", "rule_based", "droop"):
        u = fleet.baseline_u(controller, state, inputs)
        assert u.shape == (2, 6, fleet.action_dim) and torch.all((u >= 0) & (u <= 1))
    assert fleet.residuals(state, None, state, inputs).shape == (2, 6, len(fleet.residual_names))
    assert fleet.terminal_residuals(state, state).shape == (2, 6, len(fleet.terminal_residual_names))


def test_float32_fleets_keep_their_dtype():
    for cls, params in FLEETS:
        fleet = make_fleet(cls, n=3, dtype=torch.float32, **params)
        state = fleet.initial_state(1, torch.zeros(1))
        inputs = make_inputs(1, 3, dtype=torch.float32)
        u = torch.full((1, 3, fleet.action_dim), 0.7)
        nxt = fleet.step(state, fleet.action(u, state, inputs), inputs)
        assert state.dtype == nxt.dtype == torch.float32


# ============================================================================ authority extremes
AUTHORITY_FLEETS = FLEETS + [(Generator, {})]


@pytest.mark.parametrize("cls, params", AUTHORITY_FLEETS)
def test_authority_demand_shapes_signs_and_direction_check(cls, params):
    fleet = make_fleet(cls, n=5, **params)
    state = fleet.initial_state(2, torch.zeros(2))
    inputs = make_inputs(2, 5)
    p_down, q_down = fleet.authority_demand(state, inputs, +1)  # lowers the voltage
    p_up, q_up = fleet.authority_demand(state, inputs, -1)  # raises it
    for x in (p_down, q_down, p_up, q_up):
        assert x.shape == (2, 5) and x.dtype == F64
    assert torch.all(p_down > p_up)
    assert torch.all(q_down >= q_up)
    # no_control lies between the extremes
    p_nc, q_nc = fleet.demand(fleet.action(fleet.baseline_u("no_control", state, inputs), state, inputs), state)
    assert torch.all(p_up <= p_nc + 1e-12) and torch.all(p_nc <= p_down + 1e-12)
    with pytest.raises(ValueError, match="direction"):
        fleet.authority_demand(state, inputs, 0)


def test_battery_authority_ignores_the_state_of_charge_but_keeps_the_circle():
    fleet = make_fleet(Battery, n=4, reactive_power=True)
    inputs = make_inputs(3, 4)
    e = torch.stack([fleet.e_min_kwh, fleet.e_max_kwh, fleet.e_init_kwh])  # empty, full, start
    state = torch.stack([e, e], -1)
    p_down, q_down = fleet.authority_demand(state, inputs, +1)
    p_up, q_up = fleet.authority_demand(state, inputs, -1)
    circle = torch.sqrt(fleet.s_max_kva**2 - fleet.p_max_kw**2)
    torch.testing.assert_close(p_down, fleet.p_max_kw.expand(3, 4))
    torch.testing.assert_close(p_up, -fleet.p_max_kw.expand(3, 4))
    torch.testing.assert_close(q_down, circle.expand(3, 4), rtol=1e-4, atol=0)  # absorbs
    torch.testing.assert_close(q_up, -circle.expand(3, 4), rtol=1e-4, atol=0)  # injects
    assert torch.all(p_down**2 + q_down**2 <= fleet.s_max_kva**2 * (1 + 1e-12))
    # the generic corner search keeps the energy limits: a full battery cannot charge there
    p_full, _ = DeviceModel.authority_demand(fleet, state, inputs, +1)
    assert torch.all(p_full[1] < 1e-9) and torch.all(p_down[1] > 0)
    plain = make_fleet(Battery, n=4)
    p, q = plain.authority_demand(state, inputs, -1)
    torch.testing.assert_close(p, -plain.p_max_kw.expand(3, 4))
    assert torch.all(q == 0)


@pytest.mark.parametrize("cls, params", AUTHORITY_FLEETS)
def test_authority_overrides_match_the_default_corner_search_where_limits_do_not_bind(cls, params):
    """With room in the energy limits (short step, mid state of charge) the rated extremes are
    the corners of the policy box, picked lexicographically (p, then q)."""
    fleet = make_fleet(cls, n=6, seed=3, dt_h=0.1, **params)
    state = fleet.initial_state(2, torch.zeros(2))
    if cls is Battery:
        e = 0.5 * (fleet.e_min_kwh + fleet.e_max_kwh).expand(2, 6)
        state = torch.stack([e, e], -1)
    inputs = make_inputs(2, 6, dt_h=0.1, temp_out_c=-5.0)
    for direction in (+1, -1):
        p, q = fleet.authority_demand(state, inputs, direction)
        p_ref, q_ref = DeviceModel.authority_demand(fleet, state, inputs, direction)
        torch.testing.assert_close(p, p_ref)
        torch.testing.assert_close(q, q_ref)


def test_heat_pump_and_generator_authority_extremes():
    hp = make_fleet(HeatPump, n=4)
    state = hp.initial_state(1, torch.zeros(1))
    inputs = make_inputs(1, 4)
    p, q = hp.authority_demand(state, inputs, +1)
    torch.testing.assert_close(p, hp.p_max_kw.expand(1, 4))
    torch.testing.assert_close(q, (hp.p_max_kw * hp.tan_phi).expand(1, 4))
    p, q = hp.authority_demand(state, inputs, -1)
    assert torch.all(p == 0) and torch.all(q == 0)
    gen = make_fleet(Generator, n=4, reactive_power=True)
    state = gen.initial_state(1, torch.zeros(1))
    p, q = gen.authority_demand(state, inputs, +1)  # off, absorbing its full circle
    assert torch.all(p == 0)
    torch.testing.assert_close(q, gen.s_max_kva.expand(1, 4), rtol=1e-4, atol=0)
    p, q = gen.authority_demand(state, inputs, -1)  # at p_max, injecting what the circle leaves
    torch.testing.assert_close(p, -gen.p_max_kw.expand(1, 4))
    torch.testing.assert_close(q, -torch.sqrt(gen.s_max_kva**2 - gen.p_max_kw**2).expand(1, 4),
                               rtol=1e-4, atol=0)
