"""Costs, constraint residuals and the evaluation metrics of docs/design.md §1, from a :class:`Rollout`.

Definitions (all on the monitored nodes and rated conductors of :mod:`gridflex.network.constraints`):

* ``cost_per_day``: sum over steps of price x source import x dt (the AC solution's source power,
  so losses are paid for) plus every device's operating cost, mean over days; ``cost_breakdown``
  splits it into ``energy`` and one entry per device group.
* ``voltage_violation_rate``: share of monitored node-time samples outside ``v_limits_pu``.
* ``voltage_violation_pu_h``: sum over monitored nodes and steps of the voltage residual
  ``relu(|V| - v_max) + relu(v_min - |V|)`` x dt, mean per day.
* ``max_voltage_deviation_pu``: largest voltage residual.
* ``undervoltage_rate``, ``overvoltage_rate``: share of monitored node-time samples below
  ``v_min`` / above ``v_max``.

The five voltage metrics are :func:`voltage_violation_metrics` of the monitored magnitudes, the
one definition that ``gridflex verify`` (:mod:`gridflex.runs.verify`) also applies to OpenDSS's
solution.
* ``line_overload_rate``: share of rated conductor-time samples with ``|I| > I_max``.
* ``discomfort_degC_h``: comfort-band residual x dt, mean per heat pump per day.
* ``losses_kwh_per_day``, ``peak_import_kw`` (largest source import of a step),
  ``max_vuf_pct`` (largest negative- over positive-sequence voltage at monitored three-phase buses).
* ``pf_nonconverged``: power flows that did not converge. Such samples count as violated at
  every monitored node and rated conductor (never dropped); their residual magnitudes are not
  defined and do not enter the pu·h sums or maxima.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from gridflex.learning.environment import Environment, Rollout

DISCOMFORT_RESIDUAL = "discomfort_degc"


@dataclass
class NetworkTerms:
    """Network quantities of a rollout: |V| [B, T, M], voltage residual [B, T, M] (pu),
    line loading [B, T, R] (|I| / I_max), source import [B, T] (kW), converged [B, T]."""

    vm_pu: torch.Tensor
    v_residual_pu: torch.Tensor
    line_loading: torch.Tensor
    line_residual: torch.Tensor
    source_kw: torch.Tensor
    converged: torch.Tensor


def voltage_residual_pu(vm_pu: torch.Tensor, v_limits_pu: tuple[float, float]) -> torch.Tensor:
    """The voltage residual ``relu(|V| - v_max) + relu(v_min - |V|)`` (pu), elementwise on ``vm_pu``
    (any shape, pu); differentiable (training penalises it, the metrics count it)."""
    v_min, v_max = v_limits_pu
    return torch.relu(vm_pu - v_max) + torch.relu(v_min - vm_pu)


def network_terms(env: Environment, rollout: Rollout, v_limits_pu: tuple[float, float], line_limits: bool = True) -> NetworkTerms:
    flow = rollout.flow
    vm = env.voltage_monitor.magnitudes_pu(flow.v_pu)
    v_res = voltage_residual_pu(vm, v_limits_pu)
    if line_limits and len(env.current_monitor):
        loading = env.current_monitor.loading(flow.branch_currents_a)
    else:
        loading = vm.new_zeros(vm.shape[:-1] + (0,))
    return NetworkTerms(vm, v_res, loading, torch.relu(loading - 1.0), flow.source_power_kw, flow.converged)


def voltage_violation_metrics(
    vm_pu: torch.Tensor | np.ndarray,
    v_limits_pu: tuple[float, float],
    dt_h: float,
    converged: torch.Tensor | np.ndarray | None = None,
) -> dict[str, float]:
    """The voltage metrics of the module docstring from monitored magnitudes.

    Args:
        vm_pu: ``[B, T, M]`` voltage magnitude (pu) of the ``M`` monitored nodes at every step of
            ``B`` days; a torch tensor or a numpy array (numpy is read as float64).
        v_limits_pu: ``(v_min, v_max)`` in pu.
        dt_h: step length in hours (the pu·h sum's time unit).
        converged: ``[B, T]`` bool, whether each step's power flow converged (``None``: all did). A
            non-converged step counts as violated at every monitored node; its magnitudes enter
            neither the pu·h sum, the maximum deviation nor the under/over-voltage rates.

    Returns ``voltage_violation_rate``, ``voltage_violation_pu_h`` (per day),
    ``max_voltage_deviation_pu``, ``undervoltage_rate`` and ``overvoltage_rate`` as floats.
    """
    vm = vm_pu if isinstance(vm_pu, torch.Tensor) else torch.as_tensor(np.asarray(vm_pu, dtype=np.float64))
    ok = (torch.ones(vm.shape[:-1], dtype=torch.bool, device=vm.device) if converged is None
          else torch.as_tensor(converged, device=vm.device).to(torch.bool))
    v_min, v_max = v_limits_pu
    with torch.no_grad():
        residual = voltage_residual_pu(vm, v_limits_pu)
        violated = (residual > 0) | ~ok[..., None]
        residual_ok = torch.where(ok[..., None], residual, torch.zeros_like(residual))
        return {
            "voltage_violation_rate": float(violated.double().mean()),
            "voltage_violation_pu_h": float(residual_ok.sum() * dt_h / vm.shape[0]),
            "max_voltage_deviation_pu": float(residual_ok.max()) if residual_ok.numel() else 0.0,
            "undervoltage_rate": float(((vm < v_min) & ok[..., None]).double().mean()),
            "overvoltage_rate": float(((vm > v_max) & ok[..., None]).double().mean()),
        }


def day_costs(env: Environment, rollout: Rollout) -> dict[str, torch.Tensor]:
    """Cost per day ``[B]`` by component: ``energy`` and one entry per fleet."""
    exo = rollout.exogenous
    costs = {"energy": (exo.price_per_kwh * rollout.flow.source_power_kw).sum(-1) * exo.dt_h}
    for fleet, traj in zip(env.fleets, rollout.fleets):
        key = fleet.model.name
        costs[key] = costs.get(key, 0.0) + traj.cost.sum((1, 2))
    return costs


def _vuf_pct(env: Environment, v_pu: torch.Tensor) -> torch.Tensor:
    """Voltage unbalance factor (%) at monitored three-phase buses ``[..., n_buses]``."""
    names = env.voltage_monitor.names
    buses: dict[str, dict[str, int]] = {}
    for name in names:
        bus, phase = name.rsplit(".", 1)
        buses.setdefault(bus, {})[phase] = env.grid.node_names.index(name)
    triples = [[p["1"], p["2"], p["3"]] for p in buses.values() if {"1", "2", "3"} <= set(p)]
    if not triples:
        return v_pu.new_zeros(v_pu.shape[:-1] + (0,)).real
    idx = torch.as_tensor(triples, device=v_pu.device)
    va, vb, vc = (v_pu[..., idx[:, k]] for k in range(3))
    a = complex(math.cos(2 * math.pi / 3), math.sin(2 * math.pi / 3))
    v1 = (va + a * vb + a * a * vc) / 3
    v2 = (va + a * a * vb + a * vc) / 3
    return 100 * v2.abs() / v1.abs().clamp_min(1e-9)


def evaluation_metrics(
    env: Environment, rollout: Rollout, v_limits_pu: tuple[float, float], line_limits: bool = True
) -> dict[str, object]:
    """The metrics of docs/design.md §1 for the rolled-out days (module docstring)."""
    with torch.no_grad():
        terms = network_terms(env, rollout, v_limits_pu, line_limits)
        dt_h = rollout.exogenous.dt_h
        n_days = rollout.exogenous.batch
        ok = terms.converged  # [B, T]
        bad = ~ok
        overloaded = (terms.line_residual > 0) | bad[..., None]
        costs = day_costs(env, rollout)
        total = sum(costs.values())
        flow = rollout.flow
        losses = torch.where(ok, flow.losses_kw, torch.zeros_like(flow.losses_kw))
        vuf = _vuf_pct(env, flow.v_pu)
        vuf = torch.where(ok[..., None], vuf, torch.zeros_like(vuf))
        metrics: dict[str, object] = {
            "cost_per_day": float(total.mean()),
            "cost_breakdown": {k: float(v.mean()) for k, v in costs.items()},
            **voltage_violation_metrics(terms.vm_pu, v_limits_pu, dt_h, ok),
            "line_overload_rate": float(overloaded.double().mean()) if overloaded.numel() else 0.0,
            "max_line_loading": float(torch.where(ok[..., None], terms.line_loading, torch.zeros_like(terms.line_loading)).max()) if terms.line_loading.numel() else 0.0,
            "discomfort_degC_h": _discomfort(env, rollout),
            "losses_kwh_per_day": float(losses.sum() * dt_h / n_days),
            "peak_import_kw": float(torch.where(ok, flow.source_power_kw, torch.full_like(flow.source_power_kw, -math.inf)).max()),
            "max_vuf_pct": float(vuf.max()) if vuf.numel() else 0.0,
            "pf_nonconverged": int(bad.sum()),
            "n_days": n_days,
        }
    return metrics


def _discomfort(env: Environment, rollout: Rollout) -> float:
    """Mean comfort-band residual x dt per heat pump per day (0.0 without heat pumps)."""
    total, count = 0.0, 0
    for fleet, traj in zip(env.fleets, rollout.fleets):
        names = tuple(fleet.model.residual_names)
        if DISCOMFORT_RESIDUAL in names:
            k = names.index(DISCOMFORT_RESIDUAL)
            total += float(traj.residuals[..., k].sum()) * rollout.exogenous.dt_h
            count += fleet.n_agents
    return total / (count * rollout.exogenous.batch) if count else 0.0


def monitored_nodes_table(env: Environment) -> str:
    """The monitored-node list as text (one per line; ungrounded ones marked line-to-line)."""
    lines = []
    for name, partner in zip(env.voltage_monitor.names, env.voltage_monitor.node_b):
        suffix = f"  line-to-line with {env.grid.node_names[partner]} / sqrt(3)" if partner >= 0 else ""
        lines.append(name + suffix)
    return "\n".join(lines) + "\n"

