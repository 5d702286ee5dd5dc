"""Linearised three-phase network (``gridflex.network.linearised``, ``linear3ph``) and the feasibility layer."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from gridflex.network.linearised import linearise
from gridflex.network.powerflow import build_network, solve_power_flow

INJ = ["671.1", "671.2", "671.3", "675.1", "634.1", "652.1"]


@pytest.fixture(scope="module")
def grid():
    from gridflex.runs.feeder_cache import load_feeder
    from gridflex.network.grid_build import build_grid
    from gridflex.scenario import resolve_feeder_file, shipped_scenarios_dir

    path = resolve_feeder_file("ieee13", shipped_scenarios_dir())
    return build_grid(load_feeder(path, taps="file")).with_load_model("constant_pq")


@pytest.fixture(scope="module")
def linear(grid):
    net = build_network(grid, INJ)
    return net, linearise(net, 0.6)


def _ac(net, l, p, q):
    t = lambda a: torch.as_tensor(a, dtype=torch.float64)[None]  # noqa: E731
    return solve_power_flow(net, t(l), t(p), t(q))


def test_exact_at_the_linearisation_point(linear):
    net, lin = linear
    l0, p0, q0 = lin.v.l0, lin.v.p0, lin.v.q0
    flow = _ac(net, l0, p0, q0)
    n = len(net.node_names)
    vm = lin.magnitudes(np.arange(n)).evaluate(l0, p0, q0)
    assert np.abs(vm - flow.vm_pu[0].numpy()).max() < 1e-9
    assert abs(lin.source.evaluate(l0, p0, q0)[0] - complex(flow.source_power_kw[0], flow.source_power_kvar[0])) < 1e-6
    cur = lin.currents().evaluate(l0, p0, q0)
    assert np.abs(cur - flow.branch_currents_a[0].numpy()).max() < 1e-4  # A (solver tolerance)


def test_first_order_accurate_error_shrinks_quadratically(linear):
    net, lin = linear
    rng = np.random.default_rng(0)
    dl = rng.uniform(-0.4, 0.4, net.n_loads)
    dp, dq = rng.normal(0, 60, net.n_inj), rng.normal(0, 30, net.n_inj)
    mag = lin.magnitudes(np.arange(len(net.node_names)))
    errors = []
    for eps in (1.0, 0.1):
        l, p, q = lin.v.l0 + eps * dl, eps * dp, eps * dq
        flow = _ac(net, l, p, q)
        e_v = np.abs(mag.evaluate(l, p, q) - flow.vm_pu[0].numpy()).max()
        e_s = abs(lin.source.evaluate(l, p, q)[0].real - float(flow.source_power_kw[0]))
        e_i = np.abs(lin.currents().evaluate(l, p, q) - flow.branch_currents_a[0].numpy()).max()
        errors.append((e_v, e_s, e_i))
    for big, small in zip(*errors):
        assert small < big / 30  # a tenth of the step: ~1/100 of the error (second order)


def test_linear3ph_has_the_ac3ph_interface(grid):
    from gridflex_plugins.solvers.ac3ph import AC3PhSolver
    from gridflex_plugins.solvers.linear3ph import Linear3PhSolver

    ac = AC3PhSolver(grid, injection_nodes=INJ)
    lin = Linear3PhSolver(grid, {"point": "base", "point_load_mult": 0.6}, injection_nodes=INJ)
    assert lin.injection_node_names == ac.injection_node_names
    assert lin.load_elements == ac.load_elements and lin.node_names == ac.node_names
    shape = (2, 3)
    scale = torch.full(shape + (len(grid.load_elements),), 0.6, dtype=torch.float64)
    p = torch.zeros(shape + (len(INJ),), dtype=torch.float64, requires_grad=True)
    q = torch.zeros_like(p)
    r_ac, r_lin = ac.solve(scale, p.detach(), q), lin.solve(scale, p, q)
    assert r_lin.v_pu.shape == r_ac.v_pu.shape and r_lin.v_pu.is_complex()
    assert r_lin.converged.all() and (r_lin.iterations == 0).all() and r_lin.converged.shape == shape
    for name in ("source_power_kw", "source_power_kvar", "losses_kw", "load_power_kw", "device_power_kw"):
        assert getattr(r_lin, name).shape == shape
    assert r_lin.branch_slices == r_ac.branch_slices
    assert r_lin.branch_currents_a.shape == r_ac.branch_currents_a.shape
    # at its linearisation point the linear model reproduces the AC solution
    assert (r_lin.vm_pu - r_ac.vm_pu).abs().max() < 1e-8
    assert (r_lin.source_power_kw - r_ac.source_power_kw).abs().max() < 1e-6
    assert (r_lin.losses_kw - r_ac.losses_kw).abs().max() < 1e-6
    assert (r_lin.branch_currents_a - r_ac.branch_currents_a).abs().max() < 1e-3  # A
    r_lin.source_power_kw.sum().backward()  # differentiable
    assert torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0


@pytest.fixture(scope="module")
def layer(grid, linear):
    pytest.importorskip("cvxpylayers")
    from gridflex.network.feasibility import FeasibilityLayer

    net, lin = linear
    monitors = [grid.node_index(n) for n in ("671.1", "671.2", "671.3", "675.1", "675.2", "634.1", "692.3")]
    return FeasibilityLayer(lin, monitors, None, (0.95, 1.05), current_columns=[0, 1, 2],
                            rating_a=[300.0, 300.0, 300.0], scale_kw=100.0)


def test_feasibility_layer_zero_distance_when_feasible(layer, linear):
    net, _ = linear
    p = torch.zeros(2, 3, net.n_inj, dtype=torch.float64)  # batched over days x steps
    scale = torch.full((2, 3, net.n_loads), 0.3, dtype=torch.float64)  # light load: inside every limit
    out = layer.project(p, torch.zeros_like(p), scale)
    assert out.distance_sq.shape == (2, 3)
    assert out.distance_sq.abs().max() < 1e-6
    assert (out.p_kw - p).abs().max() < 1e-2


def test_feasibility_layer_gradcheck(layer, linear):
    net, _ = linear
    p = torch.tensor([[300.0, 200, 200, 100, 50, 50]], dtype=torch.float64, requires_grad=True)
    q = torch.zeros_like(p)
    scale = torch.full((1, net.n_loads), 0.6, dtype=torch.float64)
    out = layer.project(p, q, scale)
    assert out.distance_sq.item() > 0.1  # infeasible: overloads the rated line
    assert torch.autograd.gradcheck(lambda x: layer.squared_distance(x, q, scale), (p,), eps=1e-4,
                                    atol=1e-6, rtol=1e-3)
