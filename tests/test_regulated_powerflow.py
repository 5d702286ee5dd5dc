"""Per-sample regulator taps in one batched solve (``gridflex.network.powerflow.taps.TapBank``, Woodbury on the regulators'
terminals) against the reference path: one network per tap state (``TapSolvers.grouped``).

The reference here is built with ``build_network(..., precise=True)``: the same refined Z and
no-load voltage as the bank, but a direct inverse per tap state. Against it the batched path
agrees to ~1e-11 pu. Against the default (plain-inverse) networks the agreement is only the
float64 floor of those networks themselves: a plain inverse of these stiff admittances (switches,
solid grounds, the Vsource: cond(Y) ~1e15) carries ~3e-9 pu of error in the no-load voltage, and
branch currents through stiff elements amplify any 1e-12 pu difference; that comparison is made
at its floor, and a long-double solve shows which side is the accurate one.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from gridflex.runs.feeder_cache import load_feeder
from gridflex.network.grid_build import GridAssembler
from gridflex.network.powerflow import SolveOptions, build_network, solve_power_flow
from gridflex.network.powerflow import precision, zbus
from gridflex.network.powerflow import taps as taps_mod
from gridflex.network.regulators import TapSolvers, position_limits, regulator_tables
from opendss_oracle import feeder_path

TIGHT = SolveOptions(tol_pu=1e-12, max_iter=200, adjoint_tol=1e-12, adjoint_max_iter=400)


class Case:
    """A feeder, its base network with a tap bank, and random samples at random tap states."""

    def __init__(self, name: str, samples: int, injection_nodes=None, seed: int = 0):
        self.feeder = load_feeder(feeder_path(name), taps="file")
        self.assembler = GridAssembler(self.feeder)
        self.names = [rc.transformer for rc in self.feeder.regcontrols]
        self.base = self.feeder.regulator_taps()
        self.grid = self.assembler.grid()
        self.injection_nodes = injection_nodes
        self.net = build_network(self.grid, injection_nodes)
        taps_mod.build_tap_bank(self.net, self.grid, regulator_tables(self.feeder, self.names),
                            [self.base[n] for n in self.names])
        rng = np.random.default_rng(seed)
        limits = np.array([position_limits(self.feeder, rc) for rc in self.feeder.regcontrols])
        self.taps = rng.integers(limits[:, 0], limits[:, 1] + 1, size=(samples, len(self.names)))
        self.taps[0] = [self.base[n] for n in self.names]  # one sample at the base taps (K = 0)
        self.load_scale = torch.as_tensor(rng.uniform(0.3, 1.5, size=(samples, self.net.n_loads)))
        self.p_kw = torch.as_tensor(rng.uniform(-20.0, 30.0, size=(samples, self.net.n_inj)))
        self.q_kvar = torch.as_tensor(rng.uniform(-10.0, 10.0, size=(samples, self.net.n_inj)))
        self._networks: dict = {}

    def network(self, state, precise: bool = True):
        key = (tuple(int(t) for t in state), precise)
        if key not in self._networks:
            grid = self.assembler.grid(dict(zip(self.names, key[0])))
            self._networks[key] = build_network(grid, self.injection_nodes, precise=precise)
        return self._networks[key]

    def grouped(self, precise: bool = True, options: SolveOptions = TIGHT) -> TapSolvers:
        """The reference path: TapSolvers with one network per tap state."""
        case = self

        class Solver:
            def __init__(self, state):
                self.net = case.network(state, precise)

            def solve(self, load_scale, p_kw, q_kvar, warm_start=None):
                return solve_power_flow(self.net, load_scale, p_kw, q_kvar, warm_start, options=options)

        def factory(taps: dict[str, int]):
            return Solver([taps[n] for n in self.names])

        solvers = TapSolvers(self.names, factory)
        solvers.grouped = True
        return solvers


def current_scale(net, flow) -> torch.Tensor:
    """sum_l |Yprim_jl| |V_l| per terminal-current entry: the size of the terms of I = Yprim V,
    the natural yardstick of a current through a stiff element."""
    v_t = torch.cat([flow.v_pu * net.v_base_v, flow.v_pu.new_zeros(flow.v_pu.shape[0], 1)], 1).abs()
    parts = [(g.yprim_si.abs().unsqueeze(0) * v_t[:, g.nodes].unsqueeze(2)).sum(-1).flatten(1)
             for g in net.branch_groups]
    return torch.cat(parts, 1)[:, net.branch_perm]


@pytest.fixture(scope="module", params=["ieee13", "ieee123"])
def case(request):
    return Case(request.param, samples=5)


def test_batched_taps_equal_per_state_solves(case):
    batched = solve_power_flow(case.net, case.load_scale, case.p_kw, case.q_kvar, options=TIGHT,
                               taps=torch.as_tensor(case.taps))
    grouped = case.grouped().solve(case.taps, case.load_scale, case.p_kw, case.q_kvar)
    assert bool(batched.converged.all()) and bool(grouped.converged.all())
    assert (batched.v_pu - grouped.v_pu).abs().max() <= 1e-9
    size = torch.complex(grouped.source_power_kw, grouped.source_power_kvar).abs()
    for name in ("source_power_kw", "source_power_kvar", "losses_kw", "losses_kvar"):
        a, b = getattr(batched, name), getattr(grouped, name)  # losses: source - drawn, so vs |S|
        assert ((a - b).abs() / size).max() <= 1e-9, name
    scale = current_scale(case.net, grouped)
    assert ((batched.branch_currents_a - grouped.branch_currents_a).abs() / scale.clamp_min(1e-30)).max() <= 1e-9
    # the regulators' own branches use each sample's primitive (the base one would be far off)
    cols = torch.cat([torch.arange(case.net.branch_slices[f"transformer.{n}"].start,
                                   case.net.branch_slices[f"transformer.{n}"].stop) for n in case.names])
    base_primitives = zbus.terminal_currents_a(case.net, batched.v_pu)
    moved = torch.as_tensor((case.taps != case.taps[0]).any(1))
    error = (base_primitives - grouped.branch_currents_a)[:, cols].abs() / scale[:, cols].clamp_min(1e-30)
    assert bool((error.amax(1)[moved] > 1e-4).all())


def test_batched_taps_against_plain_networks_and_long_double(case):
    """The default per-state networks agree to their own float64 floor, and the batched path
    is the more accurate of the two (checked on the network equations in long double)."""
    batched = solve_power_flow(case.net, case.load_scale, case.p_kw, case.q_kvar, options=TIGHT,
                               taps=torch.as_tensor(case.taps))
    plain = case.grouped(precise=False).solve(case.taps, case.load_scale, case.p_kw, case.q_kvar)
    assert (batched.v_pu - plain.v_pu).abs().max() <= 5e-8
    assert ((batched.source_power_kw - plain.source_power_kw).abs() / plain.source_power_kw.abs()).max() <= 1e-7

    row = int(np.argmax(np.abs(case.taps - case.taps[0]).sum(1)))  # a sample away from base
    grid = case.assembler.grid(dict(zip(case.names, map(int, case.taps[row]))))
    v_base = np.asarray(grid.v_base_ln_v)
    y = (grid.y_si * np.outer(v_base, v_base) / (grid.s_base_kva * 1e3)).astype(np.clongdouble)
    source = precision.SourceSplit(grid, y.astype(complex))

    def error(flow):
        """|v - Y^-1 (i_source + i(v_I))| with the solve in long double: zero at an exact solution."""
        net = case.net
        c = zbus.injection_coefficients(net, 1, case.load_scale[row : row + 1],
                                        torch.complex(case.p_kw[row : row + 1], case.q_kvar[row : row + 1])
                                        / (net.s_base_va / 1e3))
        v = flow.v_pu[row : row + 1]
        i = np.zeros(grid.n_nodes, dtype=np.clongdouble)
        i[net.iter_nodes.numpy()] = zbus.injection_currents(net, v[:, net.iter_nodes], c)[0].numpy()
        i[source.src] += (source.y_src.astype(np.clongdouble) @ source.e_hat[source.src].astype(np.clongdouble))
        exact = _solve_long_double(y, i)
        return float(np.abs(v[0].numpy() - exact.astype(complex)).max())

    assert error(batched) <= 1e-10
    assert error(batched) <= error(plain)


def _solve_long_double(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Gaussian elimination with partial pivoting in long double, one refinement step."""

    def solve(a, b):
        a, b = a.copy(), b.copy()
        n = len(b)
        for j in range(n):
            p = j + int(np.argmax(np.abs(a[j:, j])))
            a[[j, p]], b[[j, p]] = a[[p, j]], b[[p, j]]
            f = a[j + 1 :, j] / a[j, j]
            a[j + 1 :, j:] -= f[:, None] * a[j, j:][None, :]
            b[j + 1 :] -= f * b[j]
        x = np.zeros(n, dtype=a.dtype)
        for j in range(n - 1, -1, -1):
            x[j] = (b[j] - a[j, j + 1 :] @ x[j + 1 :]) / a[j, j]
        return x

    x = solve(a, b)
    return x + solve(a, b - a @ x)


def test_no_load_voltage_of_every_state_is_exact():
    """The bank's per-state no-load voltage against a long-double solve (IEEE 13)."""
    case = Case("ieee13", samples=3, seed=1)
    bank = case.net.tap_bank
    rows = bank.rows(case.taps)
    for s, state in enumerate(case.taps):
        grid = case.assembler.grid(dict(zip(case.names, map(int, state))))
        v_base = np.asarray(grid.v_base_ln_v)
        y = (grid.y_si * np.outer(v_base, v_base) / (grid.s_base_kva * 1e3)).astype(np.clongdouble)
        source = precision.SourceSplit(grid, y.astype(complex))
        i = np.zeros(grid.n_nodes, dtype=np.clongdouble)
        i[source.src] = source.y_src.astype(np.clongdouble) @ source.e_hat[source.src].astype(np.clongdouble)
        exact = _solve_long_double(y, i).astype(complex)
        assert np.abs(rows.w_all[s].numpy() - exact).max() <= 1e-11
    assert len(bank) == len({tuple(t) for t in case.taps.tolist()})
    assert bank.states() == {tuple(t) for t in case.taps.tolist()}


INJ13 = ["675.1", "611.3", "692.3", "634.1"]


def test_gradcheck_p_q_at_fixed_taps():
    case = Case("ieee13", samples=2, injection_nodes=INJ13, seed=2)
    taps = torch.as_tensor(case.taps)
    monitored = torch.tensor([case.grid.node_index(n) for n in ("675.1", "611.3", "634.1", "671.2")])
    reg = case.net.branch_slices[f"transformer.{case.names[0]}"]
    line = case.net.branch_slices["line.684611"]

    def outputs(p_kw, q_kvar):
        flow = solve_power_flow(case.net, case.load_scale, p_kw, q_kvar, options=TIGHT, taps=taps)
        currents = flow.branch_currents_a[:, [*range(reg.start, reg.stop), *range(line.start, line.stop)]]
        return flow.vm_pu[:, monitored], flow.source_power_kw / 1e3, currents.abs() / 100

    p = (case.p_kw * 3).clone().requires_grad_()
    q = (case.q_kvar * 3).clone().requires_grad_()
    # eps = 0.01 kW: the regulator's current is y (v1 - t v2) with y ~1e4 pu, so finite differences
    # of it carry (solver tolerance x y / eps) of noise; 0.01 keeps that below 1e-8
    assert torch.autograd.gradcheck(outputs, (p, q), eps=1e-2, atol=1e-7, rtol=1e-5)


def test_adjoint_equals_grouped_gradient(case):
    def loss(flow):
        return (flow.vm_pu.square().sum() + flow.source_power_kw.sum() / 1e3
                + flow.branch_currents_a.abs().sum() / 1e5)

    def grads(solve):
        p = case.p_kw.clone().requires_grad_()
        q = case.q_kvar.clone().requires_grad_()
        scale = case.load_scale.clone().requires_grad_()
        return torch.autograd.grad(loss(solve(scale, p, q)), (p, q, scale))

    batched = grads(lambda s, p, q: solve_power_flow(case.net, s, p, q, options=TIGHT,
                                                     taps=torch.as_tensor(case.taps)))
    solvers = case.grouped()
    grouped = grads(lambda s, p, q: solvers.solve(case.taps, s, p, q))
    for a, b in zip(batched, grouped):
        # 1e-8: both are fixed points solved to TIGHT; the load-scale gradient on IEEE 13 (max 8e-4)
        # differed by 9e-13 absolute (1.2e-9 relative) with numpy 2.4.6 / scipy 1.17.1 (2026-12-02)
        assert ((a - b).abs().max() / b.abs().max()) <= 1e-8


def test_float32_network_keeps_float32_accuracy():
    """The thin Woodbury correction runs in complex128 even on a float32 network: in float32 the
    large compensating currents would cost ~1e-3 pu on IEEE 123."""
    case = Case("ieee123", samples=4, seed=3)
    taps = torch.as_tensor(case.taps)
    exact = solve_power_flow(case.net, case.load_scale, case.p_kw, case.q_kvar, options=TIGHT, taps=taps)
    net32 = build_network(case.grid, dtype=torch.float32)
    taps_mod.build_tap_bank(net32, case.grid, regulator_tables(case.feeder, case.names),
                        [case.base[n] for n in case.names])
    p32 = case.p_kw.float().requires_grad_()
    flow = solve_power_flow(net32, case.load_scale.float(), p32, case.q_kvar.float(),
                            options=SolveOptions(tol_pu=1e-6), taps=taps)
    assert bool(flow.converged.all())
    assert (flow.v_pu.to(torch.complex128) - exact.v_pu).abs().max() <= 2e-6
    flow.vm_pu.sum().backward()
    assert bool(torch.isfinite(p32.grad).all())


def test_frozen_solves_untouched_by_a_tap_bank():
    """A tap bank changes nothing for solves without taps (same network, same numbers)."""
    case = Case("ieee13", samples=3)
    plain = build_network(case.grid)
    a = solve_power_flow(case.net, case.load_scale, case.p_kw, case.q_kvar)
    b = solve_power_flow(plain, case.load_scale, case.p_kw, case.q_kvar)
    assert torch.equal(a.v_pu, b.v_pu) and torch.equal(a.branch_currents_a, b.branch_currents_a)
    assert a.taps is None


# ------------------------------------------------------------------------------------------------
# The environment: regulated rollouts on the batched path against the grouped one
# ------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def world(tmp_path_factory):
    from conftest import world_from_text
    from test_env import SMALL

    _, _, reg, world = world_from_text(tmp_path_factory.mktemp("regulated"), SMALL)
    cls = reg.get("learner", "no_control")
    return world, cls(cls.Config(), world.env)


def test_regulated_rollout_same_as_grouped_path(world):
    world, learner = world
    env = world.env
    day = env.exogenous(world.data.split("train").get(np.array([10, 200, 3])))
    with torch.no_grad():
        reference = env.rollout(day, learner.act)  # frozen taps: the agents' outputs
    u = [t.u.detach() for t in reference.fleets]

    def run(grouped: bool):
        env.tap_solvers.grouped = grouped
        try:
            u_in = [x.clone().requires_grad_() for x in u]
            rollout = env.rollout(day, u_fixed=u_in, regulate=True)
            loss = rollout.flow.vm_pu.square().sum() + rollout.flow.source_power_kw.sum() / 1e3
            return rollout, torch.autograd.grad(loss, u_in)
        finally:
            env.tap_solvers.grouped = False

    batched, grads_batched = run(False)
    grouped, grads_grouped = run(True)
    assert env.tap_solvers.batched is not None
    assert (np.diff(batched.taps, axis=1) != 0).any(), "the tap controller never moved"
    np.testing.assert_array_equal(batched.taps, grouped.taps)
    # the solver's tolerance (1e-8 pu) and the plain per-state networks' float64 floor
    assert (batched.flow.v_pu - grouped.flow.v_pu).abs().max() <= 5e-8
    assert torch.allclose(batched.flow.source_power_kw, grouped.flow.source_power_kw, rtol=1e-7)
    scale = grouped.flow.branch_currents_a.abs().amax((0, 1))
    difference = (batched.flow.branch_currents_a - grouped.flow.branch_currents_a).abs()
    assert (difference / scale.clamp_min(1.0)).max() <= 1e-6
    for a, b in zip(grads_batched, grads_grouped):
        assert (a - b).abs().max() <= 1e-6 * b.abs().max()
    with torch.no_grad():
        loop = env.rollout(day, u_fixed=u, regulate=True)  # no grad: the control loop's own flows
    np.testing.assert_array_equal(loop.taps, batched.taps)
    assert (loop.flow.v_pu - batched.flow.v_pu).abs().max() <= 5e-8
