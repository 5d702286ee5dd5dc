"""The PPO mathematics, independent per agent and vectorised over agents: GAE and the update.

Nothing here knows about feeders or devices: :func:`gae` takes rewards and values ``[B, T, N]``
(``B`` episodes of ``T`` steps, ``N`` agents) and :func:`ppo_update` takes agent-major batches
(:class:`FleetBatch`) and :class:`~.agents.FleetActorCritic` modules. The sanity test drives both
with a hand-stepped battery fleet, the learner with the environment.

**GAE** (Schulman et al. 2016) over a day-long episode that ends after step ``T - 1`` (the value
after the last step is 0; the end-of-day residuals enter the last reward)::

    delta_t = r_t + gamma V(o_{t+1}) [t < T-1] - V(o_t)
    A_t     = delta_t + gamma lambda A_{t+1} [t < T-1],     R_t = A_t + V(o_t)

**Clipped objective** per agent ``i``, mean over its samples (Schulman et al. 2017)::

    L_i = -mean min(rho A, clip(rho, 1 - eps, 1 + eps) A) + c_v mean (V - R)^2 / 2 - c_H H_i

with ``rho = exp(log pi_new(z) - log pi_old(z))`` (exact for the squashed actions, see
:mod:`.agents`), advantages normalised per agent over its own batch, and ``H_i`` the entropy of
agent ``i``'s Gaussian. The loss minimised is ``sum_i L_i``: a sum, so each agent's gradient is its
own ``dL_i/dtheta_i``; gradients are clipped per agent (actor and critic separately) and Adam is
per parameter element, so nothing couples agents in the update. Minibatches split the samples,
with one permutation per epoch shared by all agents (which does not couple them either).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from gridflex.learning.policies import clip_grad_norm_per_agent_

from .agents import FleetActorCritic


def gae(rewards: torch.Tensor, values: torch.Tensor, gamma: float, lam: float
        ) -> tuple[torch.Tensor, torch.Tensor]:
    """Advantages and returns ``[B, T, N]`` of episodes that end after step ``T - 1``.

    ``rewards`` and ``values`` ``[B, T, N]`` in the same units; loops over the ``T`` steps only.
    """
    adv = torch.zeros_like(rewards)
    next_value = torch.zeros_like(rewards[:, 0])
    next_adv = torch.zeros_like(rewards[:, 0])
    for t in range(rewards.shape[1] - 1, -1, -1):
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        next_adv = delta + gamma * lam * next_adv
        adv[:, t] = next_adv
        next_value = values[:, t]
    return adv, adv + values


def to_agent_major(x: torch.Tensor) -> torch.Tensor:
    """``[B, T, N, ...] -> [N, B*T, ...]`` (contiguous)."""
    b, t, n = x.shape[:3]
    return x.reshape(b * t, n, *x.shape[3:]).transpose(0, 1).contiguous()


@dataclass
class FleetBatch:
    """One fleet's on-policy samples, agent-major (``M = B*T`` samples per agent).

    ``obs [N, M, k]``, pre-squash actions ``z [N, M, d]``, behaviour log-probs ``log_prob [N, M]``,
    ``advantages [N, M]``, ``returns [N, M]`` and the behaviour critic's ``values [N, M]`` (all
    three in units of the agent's ``return_scale``).
    """

    obs: torch.Tensor
    z: torch.Tensor
    log_prob: torch.Tensor
    advantages: torch.Tensor
    returns: torch.Tensor
    values: torch.Tensor
    global_state: torch.Tensor | None = None  # [M, G], the centralised critic's input


@torch.no_grad()
def update_return_statistics(agent: FleetActorCritic, returns_eur: torch.Tensor, momentum: float = 0.1) -> None:
    """Running value normalisation: move each agent's ``return_mean`` and ``return_scale``
    (``[N]``, EUR) towards the mean and standard deviation of its returns ``[B, T, N]`` by
    ``momentum`` (the scale floored at 1e-3 EUR)."""
    r = returns_eur.to(agent.return_mean.dtype).reshape(-1, returns_eur.shape[-1])
    mean, std = r.mean(0), r.std(0, unbiased=False).clamp_min(1e-3)
    agent.return_mean.lerp_(mean, momentum)
    agent.return_scale.lerp_(std, momentum)


def fleet_batch(agent: FleetActorCritic, observations: torch.Tensor, z: torch.Tensor, log_prob: torch.Tensor,
                rewards: torch.Tensor, gamma: float, lam: float, *, global_state: torch.Tensor | None = None,
                running_values: bool = False) -> FleetBatch:
    """One fleet's :class:`FleetBatch` from a rollout: ``observations [B, T, N, k]``, sampled
    ``z [B, T, N, d]``, behaviour ``log_prob [B, T, N]``, ``rewards [B, T, N]`` (EUR) and, for a
    centralised critic, ``global_state [B, T, G]``. Values come from the critic (no gradient),
    de-normalised to EUR for GAE; advantages are divided by ``return_scale`` and returns
    normalised as the critic predicts them (after the running update when ``running_values``)."""
    obs = to_agent_major(observations).to(agent.log_std.dtype)  # [N, M, k]
    b, steps, n = rewards.shape
    gs = None if global_state is None else global_state.reshape(b * steps, -1).to(agent.log_std.dtype)
    with torch.no_grad():
        values = agent.value_agent_major(obs, gs).transpose(0, 1).reshape(b, steps, n)
    values_eur = values * agent.return_scale + agent.return_mean
    adv, returns_eur = gae(rewards.to(values.dtype), values_eur, gamma, lam)
    if running_values:
        update_return_statistics(agent, returns_eur)
    returns = (returns_eur - agent.return_mean) / agent.return_scale
    return FleetBatch(obs, to_agent_major(z), to_agent_major(log_prob), to_agent_major(adv / agent.return_scale),
                      to_agent_major(returns), to_agent_major(values), gs)


@dataclass
class PPOSettings:
    """The update's hyperparameters (the learner's ``Config`` documents each)."""

    clip: float = 0.2
    epochs: int = 10
    minibatches: int = 4
    value_coef: float = 0.5
    entropy_coef: float = 0.0
    max_grad_norm: float = 0.5
    normalise_advantages: bool = True


def ppo_loss(agent: FleetActorCritic, batch: FleetBatch, advantages: torch.Tensor, idx: torch.Tensor,
             settings: PPOSettings) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Per-agent loss ``L_i [N]`` (module docstring) on the samples ``idx`` of ``batch`` with the
    (already standardised) ``advantages [N, M]``; and per-agent ``policy_loss``, ``value_loss``,
    ``entropy``, ``approx_kl``, ``clip_fraction`` ``[N]`` (detached)."""
    gs = None if batch.global_state is None else batch.global_state[idx]
    log_prob, value, entropy = agent.evaluate(batch.obs[:, idx], batch.z[:, idx], gs)
    log_ratio = log_prob - batch.log_prob[:, idx]
    ratio = log_ratio.exp()
    a = advantages[:, idx]
    surrogate = torch.minimum(ratio * a, ratio.clamp(1 - settings.clip, 1 + settings.clip) * a)
    policy_loss = -surrogate.mean(1)  # [N]
    value_loss = 0.5 * (value - batch.returns[:, idx]).square().mean(1)  # [N]
    per_agent = policy_loss + settings.value_coef * value_loss - settings.entropy_coef * entropy
    with torch.no_grad():
        stats = {"policy_loss": policy_loss.detach(), "value_loss": value_loss.detach(),
                 "entropy": entropy.detach(), "approx_kl": ((ratio - 1) - log_ratio).mean(1),
                 "clip_fraction": ((ratio - 1).abs() > settings.clip).to(ratio.dtype).mean(1)}
    return per_agent, stats


def clip_grad_norms_(agent: FleetActorCritic, max_norm: float) -> None:
    """Per-agent clipping of actor and critic separately; parameters without the agent index as
    leading dimension (shared: leading 1) are clipped as one group."""
    for params in (agent.actor_parameters(), agent.critic_parameters()):
        groups: dict[int, list] = {}
        for p in params:
            if p.grad is not None:
                groups.setdefault(p.shape[0], []).append(p)
        for group in groups.values():
            clip_grad_norm_per_agent_(group, max_norm)


def ppo_update(agents: list[FleetActorCritic], batches: list[FleetBatch], optimizer: torch.optim.Optimizer,
               settings: PPOSettings, generator: torch.Generator) -> tuple[dict[str, float], int]:
    """``settings.epochs`` passes of ``settings.minibatches`` clipped-PPO steps over every fleet.

    Returns statistics of the last epoch, averaged over agents (``policy_loss``, ``value_loss``,
    ``entropy``, ``approx_kl`` = mean of ``(rho - 1) - log rho``, ``clip_fraction``) and the number
    of optimiser steps.
    """
    advantages = []
    for batch in batches:
        a = batch.advantages
        if settings.normalise_advantages:
            a = (a - a.mean(1, keepdim=True)) / (a.std(1, keepdim=True) + 1e-8)  # per agent
        advantages.append(a)
    n_samples = batches[0].obs.shape[1]
    minibatches = max(1, min(settings.minibatches, n_samples))
    n_agents = sum(agent.n_agents for agent in agents)
    steps = 0
    stats: dict[str, float] = {}
    for _ in range(settings.epochs):
        perm = torch.randperm(n_samples, generator=generator).to(batches[0].obs.device)
        sums = dict.fromkeys(("policy_loss", "value_loss", "entropy", "approx_kl", "clip_fraction"), 0.0)
        for idx in perm.chunk(minibatches):
            weight = idx.numel() / n_samples
            optimizer.zero_grad(set_to_none=True)
            loss = 0.0
            for agent, batch, adv in zip(agents, batches, advantages):
                per_agent, parts = ppo_loss(agent, batch, adv, idx, settings)
                loss = loss + agent.loss_weight * per_agent.sum()
                for key, value in parts.items():
                    sums[key] += float(value.sum()) * weight
            loss.backward()
            for agent in agents:
                clip_grad_norms_(agent, settings.max_grad_norm)
            optimizer.step()
            steps += 1
        stats = {k: v / n_agents for k, v in sums.items()}
    return stats, steps


def explained_variance(values: torch.Tensor, returns: torch.Tensor) -> float:
    """``1 - Var(R - V) / Var(R)`` over all samples (a diagnostic; nan if ``R`` is constant)."""
    var = returns.var()
    return float(1.0 - (returns - values).var() / var) if float(var) > 0 else float("nan")
