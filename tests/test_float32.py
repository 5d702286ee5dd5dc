"""float32 power flow against float64 on every shipped feeder (docs/network.md, "Precision").

Tolerances (docs/design.md §2): every node's |V| within 1e-5 pu, every branch's terminal currents
within 1e-3 of the branch's largest current (1 A floor: dangling stubs carry mA of charging
current), source power within 1e-5 relative. The reference is float64 with the refined inverse and
no-load voltage (``precise=True``), the most accurate network gridflex builds. Samples: random load
factors and device injections at every load node, dense and sparse methods, per-sample regulator
taps, and gradients of a current- and cost-like loss.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from gridflex.network.grid_build import GridAssembler
from gridflex.network.powerflow import SolveOptions, build_network, solve_power_flow, zbus
from gridflex.network.powerflow import taps as taps_mod
from gridflex.network.regulators import position_limits, regulator_tables
from gridflex.runs.feeder_cache import load_feeder
from gridflex.scenario.loading import resolve_feeder_file
from gridflex.shipped import BUILTIN_FEEDERS

V_TOL_PU = 1e-5
I_TOL_REL = 1e-3
S_TOL_REL = 1e-5
REFERENCE = SolveOptions(tol_pu=1e-12, max_iter=200, adjoint_tol=1e-12, adjoint_max_iter=400)
#: the ac3ph solver's float32 defaults (plugins/solvers/ac3ph.py: what float32 can resolve)
FLOAT32 = SolveOptions(tol_pu=1e-6, adjoint_tol=1e-5)
#: feeders whose dense n x n inverse is impractical (IEEE 8500: ~6 GB, docs/network.md): sparse only
SPARSE_ONLY = {"ieee8500"}
CASES = [(name, method) for name in sorted(BUILTIN_FEEDERS)
         for method in (("sparse",) if name in SPARSE_ONLY else ("dense", "sparse"))]
# IEEE 34 with all loads at constant PQ has no solution at 1.5x (docs/network.md)
MAX_SCALE = {"ieee34mod1": 1.1, "ieee34mod2": 1.1, "ieee8500": 1.1}


def _feeder(name: str):
    return load_feeder(resolve_feeder_file(name, base_dir=Path.cwd()), taps="file")


def _grid(name: str):
    return GridAssembler(_feeder(name)).grid().with_load_model("constant_pq")


def _samples(grid, net, name: str, n: int = 4, seed: int = 0):
    """Load factors [n, n_loads] and device injections [n, n_inj] (kW, kvar) sized by the
    feeder's mean nominal load per injection node."""
    rng = np.random.default_rng(seed)
    per_node_kw = float(np.sum(grid.load_p_kw)) / net.n_inj
    scale = torch.as_tensor(rng.uniform(0.3, MAX_SCALE.get(name, 1.5), size=(n, net.n_loads)))
    p_kw = torch.as_tensor(rng.uniform(-0.4, 0.6, size=(n, net.n_inj)) * per_node_kw)
    q_kvar = torch.as_tensor(rng.uniform(-0.15, 0.15, size=(n, net.n_inj)) * per_node_kw)
    return scale, p_kw, q_kvar


def current_error(grid, ref, got) -> tuple[float, str]:
    """Largest error of any branch's terminal currents relative to that branch's largest current
    (1 A floor), and the branch."""
    a, b = ref.branch_currents_a.detach(), got.branch_currents_a.detach().to(torch.complex128)
    worst, where = 0.0, ""
    for branch in grid.branches:
        s = ref.branch_slices[branch.name]
        size = a[..., s].abs().amax(-1).clamp_min(1.0)
        err = float(((a[..., s] - b[..., s]).abs().amax(-1) / size).max())
        if err > worst:
            worst, where = err, branch.name
    return worst, where


def check_agreement(grid, ref, got, label: str) -> None:
    assert bool(ref.converged.all()) and bool(got.converged.all()), label
    dv = float((ref.v_pu.abs() - got.v_pu.abs().double()).abs().max())
    assert dv <= V_TOL_PU, f"{label}: max |V| difference {dv:.2e} pu"
    di, where = current_error(grid, ref, got)
    assert di <= I_TOL_REL, f"{label}: current error {di:.2e} (relative) on {where}"
    s_ref = torch.complex(ref.source_power_kw, ref.source_power_kvar)
    s_got = torch.complex(got.source_power_kw.double(), got.source_power_kvar.double())
    ds = float(((s_ref - s_got).abs() / s_ref.abs()).max())
    assert ds <= S_TOL_REL, f"{label}: source power error {ds:.2e} (relative)"
    dl = float((ref.losses_kw - got.losses_kw.double()).abs().max())
    assert dl <= S_TOL_REL * float(s_ref.abs().max()), f"{label}: losses error {dl:.2e} kW"


@pytest.mark.parametrize("name,method", CASES, ids=[f"{n}-{m}" for n, m in CASES])
def test_float32_matches_float64(name, method):
    grid = _grid(name)
    ref_net = build_network(grid, dtype=torch.float64, precise=True, method=method)
    net = build_network(grid, dtype=torch.float32, method=method)
    scale, p_kw, q_kvar = _samples(grid, ref_net, name)
    ref = solve_power_flow(ref_net, scale, p_kw, q_kvar, options=REFERENCE)
    got = solve_power_flow(net, scale.float(), p_kw.float(), q_kvar.float(), options=FLOAT32)
    check_agreement(grid, ref, got, f"{name} {method}")


def test_plain_float32_currents_would_fail():
    """The check above can fail: currents formed from float32 voltages (the plain path) miss
    the tolerance on IEEE 123's switches and regulators by orders of magnitude."""
    grid = _grid("ieee123")
    ref_net = build_network(grid, dtype=torch.float64, precise=True)
    net = build_network(grid, dtype=torch.float32)
    scale, p_kw, q_kvar = _samples(grid, ref_net, "ieee123", n=2)
    ref = solve_power_flow(ref_net, scale, p_kw, q_kvar, options=REFERENCE)
    got = solve_power_flow(net, scale.float(), p_kw.float(), q_kvar.float(), options=FLOAT32)
    got._branch_currents = zbus.terminal_currents_a(net, got.v_pu.reshape(-1, got.v_pu.shape[-1]))
    err, _ = current_error(grid, ref, got)
    assert err > 100 * I_TOL_REL


@pytest.mark.parametrize("method", ["dense", "sparse"])
def test_float32_with_per_sample_taps(method):
    """Regulated evaluation: every sample at its own regulator taps (Woodbury tap bank), against
    float64 on the dense refined network; the sparse bank's float32 solve on the sparse path."""
    feeder = _feeder("ieee123")
    names = [rc.transformer for rc in feeder.regcontrols]
    base = feeder.regulator_taps()
    grid = GridAssembler(feeder).grid().with_load_model("constant_pq")
    nets = {}
    for dtype in (torch.float64, torch.float32):
        nets[dtype] = build_network(grid, dtype=dtype, precise=True,
                                    method="dense" if dtype == torch.float64 else method)
        taps_mod.build_tap_bank(nets[dtype], grid, regulator_tables(feeder, names), [base[n] for n in names])
    rng = np.random.default_rng(1)
    limits = np.array([position_limits(feeder, rc) for rc in feeder.regcontrols])
    taps = torch.as_tensor(rng.integers(np.maximum(limits[:, 0], -6), np.minimum(limits[:, 1], 6) + 1,
                                        size=(4, len(names))))
    scale, p_kw, q_kvar = _samples(grid, nets[torch.float64], "ieee123", seed=1)
    ref = solve_power_flow(nets[torch.float64], scale, p_kw, q_kvar, options=REFERENCE, taps=taps)
    got = solve_power_flow(nets[torch.float32], scale.float(), p_kw.float(), q_kvar.float(),
                           options=FLOAT32, taps=taps)
    check_agreement(grid, ref, got, f"ieee123 per-sample taps ({method})")


@pytest.mark.parametrize("name", ["ieee13", "ieee123"])
def test_float32_gradients_match_float64(name):
    """Implicit gradients of a loss on line currents, the source power and voltages w.r.t. the
    device injections: float32 within 1e-3 of float64 (relative to the largest entry)."""
    grid = _grid(name)
    rated = [b.name for b in grid.branches if b.kind in ("line", "switch")]
    grads = {}
    for dtype in (torch.float64, torch.float32):
        net = build_network(grid, dtype=dtype, precise=dtype == torch.float64)
        scale, p_kw, q_kvar = (t.to(dtype) for t in _samples(grid, net, name, n=3, seed=2))
        p_kw.requires_grad_(True)
        flow = solve_power_flow(net, scale, p_kw, q_kvar,
                                options=REFERENCE if dtype == torch.float64 else FLOAT32)
        currents = flow.branch_currents_a
        amps = torch.cat([currents[..., flow.branch_slices[b]].abs() for b in rated], -1)
        loss = (amps.pow(2).sum() / 1e4 + flow.source_power_kw.sum()
                + 1e3 * (flow.vm_pu - 1.0).pow(2).sum())
        grads[dtype] = torch.autograd.grad(loss, p_kw)[0].double()
    g64, g32 = grads[torch.float64], grads[torch.float32]
    rel = float((g64 - g32).abs().max() / g64.abs().max())
    assert rel <= 1e-3, f"{name}: float32 gradient off by {rel:.2e} (relative to the largest entry)"
