"""The Lagrangian of DESIGN §3 and its dual variables, shared by the GradMAP family.

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

Dual ascent: ``lam <- clip(lam + rho * mean residual, 0, lam_max)`` with the mean over days (and,
for the hourly groups, over the steps of that hour; for local groups over steps) — a per-step
mean, so ``rho`` means the same for every group.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from gridflex.env import Environment, Rollout
from gridflex.metrics import day_costs, network_terms


@dataclass
class DualInit:
    """Initial (or, for a fixed-penalty learner, fixed) dual values per group, EUR per unit."""

    voltage: float
    line: float
    local: float
    terminal: float


class Duals:
    """Dual variables: ``voltage [H, M]``, ``line [H, R]``, per fleet ``local [N_f, r_f]`` and
    ``terminal [N_f, rT_f]`` (float64, on the environment's device)."""

    def __init__(self, env: Environment, steps_per_day: int, dt_h: float, init: DualInit):
        kw = dict(device=env.device, dtype=torch.float64)
        self.hours = int(round(steps_per_day * dt_h))
        self.steps_per_hour = steps_per_day // self.hours
        m = len(env.voltage_monitor.names)
        r = len(env.current_monitor)
        self.voltage = torch.full((self.hours, m), init.voltage, **kw)
        self.line = torch.full((self.hours, r), init.line, **kw)
        self.local = [torch.full((f.n_agents, len(f.model.residual_names)), init.local, **kw) for f in env.fleets]
        self.terminal = [torch.full((f.n_agents, len(f.model.terminal_residual_names)), init.terminal, **kw)
                         for f in env.fleets]

    def tensors(self) -> list[torch.Tensor]:
        return [self.voltage, self.line, *self.local, *self.terminal]

    def summary(self) -> tuple[float, float]:
        """Mean and max over all dual entries."""
        flat = torch.cat([t.reshape(-1) for t in self.tensors()])
        return (float(flat.mean()), float(flat.max())) if flat.numel() else (0.0, 0.0)

    def hourly(self, lam: torch.Tensor) -> torch.Tensor:
        """Hourly duals ``[H, X]`` expanded to steps ``[T, X]``."""
        return lam.repeat_interleave(self.steps_per_hour, 0)

    def ascend(self, means: "ResidualMeans", rho: float, lam_max: float) -> None:
        """``lam <- clip(lam + rho * mean residual, 0, lam_max)`` for every group."""
        pairs = [(self.voltage, means.voltage), (self.line, means.line),
                 *zip(self.local, means.local), *zip(self.terminal, means.terminal)]
        for lam, g in pairs:
            lam.add_(rho * g.to(lam.dtype)).clamp_(0.0, lam_max)

    def state_dict(self) -> dict:
        return {"voltage": self.voltage, "line": self.line, "local": list(self.local),
                "terminal": list(self.terminal)}

    def load_state_dict(self, state: dict) -> None:
        self.voltage.copy_(state["voltage"])
        self.line.copy_(state["line"])
        for dst, src in zip(self.local + self.terminal, list(state["local"]) + list(state["terminal"])):
            dst.copy_(src)


@dataclass
class ResidualMeans:
    """Per-dual mean normalised residuals of a batch (shapes as the :class:`Duals`)."""

    voltage: torch.Tensor
    line: torch.Tensor
    local: list[torch.Tensor]
    terminal: list[torch.Tensor]


@dataclass
class LagrangianValue:
    """``value`` (scalar, EUR/day, differentiable), its parts (floats) and the residual means."""

    value: torch.Tensor
    cost_per_day: float
    penalty_per_day: float
    train_violation_rate: float
    means: ResidualMeans


def lagrangian(env: Environment, rollout: Rollout, duals: Duals, v_limits_train_pu: tuple[float, float],
               line_limits: bool, voltage_scale_pu: float, local_scale: float) -> LagrangianValue:
    """The Lagrangian of the module docstring for ``rollout`` at ``duals`` (duals are constants)."""
    terms = network_terms(env, rollout, v_limits_train_pu, line_limits)
    b, t = terms.v_residual_pu.shape[:2]
    cost = sum(day_costs(env, rollout).values())  # [B]
    g_v = terms.v_residual_pu / voltage_scale_pu  # [B, T, M]
    g_i = terms.line_residual  # [B, T, R]
    penalty = (g_v * duals.hourly(duals.voltage)).sum((1, 2))
    if g_i.shape[-1]:
        penalty = penalty + (g_i * duals.hourly(duals.line)).sum((1, 2))
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
    h, sph = duals.hours, duals.steps_per_hour
    means = ResidualMeans(
        voltage=g_v.detach().reshape(b, h, sph, -1).mean((0, 2)),
        line=g_i.detach().reshape(b, h, sph, -1).mean((0, 2)),
        local=local_means, terminal=terminal_means)
    value = (cost + penalty).mean()
    return LagrangianValue(value, float(cost.detach().mean()), float(penalty.detach().mean()),
                           float((terms.v_residual_pu > 0).double().mean()), means)
