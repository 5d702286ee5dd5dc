"""Differentiable projection onto the linearised network's feasible set (cvxpylayers, docs/design.md §2c).

For one operating sample (one day-step) with uncontrolled load ``load_scale [L]`` and joint nodal
injections ``x = (p_kw, q_kvar) [n_inj]`` (device consumption, positive drawn; PV included), the
layer solves the DPP program

    y*(x) = argmin_y  ||(y - x) / s||^2  +  w (sum sigma_V + sum sigma_I)
            s.t.  v_lo - sigma_V <= c_V(load_scale) + M y_p + K y_q <= v_hi + sigma_V
                  || c_I,r(load_scale) + A_r y ||_2 <= 1 + sigma_I,r     (each rated conductor r,
                                                                           currents in ratings)
                  sigma >= 0

on the linearised network of :mod:`gridflex.network.linearised` (``s = scale_kw`` makes the distance
unit-free). Without slack (``w -> inf``) ``y*`` is the Euclidean projection onto the feasible
polytope-and-cones; the slacks keep it defined where no injection is feasible (e.g. a voltage
held out of band by the uncontrolled load alone), where ``y*`` moves as far as it pays at price
``w`` per pu or per unit overload.

:func:`FeasibilityLayer.squared_distance` returns ``||(y* - x) / s||^2`` ``[...]``: zero for
feasible ``x``, smooth almost everywhere, and differentiable (through the cvxpylayers KKT
adjoint) in ``x`` and ``load_scale``: a learner can use it as its network term instead of the AC
residuals (the linearised network trains; the AC solver still judges). Batched over any leading
dims (days x steps).

cvxpy and cvxpylayers are imported when a layer is built, never at module import.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from gridflex.network.linearised import LinearNetwork


@dataclass
class Projection:
    """Output of :meth:`FeasibilityLayer.project` (leading dims ``[...]`` of the input)."""

    p_kw: torch.Tensor  # [..., n_inj] projected consumption
    q_kvar: torch.Tensor  # [..., n_inj]
    v_slack_pu: torch.Tensor  # [..., m] voltage slack left at the projection
    i_slack: torch.Tensor  # [..., r] line slack (units of the rating)
    distance_sq: torch.Tensor  # [...] ||(y - x) / scale_kw||^2


class FeasibilityLayer:
    """cvxpylayers projection of joint nodal injections onto the linearised feasible set.

    Args:
        linear: the linearised network (its injection nodes are the layer's ``n_inj``).
        monitor_a, monitor_b: monitored voltage nodes (``b = -1``: line-to-ground), see
            :class:`gridflex.network.constraints.VoltageMonitor`.
        v_limits_pu: ``(v_lo, v_hi)``, e.g. the training limits ``v_limits_train_pu``.
        current_columns, rating_a: rated conductors (columns of the branch-current layout) and
            their ratings (A); empty to ignore lines (:class:`gridflex.network.constraints.CurrentMonitor`).
        scale_kw: injection scale of the distance (kW; kvar alike).
        slack_weight: price ``w`` of one pu of voltage slack or one rating of overload, in units
            of the scaled squared distance.
        solver_args: extra solver settings (e.g. Clarabel's ``tol_gap_abs``, ``tol_gap_rel``,
            ``tol_feas``, ``tol_ktratio``). The KKT adjoint is taken at the solver's solution: with
            several limits active at the projection, Clarabel's default tolerances (1e-8) left it
            a few % off finite differences on IEEE 13; 1e-10 brought it to ~1e-4.
    """

    def __init__(self, linear: LinearNetwork, monitor_a, monitor_b=None, v_limits_pu=(0.95, 1.05), *,
                 current_columns=(), rating_a=(), scale_kw: float = 10.0, slack_weight: float = 1e3,
                 solve_method: str = "Clarabel", solver_args: dict | None = None):
        import cvxpy as cp
        from cvxpylayers.torch import CvxpyLayer

        self.linear, self.scale_kw = linear, float(scale_kw)
        self.v_model = linear.magnitudes(np.asarray(monitor_a), None if monitor_b is None else np.asarray(monitor_b))
        self.rating_a = np.asarray(rating_a, dtype=float)
        self.i_model = linear.currents(np.asarray(current_columns, dtype=np.int64)) if self.rating_a.size else None
        n, m, r = linear.n_inj, len(self.v_model.y0), self.rating_a.size
        s = self.scale_kw
        x_p, x_q = cp.Parameter(n, name="x_p"), cp.Parameter(n, name="x_q")
        c_v = cp.Parameter(m, name="c_v")
        y_p, y_q = cp.Variable(n, name="y_p"), cp.Variable(n, name="y_q")
        sigma_v = cp.Variable(m, nonneg=True, name="sigma_v")
        vm = c_v + (s * self.v_model.d_p) @ y_p + (s * self.v_model.d_q) @ y_q
        constraints = [vm >= v_limits_pu[0] - sigma_v, vm <= v_limits_pu[1] + sigma_v]
        objective = cp.sum_squares(y_p - x_p) + cp.sum_squares(y_q - x_q) + slack_weight * cp.sum(sigma_v)
        params, variables = [x_p, x_q, c_v], [y_p, y_q, sigma_v]
        if r:
            c_re, c_im = cp.Parameter(r, name="c_i_re"), cp.Parameter(r, name="c_i_im")
            sigma_i = cp.Variable(r, nonneg=True, name="sigma_i")
            per = s / self.rating_a[:, None]
            i_re = c_re + (per * self.i_model.d_p.real) @ y_p + (per * self.i_model.d_q.real) @ y_q
            i_im = c_im + (per * self.i_model.d_p.imag) @ y_p + (per * self.i_model.d_q.imag) @ y_q
            constraints.append(cp.SOC(1 + sigma_i, cp.vstack([i_re, i_im]), axis=0))
            objective = objective + slack_weight * cp.sum(sigma_i)
            params += [c_re, c_im]
            variables.append(sigma_i)
        self.problem = cp.Problem(cp.Minimize(objective), constraints)
        assert self.problem.is_dpp()
        # diffcp differentiates the conic program; Clarabel (interior point) solves it to the
        # accuracy gradcheck needs (SCS's first-order accuracy does not)
        self.layer = CvxpyLayer(self.problem, parameters=params, variables=variables,
                                solver_args={"solve_method": solve_method, **(solver_args or {})})
        self._r = r

    def _offsets(self, load_scale: torch.Tensor) -> list[torch.Tensor]:
        """Constant terms at ``load_scale [B, L]`` (device-free model), differentiable."""
        t = lambda a: torch.as_tensor(np.ascontiguousarray(a), dtype=load_scale.dtype, device=load_scale.device)  # noqa: E731
        out = [t(self.v_model.offset()) + load_scale @ t(self.v_model.d_l.T)]
        if self._r:
            c = self.i_model.offset() / self.rating_a
            d_l = (self.i_model.d_l / self.rating_a[:, None]).T
            out += [t(c.real) + load_scale @ t(d_l.real), t(c.imag) + load_scale @ t(d_l.imag)]
        return out

    def project(self, p_kw: torch.Tensor, q_kvar: torch.Tensor, load_scale: torch.Tensor) -> Projection:
        """Project ``p_kw, q_kvar [..., n_inj]`` at ``load_scale [..., L]`` (float64 tensors)."""
        shape = torch.broadcast_shapes(p_kw.shape[:-1], q_kvar.shape[:-1], load_scale.shape[:-1])
        flat = lambda x: x.expand(*shape, x.shape[-1]).reshape(-1, x.shape[-1])  # noqa: E731
        p, q, l = flat(p_kw), flat(q_kvar), flat(load_scale)
        s = self.scale_kw
        offsets = self._offsets(l)
        grad = torch.is_grad_enabled() and any(t.requires_grad for t in (p, q, *offsets))
        # dense KKT derivative: diffcp's default LSQR is too inexact for gradcheck; the option is
        # only valid when a derivative is computed
        out = self.layer(p / s, q / s, *offsets, solver_args={"mode": "dense"} if grad else None)
        y_p, y_q, sigma_v = out[0], out[1], out[2]
        sigma_i = out[3] if self._r else y_p.new_zeros(y_p.shape[0], 0)
        dist = (y_p - p / s).square().sum(-1) + (y_q - q / s).square().sum(-1)
        unflat = lambda x: x.reshape(*shape, *x.shape[1:])  # noqa: E731
        return Projection(unflat(y_p * s), unflat(y_q * s), unflat(sigma_v), unflat(sigma_i), unflat(dist))

    def squared_distance(self, p_kw: torch.Tensor, q_kvar: torch.Tensor, load_scale: torch.Tensor) -> torch.Tensor:
        """``||(y* - x) / scale_kw||^2`` ``[...]``: the network term (module docstring)."""
        return self.project(p_kw, q_kvar, load_scale).distance_sq

