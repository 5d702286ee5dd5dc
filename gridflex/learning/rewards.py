"""The shaped per-agent reward of IPPO and the PettingZoo adapter (docs/design.md §3, ``ippo``).

Computed from a gradient-free rollout of any length: a whole day (IPPO, ``plugins/learners/ippo``)
or one step (:mod:`gridflex.learning.parallel_env`, with the end-of-day term only at the last step).

For agent ``i`` of fleet ``f`` at step ``t`` of day ``b`` (``dt`` in h, EUR throughout), the reward
is minus the cost ``c[b, t, i]``::

    c = w_own   * (price_t * p_i,t * dt + devcost_i,t)                        own bill share
      + w_volt  * sum_{m in M(i)} g_V[b, t, m] / |M(i)| / v_scale              own node-phase(s)
      + w_comf  * sum_k g_loc_i,t,k                                            own comfort (degC)
      + w_glob  * G[b, t] / N_total                                            shared global term
      + [t = T-1] w_term * sum_k g_T_i,k                                       end-of-day residuals

* ``p_i,t`` is the device's own demand (kW, + drawn) and ``devcost`` its operating cost (fuel,
  degradation): together the device's share of the energy bill. The agent's household load and PV
  are uncontrolled, so their bill is an action-independent offset and is left out (less variance,
  same optimum).
* ``g_V = relu(|V| - v_max) + relu(v_min - |V|)`` (pu) from the AC power flow with the **training**
  limits ``v_limits_train_pu``, at the monitored node-phases ``M(i)`` the device connects to (one,
  or three for a three-phase device: their mean). Only the voltage the agent could measure.
* ``G`` is the feeder's step cost with its violations, shared by everyone::

      G = price_t (P_source,t - P_uncontrolled,t) dt + sum_j devcost_j,t
          + w_volt * sum_m g_V[b, t, m] / v_scale + w_line * sum_r relu(|I_r| / I_max,r - 1)

  ``P_source`` is the AC source import (so losses are paid for); the uncontrolled household net
  demand ``P_uncontrolled = sum_h (load_h - pv_h)`` is subtracted as an action-independent
  baseline, leaving the controllable part of the feeder bill. Dividing by ``N_total`` makes each
  agent carry its per-capita share.

**Why this shape.** The true objective is the team cost ``J = sum_t G_t`` (plus comfort and the
end-of-day terms). Rewarding every agent with ``J`` aligns them exactly but gives each agent a
signal whose dependence on its own action is ``O(1/N)`` of the noise from ``N - 1`` other
exploring agents: with 1,000 agents the credit-assignment problem makes learning hopeless in any
sane budget. The local terms (own bill, own node voltage, own comfort and end-of-day residuals)
are what the agent's action moves most and what it can observe, so they give low-variance credit;
the sum over agents of the own-bill terms is the controllable feeder bill up to losses. They miss
the network externalities (losses, voltages at nodes the agent does not sit on, line loading),
which the weighted global term adds back at the price of variance. ``w_glob`` trades credit
assignment against alignment; ``w_volt`` and ``w_line`` are fixed prices (EUR per unit of
normalised residual per step), comparable to GradMAP's initial duals, since IPPO has no dual
ascent.

Non-converged power-flow samples (reported, never NaN) carry a voltage residual of one ``v_scale``
at every node-phase, so a divergent schedule is never rewarded.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from gridflex.learning.environment import Environment, Rollout
from gridflex.learning.metrics import day_costs, network_terms


@dataclass(frozen=True)
class RewardWeights:
    """Weights of the shaped reward (EUR per unit; see module docstring)."""

    own_cost: float = 1.0
    voltage: float = 20.0
    voltage_scale_pu: float = 0.01
    line: float = 20.0
    comfort: float = 1.0
    terminal: float = 1.0
    global_weight: float = 1.0


def agent_monitor_maps(env: Environment) -> list[torch.Tensor]:
    """Per fleet, ``[N_f, M]``: row ``i`` averages the monitored node-phases agent ``i`` connects
    to (weight ``1/|M(i)|``; a row of zeros if none of its nodes is monitored)."""
    column = {int(node): m for m, node in enumerate(env.voltage_monitor.node_a)}
    n_monitored = len(env.voltage_monitor)
    maps = []
    for fleet in env.fleets:
        rows = torch.zeros(fleet.n_agents, n_monitored, dtype=env.dtype, device=env.device)
        for i, nodes in enumerate(fleet.placement.nodes):  # set-up only, once per learner
            cols = [column[int(n)] for n in nodes if int(n) in column]
            for c in cols:
                rows[i, c] += 1.0 / len(cols)
        maps.append(rows)
    return maps


@dataclass
class ShapedRewards:
    """Per fleet rewards ``[B, T, N_f]`` (EUR, = minus the shaped cost) and batch diagnostics:
    the feeder's cost per day (EUR, as the metrics define it) and the voltage violation rate at the
    training limits."""

    rewards: list[torch.Tensor]
    cost_per_day: float
    train_violation_rate: float


def shaped_rewards(env: Environment, rollout: Rollout, maps: list[torch.Tensor], weights: RewardWeights,
                   v_limits_train_pu: tuple[float, float], line_limits: bool) -> ShapedRewards:
    """The rewards of the module docstring for every agent, step and day of ``rollout``."""
    exo = rollout.exogenous
    dt = exo.dt_h
    terms = network_terms(env, rollout, v_limits_train_pu, line_limits)
    ok = terms.converged[..., None]  # [B, T, 1]
    g_v = torch.where(ok, terms.v_residual_pu, torch.full_like(terms.v_residual_pu, weights.voltage_scale_pu))
    g_v = g_v / weights.voltage_scale_pu  # [B, T, M]
    price = exo.price_per_kwh  # [B, T]
    uncontrolled_kw = (exo.household_kw - exo.pv_kw).sum(1)  # [B, T]
    device_cost = sum(traj.cost.sum(-1) for traj in rollout.fleets)  # [B, T]
    global_cost = price * (terms.source_kw - uncontrolled_kw) * dt + device_cost + weights.voltage * g_v.sum(-1)
    if terms.line_residual.shape[-1]:
        global_cost = global_cost + weights.line * torch.where(ok, terms.line_residual, 0.0).sum(-1)
    global_share = weights.global_weight * global_cost / env.n_agents  # [B, T]
    rewards = []
    for traj, node_map in zip(rollout.fleets, maps):
        own = weights.own_cost * (price[..., None] * traj.p_kw * dt + traj.cost)  # [B, T, N]
        local_v = weights.voltage * (g_v @ node_map.T)
        comfort = weights.comfort * traj.residuals.sum(-1)
        cost = own + local_v + comfort + global_share[..., None]
        cost[:, -1] = cost[:, -1] + weights.terminal * traj.terminal.sum(-1)
        rewards.append(-cost)
    feeder_cost = float(sum(day_costs(env, rollout).values()).mean())
    violation_rate = float(((terms.v_residual_pu > 0) | ~ok).double().mean())
    return ShapedRewards(rewards, feeder_cost, violation_rate)
