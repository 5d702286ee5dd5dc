"""The network-solver contract suite: :class:`SolverContract`.

Subclass it in a test module, name the solver class, its ``params`` and how closely it must agree
with the exact ``ac3ph`` solver on the shipped IEEE 13 feeder::

    from gridflex.testing import SolverContract

    class TestMySolver(SolverContract):
        solver_class = MySolver
        config = {}
        v_tolerance_pu = 1e-6          # max |V| difference from ac3ph (pu)
        source_power_rtol = 1e-5       # relative source-power difference from ac3ph

Solvers are constructed in one place only, :func:`build_solver`; the checks use nothing but the
public ``solve(load_scale, p_kw, q_kvar) -> PowerFlowResult`` call, the ``node_names`` and
``injection_node_names`` properties and the result's documented fields.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any, ClassVar

import pytest
import torch

from gridflex.plugins.contracts import NetworkSolver


def build_solver(solver_class: type, grid, config: Any = None, *, injection_nodes=None,
                 device: str | torch.device = "cpu", dtype: torch.dtype = torch.float64):
    """Construct ``solver_class`` on ``grid`` the way gridflex does: the one place the suites
    build a solver (adapt here when the constructor contract changes).

    :param grid: a :class:`~gridflex.network.grid.Grid` (e.g. :func:`shipped_grid`).
    :param config: the solver's ``Config`` or a dict of its params (None: defaults).
    :param injection_nodes: node indices or ``"bus.phase"`` names of the device injections (the
        last dim of ``p_kw``/``q_kvar``); None: the solver's default (every load node).
    :param device: torch device; ``dtype``: real precision, the scenario's ``dtype``.
    :return: the solver instance.
    """
    config = solver_class.Config.model_validate(dict(config or {})) if not isinstance(
        config, solver_class.Config) else config
    # the NetworkSolver contract: cls(grid, config, *, injection_nodes, device, dtype)
    return solver_class(grid, config, injection_nodes=injection_nodes, device=device, dtype=dtype)


@functools.lru_cache(maxsize=4)
def shipped_grid(feeder: str = "ieee13", *, taps: str = "file", load_model: str = "constant_pq"):
    """The :class:`~gridflex.network.grid.Grid` of a shipped feeder (``ieee13``, ``ieee123``, ...),
    read from its committed cache (no OpenDSS engine needed); cached per process."""
    from gridflex.network.grid_build import build_grid
    from gridflex.runs.feeder_cache import load_feeder
    from gridflex.scenario.loading import resolve_feeder_file

    path = resolve_feeder_file(feeder, base_dir=Path.cwd())  # a shipped name, or a path from here
    return build_grid(load_feeder(path, taps=taps)).with_load_model(load_model)


def reference_solver_class() -> type:
    """The exact ``ac3ph`` solver class, looked up through the plugin registry."""
    from gridflex.plugins.registry import load_registry

    return load_registry()[1].get("solver", "ac3ph")


class SolverContract:
    """Contract tests for a :class:`~gridflex.plugins.contracts.NetworkSolver` subclass.

    Set :attr:`solver_class`, :attr:`config`, :attr:`v_tolerance_pu` and
    :attr:`source_power_rtol`; optionally :attr:`feeder`, :attr:`batch` and the gradient check's
    :attr:`fd_step_kw` / :attr:`gradient_rtol`.
    """

    solver_class: ClassVar[type]
    config: ClassVar[dict[str, Any]] = {}
    #: largest allowed difference of any node voltage magnitude from ``ac3ph`` (pu)
    v_tolerance_pu: ClassVar[float | None] = None
    #: largest allowed relative difference of the source active power from ``ac3ph`` (-)
    source_power_rtol: ClassVar[float | None] = None
    feeder: ClassVar[str] = "ieee13"
    batch: ClassVar[int] = 4
    #: central finite-difference step of the directional-derivative check (kW and kvar)
    fd_step_kw: ClassVar[float] = 1.0
    #: allowed relative error of the analytic directional derivative against the finite difference
    gradient_rtol: ClassVar[float] = 1e-3
    seed: ClassVar[int] = 0

    # ------------------------------------------------------------------ helpers
    def make_solver(self, solver_class: type | None = None, config: Any = None):
        return build_solver(solver_class or self.solver_class, shipped_grid(self.feeder),
                            self.config if config is None else config)

    def make_batch(self, solver, leading: tuple[int, ...] | None = None, seed: int | None = None):
        """``load_scale [..., n_loads]`` in ``[0.3, 1.2]``, ``p_kw`` in ``[-5, 5]`` kW and ``q_kvar``
        in ``[-2, 2]`` kvar ``[..., n_inj]`` (float64)."""
        leading = (self.batch,) if leading is None else leading
        gen = torch.Generator().manual_seed(self.seed if seed is None else seed)
        n_loads, n_inj = len(shipped_grid(self.feeder).load_elements), len(solver.injection_node_names)
        kw = dict(generator=gen, dtype=torch.float64)
        load_scale = 0.3 + 0.9 * torch.rand(*leading, n_loads, **kw)
        p_kw = -5.0 + 10.0 * torch.rand(*leading, n_inj, **kw)
        q_kvar = -2.0 + 4.0 * torch.rand(*leading, n_inj, **kw)
        return load_scale, p_kw, q_kvar

    @pytest.fixture
    def solver(self):
        return self.make_solver()

    # ------------------------------------------------------------------ tests
    def test_class_declarations(self, solver):
        """Subclasses ``NetworkSolver``; ``name``, ``Config``; names of nodes and injections."""
        cls = self.solver_class
        assert issubclass(cls, NetworkSolver), f"{cls.__name__} must subclass gridflex.plugins.contracts.NetworkSolver"
        assert isinstance(cls.name, str) and cls.name and cls.kind == "solver"
        grid = shipped_grid(self.feeder)
        assert list(solver.node_names) == list(grid.node_names), "node_names must be the grid's node order"
        assert len(solver.injection_node_names) > 0
        assert set(solver.injection_node_names) <= set(grid.node_names)

    def test_result_type_and_shapes(self, solver):
        """``solve`` returns a ``PowerFlowResult`` over the broadcast batch (``[B]`` and
        ``[2, 3]`` leading dims): complex ``v_pu [..., n]``, real powers ``[...]``, bool
        ``converged``, finite values, complex branch currents ``[..., terminals]``."""
        from gridflex.network.powerflow import PowerFlowResult

        n = len(solver.node_names)
        for leading in ((self.batch,), (2, 3)):
            load_scale, p_kw, q_kvar = self.make_batch(solver, leading)
            with torch.no_grad():
                result = solver.solve(load_scale, p_kw, q_kvar)
            assert isinstance(result, PowerFlowResult), f"solve returned {type(result).__name__}"
            assert result.v_pu.is_complex() and tuple(result.v_pu.shape) == (*leading, n)
            assert tuple(result.vm_pu.shape) == (*leading, n) and not result.vm_pu.is_complex()
            for field in ("source_power_kw", "source_power_kvar", "load_power_kw", "load_power_kvar",
                          "device_power_kw", "device_power_kvar", "losses_kw", "losses_kvar", "residual_pu"):
                value = getattr(result, field)
                assert tuple(value.shape) == leading, f"{field}: shape {tuple(value.shape)}, expected {leading}"
                assert torch.isfinite(value).all(), f"{field}: non-finite values"
            assert result.converged.dtype == torch.bool and tuple(result.converged.shape) == leading
            assert tuple(result.iterations.shape) == leading
            assert list(result.node_names) == list(solver.node_names)
            currents = result.branch_currents_a
            assert currents.is_complex() and currents.shape[:-1] == leading and torch.isfinite(currents).all()
            assert torch.isfinite(result.v_pu).all()

    def test_converges_with_plausible_voltages(self, solver):
        """Every sample of a load-scale batch in ``[0.3, 1.2]`` converges, with ``|V|`` in
        ``(0.8, 1.2)`` pu at every node."""
        with torch.no_grad():
            result = solver.solve(*self.make_batch(solver))
        failed = int((~result.converged).sum())
        assert failed == 0, f"{failed} of {self.batch} samples did not converge"
        v_min, v_max = float(result.vm_pu.min()), float(result.vm_pu.max())
        assert 0.8 < v_min and v_max < 1.2, f"|V| in [{v_min:.3f}, {v_max:.3f}] pu"

    def test_power_accounting(self, solver):
        """``device_power = sum(p_kw)`` and ``losses = source - load - device`` (kW and kvar)."""
        load_scale, p_kw, q_kvar = self.make_batch(solver)
        with torch.no_grad():
            r = solver.solve(load_scale, p_kw, q_kvar)
        assert torch.allclose(r.device_power_kw, p_kw.sum(-1).to(r.device_power_kw.dtype), atol=1e-6)
        assert torch.allclose(r.device_power_kvar, q_kvar.sum(-1).to(r.device_power_kvar.dtype), atol=1e-6)
        assert torch.allclose(r.losses_kw, r.source_power_kw - r.load_power_kw - r.device_power_kw, atol=1e-6)
        assert torch.allclose(r.losses_kvar, r.source_power_kvar - r.load_power_kvar - r.device_power_kvar, atol=1e-6)

    def test_agrees_with_ac3ph(self, solver):
        """Node voltages within :attr:`v_tolerance_pu` and source power within
        :attr:`source_power_rtol` of the exact ``ac3ph`` (tolerance 1e-10 pu) on the same batch."""
        assert self.v_tolerance_pu is not None and self.source_power_rtol is not None, (
            f"declare v_tolerance_pu (pu) and source_power_rtol (-) in {type(self).__name__}: how "
            "closely this solver must agree with ac3ph on the shipped feeder")
        exact = build_solver(reference_solver_class(), shipped_grid(self.feeder), {"tol_pu": 1e-10},
                             injection_nodes=solver.injection_node_names)
        batch = self.make_batch(solver)
        with torch.no_grad():
            got, want = solver.solve(*batch), exact.solve(*batch)
        assert bool(want.converged.all())
        dv = float((got.vm_pu.to(torch.float64) - want.vm_pu).abs().max())
        assert dv <= self.v_tolerance_pu, f"max |V| difference from ac3ph {dv:.3g} pu > {self.v_tolerance_pu:g}"
        rel = float(((got.source_power_kw.to(torch.float64) - want.source_power_kw).abs()
                     / want.source_power_kw.abs().clamp(min=1.0)).max())
        assert rel <= self.source_power_rtol, f"source power differs from ac3ph by {rel:.3g} (relative)"

    def test_batch_equals_one_by_one(self, solver):
        """A sample solved in a batch equals the same sample solved alone (no coupling)."""
        load_scale, p_kw, q_kvar = self.make_batch(solver)
        with torch.no_grad():
            together = solver.solve(load_scale, p_kw, q_kvar).vm_pu
            for b in range(self.batch):
                alone = solver.solve(load_scale[b], p_kw[b], q_kvar[b]).vm_pu
                assert torch.allclose(together[b], alone, atol=1e-7), f"sample {b} depends on the others"

    def test_inputs_not_mutated(self, solver):
        """``solve`` leaves its input tensors unchanged."""
        batch = self.make_batch(solver)
        copies = [x.clone() for x in batch]
        with torch.no_grad():
            solver.solve(*batch)
        assert all(torch.equal(a, b) for a, b in zip(batch, copies)), "solve changed an input in place"

    def test_differentiable_in_p_kw(self, solver):
        """The gradient of a smooth function of ``|V|`` and the source power w.r.t. ``p_kw`` and
        ``q_kvar`` is finite, non-zero, and matches a central finite difference along a random
        direction within :attr:`gradient_rtol`."""
        load_scale, p_kw, q_kvar = self.make_batch(solver, (2,))
        gen = torch.Generator().manual_seed(11)
        weights = torch.rand(len(solver.node_names), generator=gen, dtype=torch.float64)

        def objective(p, q):
            r = solver.solve(load_scale, p, q)
            return (r.vm_pu.to(torch.float64) * weights).sum() + 1e-3 * r.source_power_kw.to(torch.float64).sum()

        p = p_kw.clone().requires_grad_(True)
        q = q_kvar.clone().requires_grad_(True)
        g_p, g_q = torch.autograd.grad(objective(p, q), (p, q))
        assert torch.isfinite(g_p).all() and torch.isfinite(g_q).all(), "non-finite gradient"
        assert float(g_p.abs().max()) > 0, "the gradient w.r.t. p_kw is zero everywhere"
        dp = torch.randn(p_kw.shape, generator=gen, dtype=torch.float64)
        dq = torch.randn(q_kvar.shape, generator=gen, dtype=torch.float64)
        h = self.fd_step_kw
        with torch.no_grad():
            fd = (objective(p_kw + h * dp, q_kvar + h * dq) - objective(p_kw - h * dp, q_kvar - h * dq)) / (2 * h)
        analytic = (g_p * dp).sum() + (g_q * dq).sum()
        err = float((analytic - fd).abs() / fd.abs().clamp(min=1e-12))
        assert err <= self.gradient_rtol, (f"directional derivative {float(analytic):.6g} vs finite "
                                           f"difference {float(fd):.6g} (relative error {err:.3g})")
