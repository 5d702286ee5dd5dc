"""The Lagrangian of docs/design.md §3 and its dual variables, shared by the GradMAP family.

Over a batch of ``B`` days with ``T`` steps (step ``t`` in hour of day ``h(t) = floor(t dt)``)::

    L = mean_b [ C_b
                 + sum_{t,m} lam_V[h(t), m] g_V[b,t,m]          monitored node-phases m
                 + sum_{t,r} lam_I[h(t), r] g_I[b,t,r]          rated conductors r
                 + sum_f sum_{t,i,k} lam_loc_f[i,k] g_loc_f[b,t,i,k]   per-step local (comfort)
                 + sum_f sum_{i,k}   lam_T_f[i,k]   g_T_f[b,i,k] ]      end-of-day, per agent

``C_b`` is the day's operating cost (EUR: energy at the source from the AC solution, so losses
are paid, plus device costs). Residuals are normalised so one step size ``rho`` fits all groups:
``g_V = (relu(|V| - v_max) + relu(v_min - |V|)) / voltage_scale_pu`` with the **training** limits
``limits.v_limits_train_pu``; ``g_I = relu(|I|/I_max - 1)`` (already relative); local and
terminal residuals in their device units (degC, kWh) divided by ``local_scale``. Every dual is
therefore in EUR per unit of normalised residual (per step for the per-step groups).

Dual update that can fall (docs/design.md §3 step 4), per family ``F`` (voltage, line, local, terminal,
feasibility)::

    lam <- clip(lam + rho_F * (m - eps_F), 0, lam_max)          (:func:`dual_step`)

``m`` is a per-dual measure over the batch — the mean over days (and, for the hourly groups, over
the steps of that hour; for local groups over steps), a per-step mean, so ``rho`` means the same
for every group — and ``eps_F`` the family's allowed level (normalised residual per step; ``> 0``
by default, see ``learners.dual_ascent_rule``).

Why not ``lam + rho * mean residual``: every residual is a relu (``>= 0``), so that update can
never lower a dual; duals ratchet up to ``lam_max`` (27-49 % of the IEEE 123 voltage duals after
40 iterations) and the Lagrangian drowns the cost. Two measures (option ``dual_measure``):

* ``violation`` (default): ``m`` = the mean normalised residual; a satisfied constraint
  (``m = 0``) lowers its dual by ``rho_F eps_F`` per iteration; at equilibrium ``m = eps_F``.
* ``signed``: for voltage ``m`` = mean of ``max(|V| - v_max, v_min - |V|) / voltage_scale_pu``
  (training limits; negative inside the band: minus the slack to the nearer limit), for lines
  the mean of ``|I|/I_max - 1`` (negative below rating): the dual falls in proportion to the
  slack, as in textbook primal-dual (a KKT point is a fixed point with ``eps_F = 0``). The
  device-local and end-of-day families expose only relu residuals in the device contract (no
  signed distance to their limits), and the feasibility distance is zero on the whole feasible
  set, so those families always use ``violation``.

The relu residuals ``g`` remain what the Lagrangian penalises and what the metrics count; the
measures only move the duals. :meth:`Duals.family_report` gives each family's dual mean and share
of entries at ``lam_max`` (written to ``history.csv``).

Network term ``feasibility_distance`` (option ``network_term``; docs/design.md §2c, issue #6): the two
AC groups are replaced by **one hourly dual** ``lam_F [H]`` on the squared distance of the step's
joint nodal injections to the linearised feasible set (:mod:`gridflex.network.feasibility`, training
voltage limits, line limits as configured)::

    sum_{t} lam_F[h(t)] g_F[b,t],   g_F = ||(y*(x_bt) - x_bt) / s||^2

``C_b`` stays the AC solution's cost; the AC residuals are still computed and logged
(``train_violation_rate``) but carry no dual. The distance is a scalar per day-step (the
projection already combines every monitored node and conductor), hence one dual per hour rather
than per node. The unit ``s`` (kW; kvar alike) is, by default, the injection change of least norm
that moves the typical monitored voltage by ``voltage_scale_pu``: ``s = voltage_scale_pu /
median_m ||(dV_m/dp, dV_m/dq)||_2`` on the linearised model (about 35 kW on ``ieee13_small``), so
a violation of one voltage unit costs ``g_F ~ 1`` like ``g_V = 1`` and the two duals share units
(EUR per unit per step), ``dual_init_*`` scale and ``rho``. Being squared, ``g_F`` is weaker
than ``g_V`` for small violations (quadratic, gradient vanishing at the boundary) and the
ascent raises ``lam_F`` until they are driven out. The layer (cvxpy/cvxpylayers, imported only
here) is built once per learner, linearised at the base case.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

from gridflex.learning.environment import Environment, Rollout
from gridflex.learning.metrics import day_costs, network_terms


FAMILIES = ("voltage", "line", "local", "terminal", "feasibility")
AT_MAX_RTOL = 1e-9  # an entry counts as "at lam_max" when >= lam_max * (1 - AT_MAX_RTOL)


def dual_step(lam: torch.Tensor, measure: torch.Tensor, rho: float, allowed: float,
              lam_max: float) -> torch.Tensor:
    """``lam <- clip(lam + rho * (measure - allowed), 0, lam_max)`` in place; returns ``lam``.

    ``lam`` and ``measure`` have the same shape (any); ``measure`` may be signed (negative when
    the constraint holds with slack) or a violation (``>= 0``), ``allowed`` is its allowed level
    (same units), ``rho`` the step (units of ``lam`` per unit of measure)."""
    return lam.add_(rho * (measure.to(lam.dtype) - allowed)).clamp_(0.0, lam_max)


@dataclass
class DualAscent:
    """The dual update of the module docstring: per-family rates ``rho`` (EUR per unit of measure
    per iteration) and allowed levels ``allowed`` (normalised residual per step), keyed by
    :data:`FAMILIES`, the upper clip ``lam_max`` and the network families' ``measure``."""

    rho: dict[str, float]
    allowed: dict[str, float]
    lam_max: float
    measure: Literal["violation", "signed"] = "violation"


@dataclass
class DualInit:
    """Initial (or, for a fixed-penalty learner, fixed) dual values per group, EUR per unit."""

    voltage: float
    line: float
    local: float
    terminal: float
    feasibility: float = 0.0


class Duals:
    """Dual variables: ``voltage [H, M]``, ``line [H, R]``, per fleet ``local [N_f, r_f]`` and
    ``terminal [N_f, rT_f]`` (float64, on the environment's device); with the feasibility network
    term (``feasibility=True``) ``feasibility [H]`` replaces ``voltage`` and ``line`` (which then
    stay at their initial values, unused and not reported)."""

    def __init__(self, env: Environment, steps_per_day: int, dt_h: float, init: DualInit,
                 feasibility: bool = False):
        kw = dict(device=env.device, dtype=torch.float64)
        self.hours = int(round(steps_per_day * dt_h))
        self.steps_per_hour = steps_per_day // self.hours
        m = len(env.voltage_monitor.names)
        r = len(env.current_monitor)
        self.voltage = torch.full((self.hours, m), init.voltage, **kw)
        self.line = torch.full((self.hours, r), init.line, **kw)
        self.uses_feasibility = feasibility
        self.feasibility = torch.full((self.hours,), init.feasibility, **kw)
        self.local = [torch.full((f.n_agents, len(f.model.residual_names)), init.local, **kw) for f in env.fleets]
        self.terminal = [torch.full((f.n_agents, len(f.model.terminal_residual_names)), init.terminal, **kw)
                         for f in env.fleets]

    def network(self) -> list[torch.Tensor]:
        """The duals of the network term in use."""
        return [self.feasibility] if self.uses_feasibility else [self.voltage, self.line]

    def tensors(self) -> list[torch.Tensor]:
        return [*self.network(), *self.local, *self.terminal]

    def summary(self) -> tuple[float, float]:
        """Mean and max over all dual entries."""
        flat = torch.cat([t.reshape(-1) for t in self.tensors()])
        return (float(flat.mean()), float(flat.max())) if flat.numel() else (0.0, 0.0)

    def hourly(self, lam: torch.Tensor) -> torch.Tensor:
        """Hourly duals ``[H, X]`` expanded to steps ``[T, X]``."""
        return lam.repeat_interleave(self.steps_per_hour, 0)

    def families(self) -> dict[str, list[torch.Tensor]]:
        """The duals in use by family (``local``/``terminal``: one tensor per fleet)."""
        network = ({"feasibility": [self.feasibility]} if self.uses_feasibility
                   else {"voltage": [self.voltage], "line": [self.line]})
        return {**network, "local": list(self.local), "terminal": list(self.terminal)}

    def ascend(self, means: "ResidualMeans", rule: DualAscent) -> None:
        """One :func:`dual_step` per group with its family's measure, rate and allowed level."""
        signed = rule.measure == "signed"
        measures = {"voltage": [means.voltage_signed if signed else means.voltage],
                    "line": [means.line_signed if signed else means.line],
                    "feasibility": [means.feasibility], "local": means.local, "terminal": means.terminal}
        for family, duals in self.families().items():
            for lam, m in zip(duals, measures[family], strict=True):
                dual_step(lam, m, rule.rho[family], rule.allowed[family], rule.lam_max)

    def family_report(self, lam_max: float) -> dict[str, float | None]:
        """``dual_<family>_mean`` and ``dual_<family>_at_max`` (share of entries ``>= lam_max (1 -
        1e-9)``) for the families in use; ``None`` for a family without entries."""
        report: dict[str, float | None] = {}
        for family, duals in self.families().items():
            flat = torch.cat([t.reshape(-1) for t in duals]) if duals else torch.zeros(0)
            empty = flat.numel() == 0
            report[f"dual_{family}_mean"] = None if empty else float(flat.mean())
            report[f"dual_{family}_at_max"] = None if empty else float(
                (flat >= lam_max * (1.0 - AT_MAX_RTOL)).double().mean())
        return report

    def state_dict(self) -> dict:
        return {"voltage": self.voltage, "line": self.line, "feasibility": self.feasibility,
                "local": list(self.local), "terminal": list(self.terminal)}

    def load_state_dict(self, state: dict) -> None:
        self.voltage.copy_(state["voltage"])
        self.line.copy_(state["line"])
        if "feasibility" in state:  # checkpoints written before the option lack it
            self.feasibility.copy_(state["feasibility"])
        for dst, src in zip(self.local + self.terminal, list(state["local"]) + list(state["terminal"])):
            dst.copy_(src)


@dataclass
class ResidualMeans:
    """Per-dual batch measures (shapes as the :class:`Duals`): mean normalised residuals
    (``voltage [H, M]``, ``line [H, R]``, per fleet ``local [N, r]``, ``terminal [N, rT]``,
    ``feasibility [H]``) and the signed measures of the module docstring (``voltage_signed [H, M]``,
    ``line_signed [H, R]``; negative with slack)."""

    voltage: torch.Tensor
    line: torch.Tensor
    local: list[torch.Tensor]
    terminal: list[torch.Tensor]
    feasibility: torch.Tensor | None = None  # [H], with the feasibility network term
    voltage_signed: torch.Tensor | None = None
    line_signed: torch.Tensor | None = None


# tight enough for an accurate KKT adjoint where several limits are active at the projection
# (Clarabel's 1e-8 defaults: a few % off finite differences there; see FeasibilityLayer)
SOLVER_TOLERANCES = {"tol_gap_abs": 1e-10, "tol_gap_rel": 1e-10, "tol_feas": 1e-10, "tol_ktratio": 1e-8}


class FeasibilityTerm:
    """``g_F [B, T]`` of the module docstring for a rollout, through the cvxpylayers layer.

    The projection is the identity on the feasible set, so a sample whose injections already
    satisfy every linearised constraint has ``g_F = 0`` with zero gradient (the squared distance
    to a convex set is C1 with gradient ``2(x - y*)/s^2``). A numpy screen (the affine voltage and
    current models at ``x``) finds those samples exactly; only the others go through the layer
    (one conic solve each, with the KKT adjoint when a gradient is needed). On ``ieee13_small``
    that was 2-16 % of the day-steps early in training and often none later. Runs on the CPU (inputs are moved there and back).
    """

    def __init__(self, env: Environment, v_limits_pu: tuple[float, float], line_limits: bool,
                 voltage_scale_pu: float, scale_kw: float | None = None):
        from gridflex.network.feasibility import FeasibilityLayer
        from gridflex.network.linearised import linearise
        from gridflex.network.powerflow import build_network

        net = build_network(env.grid, env.injection_nodes)
        linear = linearise(net, np.ones(net.n_loads))
        vmon = env.voltage_monitor
        if scale_kw is None:
            v = linear.magnitudes(np.asarray(vmon.node_a), np.asarray(vmon.node_b))
            norms = np.sqrt(np.square(v.d_p).sum(1) + np.square(v.d_q).sum(1))
            scale_kw = float(voltage_scale_pu / np.median(norms))
        monitor = env.current_monitor
        columns, ratings = (monitor.columns, monitor.rating_a) if line_limits and len(monitor) else ((), ())
        self.scale_kw, self.v_limits_pu = float(scale_kw), tuple(v_limits_pu)
        self.layer = FeasibilityLayer(linear, vmon.node_a, vmon.node_b, v_limits_pu,
                                      current_columns=columns, rating_a=ratings, scale_kw=self.scale_kw,
                                      solver_args=SOLVER_TOLERANCES)
        self.last_active_share = 0.0  # share of samples sent through the layer at the last call

    def linear_feasible(self, p_kw: np.ndarray, q_kvar: np.ndarray, load_scale: np.ndarray) -> np.ndarray:
        """Whether ``x`` satisfies every linearised constraint (``[...]`` bool): then ``y* = x``."""
        v = self.layer.v_model.evaluate(load_scale, p_kw, q_kvar)
        ok = ((v >= self.v_limits_pu[0]) & (v <= self.v_limits_pu[1])).all(-1)
        if self.layer.i_model is not None:
            i = self.layer.i_model.evaluate(load_scale, p_kw, q_kvar) / self.layer.rating_a
            ok &= (np.abs(i) <= 1.0).all(-1)
        return ok

    def __call__(self, p_kw: torch.Tensor, q_kvar: torch.Tensor, load_scale: torch.Tensor) -> torch.Tensor:
        device = p_kw.device
        p, q, scale = p_kw.cpu(), q_kvar.cpu(), load_scale.detach().cpu()
        active = torch.from_numpy(~self.linear_feasible(p.detach().numpy(), q.detach().numpy(), scale.numpy()))
        self.last_active_share = float(active.double().mean())
        dist = 0.0 * (p.sum(-1) + q.sum(-1))  # zeros, on the autograd graph when x is
        if bool(active.any()):
            dist = dist.masked_scatter(active, self.layer.squared_distance(p[active], q[active], scale[active]))
        return dist.to(device)


@dataclass
class LagrangianValue:
    """``value`` (scalar, EUR/day, differentiable), its parts (floats) and the residual means."""

    value: torch.Tensor
    cost_per_day: float
    penalty_per_day: float
    train_violation_rate: float
    means: ResidualMeans
    feasibility_distance_per_day: float | None = None  # mean over days of sum_t g_F


def lagrangian(env: Environment, rollout: Rollout, duals: Duals, v_limits_train_pu: tuple[float, float],
               line_limits: bool, voltage_scale_pu: float, local_scale: float,
               feasibility: FeasibilityTerm | None = None) -> LagrangianValue:
    """The Lagrangian of the module docstring for ``rollout`` at ``duals`` (duals are constants);
    with ``feasibility`` its squared distance is the network term instead of the AC residuals."""
    terms = network_terms(env, rollout, v_limits_train_pu, line_limits)
    b, t = terms.v_residual_pu.shape[:2]
    h, sph = duals.hours, duals.steps_per_hour
    cost = sum(day_costs(env, rollout).values())  # [B]
    g_v = terms.v_residual_pu / voltage_scale_pu  # [B, T, M]
    g_i = terms.line_residual  # [B, T, R]
    g_f = None
    if feasibility is None:
        penalty = (g_v * duals.hourly(duals.voltage)).sum((1, 2))
        if g_i.shape[-1]:
            penalty = penalty + (g_i * duals.hourly(duals.line)).sum((1, 2))
    else:
        g_f = feasibility(rollout.p_injection_kw, rollout.q_injection_kvar, rollout.exogenous.load_scale)  # [B, T]
        penalty = (g_f * duals.hourly(duals.feasibility[:, None])[:, 0]).sum(1)
    local_means, terminal_means = [], []
    for f, traj in enumerate(rollout.fleets):
        g_loc = traj.residuals / local_scale  # [B, T, N, r]
        g_end = traj.terminal / local_scale  # [B, N, rT]
        if g_loc.shape[-1]:
            penalty = penalty + (g_loc * duals.local[f]).sum((1, 2, 3))
        if g_end.shape[-1]:
            penalty = penalty + (g_end * duals.terminal[f]).sum((1, 2))
        local_means.append(g_loc.detach().mean((0, 1)))
        terminal_means.append(g_end.detach().mean(0))

    def hourly_mean(x: torch.Tensor) -> torch.Tensor:  # [B, T, X] -> [H, X], detached
        return x.detach().reshape(b, h, sph, -1).mean((0, 2))

    v_min, v_max = v_limits_train_pu
    vm = terms.vm_pu.detach()  # [B, T, M]
    means = ResidualMeans(
        voltage=hourly_mean(g_v), line=hourly_mean(g_i),
        local=local_means, terminal=terminal_means,
        feasibility=None if g_f is None else g_f.detach().reshape(b, h, sph).mean((0, 2)),
        voltage_signed=hourly_mean(torch.maximum(vm - v_max, v_min - vm) / voltage_scale_pu),
        line_signed=hourly_mean(terms.line_loading - 1.0))
    value = (cost + penalty).mean()
    return LagrangianValue(value, float(cost.detach().mean()), float(penalty.detach().mean()),
                           float((terms.v_residual_pu > 0).double().mean()), means,
                           None if g_f is None else float(g_f.detach().sum(1).mean()))
