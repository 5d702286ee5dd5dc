"""The per-agent rewards of the PPO learners (``ippo``, ``mappo``).

The original shaped reward lives in the core, :mod:`gridflex.learning.rewards`, so that the
PettingZoo adapter (:mod:`gridflex.learning.parallel_env`) shapes its rewards exactly as IPPO's
default does; it is re-exported here. :func:`ppo_rewards` generalises it with two options
(docs/ippo.md, "Reward"):

* the **network term** (``reward_network``: ``own_node``, ``sensitivity``, ``difference``;
  :mod:`.credit`), and
* the **prices**: fixed (``reward_voltage``, ``reward_line``, ``reward_comfort``,
  ``reward_terminal``) or the GradMAP family's duals (:class:`~gridflex_plugins.learners.gradmap.
  lagrangian.Duals`: hourly per node-phase and per conductor, per agent for comfort and end of day).

For agent ``i`` at step ``t`` (EUR; the reward is minus this)::

    c = w_own  bill_i,t                                   own bill (difference: with the marginal loss factor)
      + network_i,t                                       the chosen network term, priced
      + sum_k lam_loc_i,k g_loc_i,t,k                     own comfort residual (degC)
      + w_glob G_t / N_total                              shared global term (as the core's)
      + [t = T-1] sum_k lam_T_i,k g_T_i,k                 end-of-day residuals

With ``own_node``, fixed prices and ``bill`` without loss factor this equals
:func:`gridflex.learning.rewards.shaped_rewards` (tests/test_ppo_variants.py checks it).
A non-converged power-flow sample costs every agent one voltage unit at its price (and the global
term one unit at every monitored node-phase), so a divergent schedule is never rewarded.
"""

from __future__ import annotations

import torch

from gridflex.learning.environment import Environment, Rollout
from gridflex.learning.metrics import day_costs, network_terms
from gridflex.learning.rewards import RewardWeights, ShapedRewards, agent_monitor_maps, shaped_rewards

from .credit import NetworkPrices, Sensitivities, network_reward_costs

__all__ = ["RewardWeights", "ShapedRewards", "agent_monitor_maps", "shaped_rewards", "ppo_rewards"]


def ppo_rewards(env: Environment, rollout: Rollout, maps: list[torch.Tensor], weights: RewardWeights,
                v_limits_train_pu: tuple[float, float], line_limits: bool, *, kind: str = "own_node",
                sens: Sensitivities | None = None, duals=None) -> ShapedRewards:
    """Rewards ``[B, T, N_f]`` per fleet of the module docstring. ``duals``: a
    :class:`~gridflex_plugins.learners.gradmap.lagrangian.Duals` (prices) or ``None`` (the fixed
    weights); ``sens``: the :class:`.credit.Sensitivities` (needed unless ``kind == "own_node"``)."""
    exo = rollout.exogenous
    dt = exo.dt_h
    terms = network_terms(env, rollout, v_limits_train_pu, line_limits)
    ok = terms.converged[..., None]  # [B, T, 1]
    bad = (~terms.converged).to(terms.vm_pu.dtype)  # [B, T]
    g_v = torch.where(ok, terms.v_residual_pu, 0.0) / weights.voltage_scale_pu  # [B, T, M]
    g_i = torch.where(ok, terms.line_residual, 0.0)  # [B, T, R]
    v_min, v_max = v_limits_train_pu
    vm = terms.vm_pu
    sign_v = torch.where(ok, (vm > v_max).to(vm.dtype) - (vm < v_min).to(vm.dtype), 0.0) / weights.voltage_scale_pu
    sign_i = torch.where(ok, (terms.line_loading > 1.0).to(vm.dtype), 0.0)
    steps = exo.steps
    if duals is None:
        prices = NetworkPrices(vm.new_full((steps, g_v.shape[-1]), weights.voltage),
                               vm.new_full((steps, g_i.shape[-1]), weights.line))
        local = [vm.new_full((f.n_agents, len(f.model.residual_names)), weights.comfort) for f in env.fleets]
        terminal = [vm.new_full((f.n_agents, len(f.model.terminal_residual_names)), weights.terminal)
                    for f in env.fleets]
    else:
        prices = NetworkPrices(duals.hourly(duals.voltage).to(vm.dtype), duals.hourly(duals.line).to(vm.dtype))
        local = [lam.to(vm.dtype) for lam in duals.local]
        terminal = [lam.to(vm.dtype) for lam in duals.terminal]
    unit_price = prices.voltage.mean(-1) if prices.voltage.shape[-1] else vm.new_zeros(steps)  # [T]
    price = exo.price_per_kwh  # [B, T]
    uncontrolled_kw = (exo.household_kw - exo.pv_kw).sum(1)  # [B, T]
    device_cost = sum(traj.cost.sum(-1) for traj in rollout.fleets)  # [B, T]
    global_cost = (price * (terms.source_kw - uncontrolled_kw) * dt + device_cost
                   + (g_v * prices.voltage).sum(-1) + bad * prices.voltage.sum(-1))
    if g_i.shape[-1]:
        global_cost = global_cost + (g_i * prices.line).sum(-1)
    global_share = weights.global_weight * global_cost / env.n_agents  # [B, T]
    network = network_reward_costs(kind, sens, maps, g_v, g_i, sign_v, sign_i, prices,
                                   [t.p_kw for t in rollout.fleets], [t.q_kvar for t in rollout.fleets])
    rewards = []
    for f, traj in enumerate(rollout.fleets):
        if kind == "difference":
            bill = price[..., None] * (sens.src_p[f] * traj.p_kw + sens.src_q[f] * traj.q_kvar) * dt
        else:
            bill = price[..., None] * traj.p_kw * dt
        cost = weights.own_cost * (bill + traj.cost) + network[f] + (bad * unit_price)[..., None]
        cost = cost + (traj.residuals * local[f]).sum(-1) + global_share[..., None]
        cost[:, -1] = cost[:, -1] + (traj.terminal * terminal[f]).sum(-1)
        rewards.append(-cost)
    feeder_cost = float(sum(day_costs(env, rollout).values()).mean())
    violation_rate = float(((terms.v_residual_pu > 0) | ~ok).double().mean())
    return ShapedRewards(rewards, feeder_cost, violation_rate)
