"""``ac3ph``: the exact three-phase AC power flow (Z-bus fixed point, implicit gradients).

Numerics live in :mod:`gridflex.network.powerflow`; this plugin binds them to a :class:`~gridflex.network.grid.Grid`
and a validated config. No cvxpy, no OpenDSS engine: it runs on a bare GPU machine.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal, Sequence

import numpy as np
import torch
from pydantic import Field, model_validator

from gridflex.plugins.contracts import NetworkSolver, StrictConfig
from gridflex.network.grid import Grid
from gridflex.plugins.hookspecs import hookimpl
from gridflex.network.powerflow import AdjointReport, PowerFlowResult, SolveOptions, build_network, solve_power_flow
from gridflex.network.powerflow.taps import RegulatorTable, build_tap_bank

#: (tol_pu, adjoint_tol) when the config leaves them None: float32 resolves about 1e-7 pu, so a
#: float64 tolerance would leave float32 samples unconverged
_DEFAULT_TOL = {torch.float64: (1e-8, 1e-8), torch.float32: (1e-6, 1e-5)}

#: ``method: auto`` takes the sparse LU on CPU above this many nodes (docs/benchmarks.md, issue
#: 19). On IEEE 8500 (8,531 nodes) the dense inverse costs ~4 minutes and ~6 GB of set-up against
#: ~0.5 s, and its batched snapshots are slower too; on EPRI ckt5 (3,437 nodes) the dense set-up
#: is a few seconds and its source power agrees with OpenDSS to 3e-7 relative, the sparse path's
#: to 3e-6 (the stiff source amplifies the LU's last digits there), so up to 5,000 nodes stay
#: dense. The shipped IEEE 13/34/123 (at most 278 nodes) are dense and bit-identical.
SPARSE_MIN_NODES = 5000
#: row chunk of the sparse path on CPU (its right-hand sides are [n, rows] complex buffers)
SPARSE_CHUNK_ROWS = 32


class AC3PhSolver(NetworkSolver):
    """Exact unbalanced three-phase AC power flow with implicit differentiation (Z-bus fixed point)."""

    name: ClassVar[str] = "ac3ph"
    supports_taps: ClassVar[bool] = True

    class Config(StrictConfig):
        tol_pu: float | None = Field(None, gt=0, description="convergence tolerance: max |v_k+1 - v_k| over injection nodes (pu); None: 1e-8 in float64, 1e-6 in float32 (what its precision can resolve)")
        max_iter: int = Field(100, ge=1, description="iteration cap per sample; samples beyond it are reported non-converged")
        anderson_m: int = Field(5, ge=0, le=20, description="Anderson acceleration memory (0 = plain Z-bus iteration)")
        anderson_start: int = Field(8, ge=1, description="plain iterations before Anderson starts (only slow samples pay for it)")
        vlimits_rule: bool = Field(False, description="OpenDSS Vminpu/Vmaxpu rule: loads outside their limits become impedances (a gradient kink)")
        adjoint_tol: float | None = Field(None, gt=0, description="adjoint convergence tolerance, relative to the upstream gradient's max; None: 1e-8 in float64, 1e-5 in float32")
        adjoint_max_iter: int = Field(200, ge=1, description="iteration cap of the adjoint fixed point")
        chunk_rows: int | None = Field(None, ge=1, description="solve in row chunks of this size; None = 2048 on CPU (cache-sized; 32 with the sparse method), unchunked on GPU")
        sync_free: bool = Field(False, description="run exactly max_iter forward and adjoint_max_iter adjoint iterations on every sample with the convergence flags kept on the device: no host synchronisation, so a GPU can record the solve as a CUDA graph (docs/network.md, Sync-free solves). Same results as the adaptive schedule, more work where samples converge early: pair it with a smaller max_iter, e.g. 30")
        method: Literal["auto", "dense", "sparse"] = Field("auto", description="Z-bus products: dense (the n x n inverse, fastest on small feeders and GPUs), sparse (one sparse LU of Y, triangular solves per iteration, CPU; for large feeders), auto: sparse on CPU above 5000 nodes, else dense")

        @model_validator(mode="before")
        @classmethod
        def _dtype_moved(cls, data: Any) -> Any:
            if isinstance(data, dict) and "dtype" in data:
                raise ValueError("the solver's precision is the scenario's top-level `dtype` "
                                 "(float64 or float32), not a solver parameter: move `dtype` there")
            return data

    def __init__(
        self,
        grid: Grid,
        config: Config | dict[str, Any] | None = None,
        *,
        injection_nodes: Sequence[int | str] | np.ndarray | None = None,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float64,
    ):
        super().__init__(grid, config, injection_nodes=injection_nodes, device=device, dtype=dtype)
        self.method = self._method()
        self.network = build_network(grid, injection_nodes, vlimits_rule=self.config.vlimits_rule,
                                     dtype=self.dtype, device=self.device, method=self.method)
        self._injection_nodes = injection_nodes
        self.options = SolveOptions(
            tol_pu=self.config.tol_pu or _DEFAULT_TOL[self.dtype][0], max_iter=self.config.max_iter, anderson_m=self.config.anderson_m,
            anderson_start=self.config.anderson_start,
            adjoint_tol=self.config.adjoint_tol or _DEFAULT_TOL[self.dtype][1], adjoint_max_iter=self.config.adjoint_max_iter,
            chunk_rows=self.config.chunk_rows or self._default_chunk_rows(),
            sync_free=self.config.sync_free,
        )
        self.adjoint_report = AdjointReport()

    def _method(self) -> str:
        """``dense`` or ``sparse`` from the config (auto: sparse on CPU above SPARSE_MIN_NODES)."""
        if self.config.method != "auto":
            return self.config.method
        return "sparse" if self.device.type == "cpu" and self.grid.n_nodes > SPARSE_MIN_NODES else "dense"

    def _default_chunk_rows(self) -> int | None:
        if self.device.type != "cpu":
            return None
        return SPARSE_CHUNK_ROWS if self.method == "sparse" else 2048

    # -------------------------------------------------------------------------- names
    @property
    def node_names(self) -> list[str]:
        return self.network.node_names

    @property
    def injection_node_names(self) -> list[str]:
        """Device injection nodes, the order of the last dim of ``p_kw``/``q_kvar``."""
        iter_nodes = self.network.iter_nodes[self.network.inj_pos].tolist()
        return [self.network.node_names[k] for k in iter_nodes]

    # -------------------------------------------------------------------------- solving
    def _tensor(self, x: Any) -> torch.Tensor | None:
        if x is None or isinstance(x, PowerFlowResult):
            return x
        t = torch.as_tensor(x, device=self.device)
        return t if t.is_complex() else t.to(self.dtype)

    def solve(
        self,
        load_scale: torch.Tensor | np.ndarray | None = None,
        p_kw: torch.Tensor | np.ndarray | None = None,
        q_kvar: torch.Tensor | np.ndarray | None = None,
        warm_start: torch.Tensor | PowerFlowResult | None = None,
        taps: torch.Tensor | np.ndarray | None = None,
    ) -> PowerFlowResult:
        """Batched power flow; differentiable w.r.t. ``load_scale``, ``p_kw`` and ``q_kvar``.

        Args:
            load_scale: [..., n_loads] multiplier of each load's nominal kW and kvar (None = 1).
            p_kw, q_kvar: [..., n_inj] device consumption at :attr:`injection_node_names`
                (positive = drawn), constant power, wye.
            warm_start: complex node voltages [..., n] in pu, or a previous result.
            taps: [..., n_reg] regulator tap positions per sample (order of
                :attr:`tap_regulators`), after :meth:`enable_taps`; None = the grid's own taps.
        """
        return solve_power_flow(
            self.network, self._tensor(load_scale), self._tensor(p_kw), self._tensor(q_kvar),
            self._tensor(warm_start), options=self.options, adjoint_report=self.adjoint_report,
            taps=None if taps is None else torch.as_tensor(taps, device=self.device),
        )

    def enable_taps(self, tables: Sequence[RegulatorTable], base_taps: Sequence[int]) -> None:
        """Let :meth:`solve` take per-sample regulator ``taps``: ``tables`` hold each regulator's
        primitive at every position, ``base_taps`` the positions of this solver's grid. Every
        tap state is then a rank-k update of this one network (Woodbury; see
        :mod:`gridflex.network.powerflow.taps`), so samples at different taps share one batched
        solve, on the dense and the sparse method alike."""
        build_tap_bank(self.network, self.grid, tables, base_taps)

    @property
    def tap_regulators(self) -> list[str]:
        """Regulators of a per-sample ``taps`` row (empty before :meth:`enable_taps`)."""
        bank = self.network.tap_bank
        return [] if bank is None else list(bank.names)

    def solve_snapshot(self, load_mult: float = 1.0, p_kw=None, q_kvar=None) -> dict[str, Any]:
        """One snapshot (every load at ``load_mult``) as plain JSON-ready values (for ``gridflex pf``)."""
        scale = torch.full((len(self.grid.load_elements),), float(load_mult), dtype=self.dtype, device=self.device)
        with torch.no_grad():
            result = self.solve(scale, p_kw, q_kvar)
        vm = result.vm_pu.cpu().numpy()
        currents = result.branch_currents_a.abs().cpu().numpy()
        return {
            "converged": bool(result.converged),
            "iterations": int(result.iterations),
            "residual_pu": float(result.residual_pu),
            "source_power_kw": float(result.source_power_kw),
            "source_power_kvar": float(result.source_power_kvar),
            "load_power_kw": float(result.load_power_kw),
            "load_power_kvar": float(result.load_power_kvar),
            "losses_kw": float(result.losses_kw),
            "losses_kvar": float(result.losses_kvar),
            "vm_pu": dict(zip(self.node_names, vm.tolist())),
            "branch_current_a": {name: currents[s].tolist() for name, s in result.branch_slices.items()},
        }


@hookimpl
def gridflex_register_solvers(register) -> None:
    register(AC3PhSolver)
