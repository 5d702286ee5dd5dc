"""``linear3ph``: the linearised three-phase network (docs/design.md §2) behind the ``ac3ph`` interface.

Numerics in :mod:`gridflex.network.linearised`. The model is linearised once, at construction, around the
no-load or base-case AC solution (``point``), or later around any operating point
(:meth:`Linear3PhSolver.relinearise`). :meth:`solve` evaluates it batched and differentiably:

* ``v_pu``: the linearised magnitude ``|V| ~ c + M p + K q + L load_scale`` at the angle of the
  linearised phasor ``v0 + dv`` (so ``result.vm_pu`` *is* the linear magnitude model and every
  metric works unchanged);
* ``branch_currents_a``: ``Yprim @ v_pu`` per branch, as for ``ac3ph``;
* ``source_power_kw/kvar``: first-order model (includes the first-order change of the losses);
  ``load_power``: constant-power loads, ``sum(load_scale * nominal)``; ``losses = source - load -
  device``;
* ``converged`` all True, ``iterations`` 0, ``residual_pu`` 0.

No cvxpy: safe on the GPU machine's import path.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal, Sequence

import numpy as np
import torch
from pydantic import Field

from gridflex.plugins.contracts import NetworkSolver, StrictConfig
from gridflex.network.grid import Grid
from gridflex.plugins.hookspecs import hookimpl
from gridflex.network.linearised import LinearNetwork, linearise
from gridflex.network.powerflow import PowerFlowResult, build_network


class Linear3PhSolver(NetworkSolver):
    """Linearised unbalanced three-phase power flow (fixed-point/first-order model around a point)."""

    name: ClassVar[str] = "linear3ph"

    class Config(StrictConfig):
        point: Literal["base", "no_load"] = Field(
            "base", description="linearisation point: the base case (every load at point_load_mult) or no load")
        point_load_mult: float = Field(
            1.0, ge=0, description="load multiplier of the base-case linearisation point (-)")

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
        # linearise on the CPU in float64 (one small dense solve), evaluate on ``device``
        self.network = build_network(grid, injection_nodes, dtype=torch.float64, device="cpu")
        # branch currents (Yprim @ V) are evaluated on ``device`` in the run's precision
        self._eval_network = (self.network if self.device.type == "cpu" and dtype == torch.float64 else
                              build_network(grid, injection_nodes, dtype=dtype, device=self.device))
        mult = 0.0 if self.config.point == "no_load" else self.config.point_load_mult
        self.relinearise(np.full(self.network.n_loads, mult))
        nominal_kw = np.zeros(len(grid.load_elements))
        nominal_kvar = np.zeros(len(grid.load_elements))
        np.add.at(nominal_kw, grid.load_index, grid.load_p_kw)
        np.add.at(nominal_kvar, grid.load_index, grid.load_q_kvar)
        self._nominal_load = torch.as_tensor(np.stack([nominal_kw, nominal_kvar], 1), dtype=self.dtype,
                                             device=self.device)  # [L, 2]

    # -------------------------------------------------------------------------- names
    @property
    def node_names(self) -> list[str]:
        return self.network.node_names

    @property
    def injection_node_names(self) -> list[str]:
        iter_nodes = self.network.iter_nodes[self.network.inj_pos].tolist()
        return [self.network.node_names[k] for k in iter_nodes]

    # -------------------------------------------------------------------------- model
    def relinearise(self, load_scale=None, p_kw=None, q_kvar=None) -> LinearNetwork:
        """Re-linearise around the AC solution at ``(load_scale [L], p_kw, q_kvar [n_inj])``."""
        self.linear = linearise(self.network, load_scale, p_kw, q_kvar)
        n = len(self.network.node_names)
        mag = self.linear.magnitudes(np.arange(n))
        complex_dtype = torch.complex128 if self.dtype == torch.float64 else torch.complex64

        def t(a: np.ndarray) -> torch.Tensor:  # the model's terms in the run's precision
            x = torch.as_tensor(np.ascontiguousarray(a), device=self.device)
            return x.to(complex_dtype if x.is_complex() else self.dtype)

        v, s = self.linear.v, self.linear.source
        self._v = [t(v.offset()), t(v.d_l.T), t(v.d_p.T), t(v.d_q.T)]  # complex
        self._vm = [t(mag.offset()), t(mag.d_l.T), t(mag.d_p.T), t(mag.d_q.T)]
        self._s = [t(s.offset()), t(s.d_l.T), t(s.d_p.T), t(s.d_q.T)]
        return self.linear

    @staticmethod
    def _affine(parts, l, p, q):
        c, d_l, d_p, d_q = parts
        dtype = c.dtype
        return c + l.to(dtype) @ d_l + p.to(dtype) @ d_p + q.to(dtype) @ d_q

    def _tensor(self, x, size: int, default: float) -> torch.Tensor:
        if x is None:
            return torch.full((size,), default, dtype=self.dtype, device=self.device)
        return torch.as_tensor(x, device=self.device).to(self.dtype)

    def solve(self, load_scale=None, p_kw=None, q_kvar=None, warm_start=None) -> PowerFlowResult:
        """Batched linear power flow; differentiable w.r.t. ``load_scale``, ``p_kw`` and ``q_kvar``.

        Same arguments and result type as :meth:`AC3PhSolver.solve` (``warm_start`` is ignored).
        """
        net = self.network
        l = self._tensor(load_scale, net.n_loads, 1.0)
        p = self._tensor(p_kw, net.n_inj, 0.0)
        q = self._tensor(q_kvar, net.n_inj, 0.0)
        shape = torch.broadcast_shapes(l.shape[:-1], p.shape[:-1], q.shape[:-1])
        l, p, q = (x.expand(*shape, x.shape[-1]) for x in (l, p, q))
        phasor = self._affine(self._v, l, p, q)
        vm = self._affine(self._vm, l, p, q)
        v_pu = torch.polar(vm, torch.angle(phasor))
        s = self._affine(self._s, l, p, q)[..., 0]
        load = l @ self._nominal_load
        device_kw, device_kvar = p.sum(-1), q.sum(-1)
        zeros = torch.zeros(shape, dtype=self.dtype, device=self.device)
        return PowerFlowResult(
            v_pu=v_pu,
            source_power_kw=s.real, source_power_kvar=s.imag,
            load_power_kw=load[..., 0], load_power_kvar=load[..., 1],
            device_power_kw=device_kw, device_power_kvar=device_kvar,
            losses_kw=s.real - load[..., 0] - device_kw, losses_kvar=s.imag - load[..., 1] - device_kvar,
            converged=torch.ones(shape, dtype=torch.bool, device=self.device),
            iterations=torch.zeros(shape, dtype=torch.long, device=self.device),
            residual_pu=zeros,
            node_names=net.node_names,
            v_base_v=self._eval_network.v_base_v,
            network=self._eval_network,
        )


@hookimpl
def gridflex_register_solvers(register) -> None:
    register(Linear3PhSolver)
