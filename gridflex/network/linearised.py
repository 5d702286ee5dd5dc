"""Linearised three-phase network: first-order model of the Z-bus power flow around an operating point.

Bernstein & Dall'Anese's fixed-point linearisation ("Linear power-flow models in multiphase
distribution networks", IEEE ISGT Europe 2017) applied to the exact model of
:mod:`gridflex.network.powerflow`: at a solved operating point ``theta0 = (load_scale0, p0, q0)`` the
iteration-node voltages satisfy ``x = G(x, theta)`` (real-stacked, ``G`` the Z-bus map with every
load model of the feeder), so by the implicit function theorem

    dx/dtheta = (I - G_x)^-1 G_theta                              (exact first-order expansion)

and every reported quantity is an affine function of ``theta`` around ``theta0``:

* complex node voltages ``v ~ v0 + dv/dtheta dtheta`` (pu, all ``n`` nodes);
* voltage magnitudes ``|V| ~ c + M p + K q + L load_scale`` (pu), the magnitude linearised as
  ``|v0| + Re(conj(v0) dv) / |v0|`` (and ``|v_a - v_b| / sqrt(3)`` for line-to-line monitors);
* branch terminal currents (A), linear in ``v``, hence affine in ``theta`` (so ``|I| <= I_max`` is
  a second-order cone in ``theta``);
* source power (kW, kvar) ``S ~ S0 + dS/dtheta dtheta``, whose gradient carries the first-order
  change of the losses.

Inputs are the same as :meth:`gridflex.network.powerflow.solve_power_flow`'s: ``load_scale [L]``
(multiplier of each load element), ``p_kw, q_kvar [n_inj]`` (device consumption, positive drawn, at
the network's injection nodes). The model is exact (to solver tolerance) at ``theta0`` and its
error is second order in ``|theta - theta0|``.

Pure numpy/torch, no cvxpy: safe on any import path.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from gridflex.network.powerflow import zbus
from gridflex.network.powerflow.result import solve_power_flow


@dataclass
class AffineModel:
    """``y ~ y0 + d_l (load_scale - l0) + d_p (p_kw - p0) + d_q (q_kvar - q0)`` for ``m`` outputs.

    ``y0 [m]``, ``d_l [m, L]``, ``d_p [m, n_inj]``, ``d_q [m, n_inj]`` (real or complex numpy).
    """

    y0: np.ndarray
    d_l: np.ndarray
    d_p: np.ndarray
    d_q: np.ndarray
    l0: np.ndarray
    p0: np.ndarray
    q0: np.ndarray

    def offset(self, load_scale: np.ndarray | None = None) -> np.ndarray:
        """The constant ``c`` of ``y ~ c + d_p p + d_q q`` at ``load_scale`` (``[..., L]``) -> ``[..., m]``."""
        c = self.y0 - self.d_p @ self.p0 - self.d_q @ self.q0
        if load_scale is None:
            return c - self.d_l @ self.l0
        return c + (np.asarray(load_scale) - self.l0) @ self.d_l.T

    def evaluate(self, load_scale: np.ndarray, p_kw: np.ndarray, q_kvar: np.ndarray) -> np.ndarray:
        """``y`` at batched inputs ``[..., L]``, ``[..., n_inj]`` -> ``[..., m]``."""
        return (self.offset(load_scale) + np.asarray(p_kw) @ self.d_p.T + np.asarray(q_kvar) @ self.d_q.T)


@dataclass
class LinearNetwork:
    """The linearisation of one :class:`~gridflex.network.powerflow.zbus.ZBusNetwork` at one point.

    ``v``: complex node voltages (pu) [n]; ``source``: complex source power (kVA) [1]. Use
    :meth:`magnitudes` and :meth:`currents` for monitored magnitudes and branch currents.
    """

    network: zbus.ZBusNetwork
    v: AffineModel  # complex, m = n nodes
    source: AffineModel  # complex kVA, m = 1
    converged: bool  # the AC solution at the point converged

    @property
    def n_inj(self) -> int:
        return self.network.n_inj

    @property
    def n_loads(self) -> int:
        return self.network.n_loads

    def magnitudes(self, node_a: np.ndarray, node_b: np.ndarray | None = None) -> AffineModel:
        """Linearised monitored magnitudes (pu): ``|v_a|`` where ``node_b < 0``, else
        ``|v_a - v_b| / sqrt(3)`` (ungrounded buses). ``node_a``/``node_b``: node indices [m]."""
        node_a = np.asarray(node_a, dtype=np.int64)
        node_b = -np.ones_like(node_a) if node_b is None else np.asarray(node_b, dtype=np.int64)
        ll = node_b >= 0
        scale = np.where(ll, 1.0 / math.sqrt(3.0), 1.0)

        def diff(a: np.ndarray) -> np.ndarray:  # [n, ...] -> [m, ...]
            out = a[node_a].copy()
            out[ll] -= a[node_b[ll]]
            return out * scale.reshape((-1,) + (1,) * (a.ndim - 1))

        u0 = diff(self.v.y0)
        unit = np.conj(u0) / np.abs(u0)  # d|u| = Re(conj(u0) du) / |u0|

        def grad(d: np.ndarray) -> np.ndarray:
            return (unit[:, None] * diff(d)).real

        m = self.v
        return AffineModel(np.abs(u0), grad(m.d_l), grad(m.d_p), grad(m.d_q), m.l0, m.p0, m.q0)

    def currents(self, columns: np.ndarray | None = None) -> AffineModel:
        """Branch terminal currents (A, complex) at ``columns`` of
        :attr:`PowerFlowResult.branch_currents_a` (default: all), exactly linear in ``v``."""
        net = self.network
        real = net.dtype
        cplx = torch.complex128 if real == torch.float64 else torch.complex64

        def apply(a: np.ndarray) -> np.ndarray:  # a: complex [n, k] -> [T, k]
            rows = torch.as_tensor(np.ascontiguousarray(a.T), dtype=cplx, device=net.device)
            out = zbus.terminal_currents_a(net, rows).T.cpu().numpy()
            return out if columns is None else out[np.asarray(columns)]

        m = self.v
        return AffineModel(apply(m.y0[:, None])[:, 0], apply(m.d_l), apply(m.d_p), apply(m.d_q),
                           m.l0, m.p0, m.q0)


def _point(net: zbus.ZBusNetwork, load_scale, p_kw, q_kvar) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    def vec(x, size, default):
        if x is None:
            return np.full(size, default, dtype=float)
        x = np.asarray(x.detach().cpu() if isinstance(x, torch.Tensor) else x, dtype=float)
        return np.broadcast_to(x, (size,)).copy()

    return vec(load_scale, net.n_loads, 1.0), vec(p_kw, net.n_inj, 0.0), vec(q_kvar, net.n_inj, 0.0)


def linearise(
    net: zbus.ZBusNetwork,
    load_scale: np.ndarray | torch.Tensor | float | None = None,
    p_kw: np.ndarray | torch.Tensor | None = None,
    q_kvar: np.ndarray | torch.Tensor | None = None,
    *,
    tol_pu: float = 1e-11,
) -> LinearNetwork:
    """Solve the AC power flow at one point and linearise around it (module docstring).

    Args:
        load_scale: [L] multiplier of each load's nominal kW/kvar (default 1: the base case; 0:
            no load).
        p_kw, q_kvar: [n_inj] device consumption at the injection nodes (default 0).
    """
    from gridflex.network.powerflow.implicit import SolveOptions

    l0, p0, q0 = _point(net, load_scale, p_kw, q_kvar)
    real, device = torch.float64, net.device
    if net.dtype != torch.float64:
        raise ValueError("linearise needs a float64 network")
    t = lambda a: torch.as_tensor(a, dtype=real, device=device)  # noqa: E731
    s_base_kva = net.s_base_va / 1e3
    with torch.no_grad():
        flow = solve_power_flow(net, t(l0)[None], t(p0)[None], t(q0)[None],
                                options=SolveOptions(tol_pu=tol_pu, max_iter=500))
    v_all0 = flow.v_pu[0]
    x0 = torch.cat([v_all0[net.iter_nodes].real, v_all0[net.iter_nodes].imag])
    n_i, n_l, n_j = net.n_iter, net.n_loads, net.n_inj

    def split(z: torch.Tensor):
        x, l, p, q = torch.split(z, [2 * n_i, n_l, n_j, n_j])
        v = torch.complex(x[:n_i], x[n_i:])[None]
        c = zbus.injection_coefficients(net, 1, l[None], torch.complex(p, q)[None] / s_base_kva)
        return v, c

    def g_map(z: torch.Tensor) -> torch.Tensor:
        v, c = split(z)
        g = zbus.fixed_point_map(net, v, c)[0]
        return torch.cat([g.real, g.imag])

    def outputs(z: torch.Tensor) -> torch.Tensor:
        v, c = split(z)
        v_all = zbus.node_voltages(net, v, c)
        s = zbus.source_power_pu(net, v_all) * s_base_kva
        return torch.cat([v_all[0].real, v_all[0].imag, s.real, s.imag])

    z0 = torch.cat([x0, t(l0), t(p0), t(q0)])
    jac_g = torch.autograd.functional.jacobian(g_map, z0, vectorize=True)  # [2 n_I, 2 n_I + L + 2 n_inj]
    g_x, g_theta = jac_g[:, : 2 * n_i], jac_g[:, 2 * n_i :]
    dx = torch.linalg.solve(torch.eye(2 * n_i, dtype=real, device=device) - g_x, g_theta)
    jac_h = torch.autograd.functional.jacobian(outputs, z0, vectorize=True)
    d_out = (jac_h[:, : 2 * n_i] @ dx + jac_h[:, 2 * n_i :]).cpu().numpy()
    y0 = outputs(z0).detach().cpu().numpy()
    n = len(net.node_names)
    v0 = y0[:n] + 1j * y0[n : 2 * n]
    dv = d_out[:n] + 1j * d_out[n : 2 * n]
    s0 = np.array([y0[2 * n] + 1j * y0[2 * n + 1]])
    ds = (d_out[2 * n] + 1j * d_out[2 * n + 1])[None]

    def model(y, d):
        return AffineModel(y, d[:, :n_l], d[:, n_l : n_l + n_j], d[:, n_l + n_j :], l0, p0, q0)

    return LinearNetwork(net, model(v0, dv), model(s0, ds), bool(flow.converged.all()))
