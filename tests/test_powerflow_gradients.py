"""Gradients of the ``ac3ph`` solver: the implicit adjoint checked three ways (docs/design.md §2).

1. ``torch.autograd.gradcheck`` (finite differences of the converged solution) on IEEE 13 with
   voltage-dependent (models 2, 5) and delta loads;
2. autograd through an *unrolled* Z-bus iteration run to convergence, on IEEE 123;
3. the adjoint's own residual, and the adjoint step against autograd's VJP of one map step
   (this is where the conj() trap would show).
"""

from __future__ import annotations

import pytest
import torch

from gridflex.network.powerflow import AdjointReport, SolveOptions, build_network, solve_power_flow
from gridflex.network.powerflow import zbus
from opendss_oracle import PUBLISHED_TAPS, feeder_path, tap_commands

TIGHT = SolveOptions(tol_pu=1e-13, max_iter=200, adjoint_tol=1e-13, adjoint_max_iter=400)


def make_grid(feeder: str):
    """The project's Grid (feeder cache, no engine needed) or, failing that, the engine's."""
    try:
        from gridflex.runs.feeder_cache import load_feeder
        from gridflex.network.grid_build import build_grid

        return build_grid(load_feeder(feeder_path(feeder), taps="file"), PUBLISHED_TAPS[feeder])
    except ImportError:
        pytest.importorskip("dss")
        from opendss_oracle import grid_from_engine

        return grid_from_engine(feeder_path(feeder), tap_commands(PUBLISHED_TAPS[feeder]), feeder)


@pytest.fixture(scope="module")
def grid13():
    return make_grid("ieee13")


@pytest.fixture(scope="module")
def grid123():
    return make_grid("ieee123")


# 675.x and 652.1 wye (model 1, 2), 611.3 constant |I|, 692.3 delta constant |I|, 646.2 delta
# constant Z, 633.1 and 680.2 carry no load.
IEEE13_INJECTIONS = ["675.1", "675.2", "652.1", "611.3", "692.3", "646.2", "633.1", "680.2"]


@pytest.mark.parametrize("method", ["dense", "sparse"])
def test_gradcheck_voltages_and_currents_ieee13(grid13, method):
    """Implicit gradients of voltages, a line current and the source power, on the dense Z-bus and
    on the sparse LU path (``method``, forced here; ``auto`` keeps IEEE 13 dense)."""
    net = build_network(grid13, IEEE13_INJECTIONS, method=method)
    monitored = torch.tensor([grid13.node_index(n) for n in ("675.1", "611.3", "646.2", "692.3", "634.1")])
    line = net.branch_slices["line.684611"]

    def outputs(p_kw, q_kvar, load_scale):
        result = solve_power_flow(net, load_scale, p_kw, q_kvar, options=TIGHT)
        currents = result.branch_currents_a[..., line].abs() / 100.0
        return result.vm_pu[..., monitored], currents, result.source_power_kw / 1e3

    gen = torch.Generator().manual_seed(1)
    n_inj = len(IEEE13_INJECTIONS)
    p_kw = (torch.rand(2, n_inj, generator=gen, dtype=torch.float64) - 0.5) * 200
    q_kvar = (torch.rand(2, n_inj, generator=gen, dtype=torch.float64) - 0.5) * 100
    scale = 0.6 + 0.8 * torch.rand(2, net.n_loads, generator=gen, dtype=torch.float64)
    inputs = tuple(t.requires_grad_() for t in (p_kw, q_kvar, scale))
    # eps in kW (and load-scale units): large enough that the solver tolerance is no FD noise
    assert torch.autograd.gradcheck(outputs, inputs, eps=1e-3, atol=1e-7, rtol=1e-4,
                                     fast_mode=True)


def unrolled_solution(net, p_kw, q_kvar, load_scale, iterations: int = 80):
    """Reference: plain Z-bus iterations recorded by autograd (test-only; never used in gridflex)."""
    batch = load_scale.shape[0]
    s_base_kva = net.s_base_va / 1e3
    c = zbus.injection_coefficients(net, batch, load_scale, torch.complex(p_kw, q_kvar) / s_base_kva)
    v = net.w_i.expand(batch, -1)
    for _ in range(iterations):
        v = zbus.fixed_point_map(net, v, c)
    residual = (zbus.fixed_point_map(net, v, c) - v).abs().max()
    v_all = zbus.node_voltages(net, v, c)
    return v_all, zbus.source_power_pu(net, v_all) * s_base_kva, residual


def test_implicit_matches_unrolled_ieee123(grid123):
    net = build_network(grid123)  # all load nodes: models 1, 2, 5, wye and delta
    gen = torch.Generator().manual_seed(2)
    batch, n_inj = 3, net.n_inj
    p_kw = ((torch.rand(batch, n_inj, generator=gen, dtype=torch.float64) - 0.5) * 60).requires_grad_()
    q_kvar = ((torch.rand(batch, n_inj, generator=gen, dtype=torch.float64) - 0.5) * 30).requires_grad_()
    scale = (0.5 + 0.8 * torch.rand(batch, net.n_loads, generator=gen, dtype=torch.float64)).requires_grad_()
    weights = torch.rand(batch, grid123.n_nodes, generator=gen, dtype=torch.float64)
    line = net.branch_slices["line.l3"]

    def loss(v_all, source_kw):
        currents = zbus.terminal_currents_a(net, v_all)[:, line].abs()
        return (weights * v_all.abs()).sum() + source_kw.real.sum() / 100 + currents.sum() / 100

    report = AdjointReport()
    result = solve_power_flow(net, scale, p_kw, q_kvar, options=TIGHT, adjoint_report=report)
    implicit = torch.autograd.grad(
        loss(result.v_pu, torch.complex(result.source_power_kw, result.source_power_kvar)),
        (p_kw, q_kvar, scale))
    v_all, source_kw, residual = unrolled_solution(net, p_kw, q_kvar, scale)
    assert residual < 1e-12
    unrolled = torch.autograd.grad(loss(v_all, source_kw), (p_kw, q_kvar, scale))
    for ours, ref in zip(implicit, unrolled):
        assert torch.allclose(ours, ref, rtol=1e-7, atol=1e-9 * ref.abs().max())
    assert report.converged.all() and report.residual.max() <= 1e-13


@pytest.mark.parametrize("vlimits_rule", [False, True])
def test_adjoint_step_is_the_vjp_of_the_map(grid13, vlimits_rule):
    """adjoint_step(lambda) - g_bar == autograd's VJP of G at v: checks A, B and the conj() trap.

    The state is perturbed so that, with the rule on, loads sit in every OpenDSS region.
    """
    net = build_network(grid13, IEEE13_INJECTIONS, vlimits_rule=vlimits_rule)
    gen = torch.Generator().manual_seed(3)
    batch = 4
    radius = torch.tensor([0.4, 0.8, 0.97, 1.08], dtype=torch.float64)[:, None]
    angle = torch.rand(batch, net.n_iter, generator=gen, dtype=torch.float64) * 0.1
    v = (net.w_i / net.w_i.abs()) * torch.polar(radius.expand(-1, net.n_iter), angle)
    scale = 0.5 + torch.rand(batch, net.n_loads, generator=gen, dtype=torch.float64)
    s_dev = torch.complex(torch.rand(batch, net.n_inj, dtype=torch.float64, generator=gen),
                          torch.rand(batch, net.n_inj, dtype=torch.float64, generator=gen)) * 0.05
    c = zbus.injection_coefficients(net, batch, scale, s_dev)
    lam = torch.complex(torch.randn(batch, net.n_iter, generator=gen, dtype=torch.float64),
                        torch.randn(batch, net.n_iter, generator=gen, dtype=torch.float64))
    ours = zbus.adjoint_step(net, lam, torch.zeros_like(lam), zbus.local_jacobian(net, v, c))
    v_req = v.clone().requires_grad_()
    (ref,) = torch.autograd.grad(zbus.fixed_point_map(net, v_req, c), v_req, grad_outputs=lam)
    assert torch.allclose(ours, ref, rtol=1e-10, atol=1e-10)


def test_nonconverged_samples_get_zero_gradient(grid13):
    net = build_network(grid13, IEEE13_INJECTIONS)
    scale = torch.tensor([[1.0], [25.0]], dtype=torch.float64).expand(-1, net.n_loads).clone().requires_grad_()
    p_kw = torch.zeros(2, net.n_inj, dtype=torch.float64, requires_grad=True)
    result = solve_power_flow(net, scale, p_kw, options=SolveOptions(max_iter=40))
    assert result.converged.tolist() == [True, False]
    result.vm_pu.sum().backward()
    assert torch.isfinite(scale.grad).all() and torch.isfinite(p_kw.grad).all()
    assert scale.grad[1].abs().max() == 0 and p_kw.grad[1].abs().max() == 0
    assert p_kw.grad[0].abs().max() > 0


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_matches_cpu(grid123):
    gen = torch.Generator().manual_seed(4)
    scale = 0.5 + 0.8 * torch.rand(64, len(grid123.load_elements), generator=gen, dtype=torch.float64)
    grads = []
    for device in ("cpu", "cuda"):
        net = build_network(grid123, device=device)
        s = scale.to(device).detach().clone().requires_grad_()
        result = solve_power_flow(net, s, options=SolveOptions(tol_pu=1e-12))
        (result.vm_pu.sum() + result.source_power_kw.sum() / 1e3).backward()
        grads.append(s.grad.cpu())
    assert torch.allclose(grads[0], grads[1], rtol=1e-8, atol=1e-10)
