"""Sparse linearised network equations (the reference's network model) against the AC solver."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
import torch
from scipy.sparse.linalg import spsolve

from gridflex.network.equations import NetworkEquations
from gridflex.network.powerflow import build_network
from gridflex.network.powerflow.result import solve_power_flow


@pytest.fixture(scope="module")
def case():
    from gridflex.plugins.registry import load_registry
    from gridflex.scenario import default_scenario_path, load_scenario
    from gridflex.runs.world import build_world

    pm, registry = load_registry()
    env = build_world(load_scenario(default_scenario_path(), [], registry), registry, pm).env
    net = build_network(env.grid, env.injection_nodes)
    vmon, imon = env.voltage_monitor, env.current_monitor
    eq = NetworkEquations(net, env.grid, vmon.node_a, vmon.node_b, imon.columns)
    rng = np.random.default_rng(3)
    steps = 3
    point = (rng.uniform(0.5, 1.5, (steps, net.n_loads)), rng.uniform(-5, 5, (steps, net.n_inj)),
             rng.uniform(-2, 2, (steps, net.n_inj)))
    return env, net, eq, point, rng


def _ac(net, load_scale, p_kw, q_kvar):
    t = torch.as_tensor
    with torch.no_grad():
        return solve_power_flow(net, t(load_scale), t(p_kw), t(q_kvar))


def _merged_solve(eq, lin, p_kw, q_kvar):
    """Merged node voltages [2 n_z, T] of the linear model at device powers [T, n_inj]."""
    s = np.concatenate([p_kw, q_kvar], axis=1)
    out = []
    for t in range(s.shape[0]):
        a = eq.y + eq.jac_rows @ sp.diags(lin.jac_values[:, t]) @ eq.jac_cols
        b = eq.merge.T @ (lin.rhs[:, t] - eq.dev_pattern.rows @ (lin.dev_values[:, t] * (eq.dev_cols @ s[t])))
        out.append(spsolve(a.tocsc(), b))
    return np.stack(out, axis=1)


def test_unmerged_model_is_exact_at_the_point_and_second_order(case):
    env, net, eq, (ls, p, q), rng = case
    lin = eq.at(_ac(net, ls, p, q).v_pu.numpy(), ls, p, q)
    vmon = env.voltage_monitor
    # the model's own solution at the operating point is the AC solution (monitored magnitudes)
    x0 = eq.solve_linear(lin, p, q)
    mag0 = eq.mag_pattern.rows @ (lin.mag_values * (eq.mag_pattern.cols @ x0))
    assert np.abs(mag0 - lin.vm_pu).max() < 1e-8
    errors = []
    dp, dq = rng.uniform(-3, 3, p.shape), rng.uniform(-1, 1, q.shape)
    for h in (1.0, 0.1):
        x = eq.solve_linear(lin, p + h * dp, q + h * dq)
        flow = _ac(net, ls, p + h * dp, q + h * dq)
        mag = eq.mag_pattern.rows @ (lin.mag_values * (eq.mag_pattern.cols @ x))
        src = (lin.src_grad * x[eq.src_cols]).sum(0) + lin.src_const
        v = (x[: eq.n] + 1j * x[eq.n :])
        currents = eq.current_map @ v
        ac_currents = flow.branch_currents_a[..., torch.as_tensor(env.current_monitor.columns)].numpy().T
        errors.append((np.abs(mag - vmon.magnitudes_pu(flow.v_pu).numpy().T).max(),
                       np.abs(src - flow.source_power_kw.numpy()).max(),
                       np.abs(currents - ac_currents).max()))
    big, small = errors
    for e_big, e_small in zip(big, small):
        assert e_small < 0.05 * e_big  # first-order exact: a tenth of the step, ~1/100 of the error


def test_merged_model_with_offsets_is_exact_at_the_point(case):
    env, net, eq, (ls, p, q), rng = case
    assert eq.n_merged < eq.n  # IEEE 13's switch and regulators were eliminated
    assert np.abs(eq.y.data).max() < 1e4 * 10  # no stiff admittance left (lines ~1e2 pu)
    lin = eq.at(_ac(net, ls, p, q).v_pu.numpy(), ls, p, q)
    v_off, i_off, p_off = eq.merged_offsets(lin, p, q)
    z = _merged_solve(eq, lin, p, q)
    mag = eq.mag_rows @ (lin.mag_values * (eq.mag_cols @ z)) + v_off
    assert np.abs(mag - lin.vm_pu).max() < 1e-9
    assert np.abs(v_off).max() < 1e-3  # the eliminated elements' drops are small
    # nearby, the merged model tracks the AC solution to second order plus the drops' change
    dp = rng.uniform(-0.3, 0.3, p.shape)
    z1 = _merged_solve(eq, lin, p + dp, q)
    mag1 = eq.mag_rows @ (lin.mag_values * (eq.mag_cols @ z1)) + v_off
    ac1 = env.voltage_monitor.magnitudes_pu(_ac(net, ls, p + dp, q).v_pu).numpy().T
    assert np.abs(mag1 - ac1).max() < 1e-5


def test_pattern_rejects_entries_outside_it():
    from gridflex.network.equations import SparsePattern

    pattern = SparsePattern.from_mask(np.eye(3, dtype=bool))
    assert pattern.values(np.stack([np.diag([1.0, 2.0, 3.0])])).ravel().tolist() == [1.0, 2.0, 3.0]
    with pytest.raises(ValueError, match="outside"):
        pattern.values(np.ones((1, 3, 3)))
