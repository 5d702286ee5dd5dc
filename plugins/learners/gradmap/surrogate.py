"""GradMAP's proximal surrogate in action space and the batched regression that minimises it.

With the environment gradient ``G = dL/du`` frozen at the rolled-out outputs ``u`` and the
observations ``o`` frozen, the surrogate (docs/design.md §3, step 3)::

    S(theta) = sum [ G^T (pi_theta(o) - u) + ||pi_theta(o) - u||^2 / (2 eta) ],
               subject to ||pi_theta(o) - u||_inf <= delta

equals ``||pi_theta(o) - (u - eta G)||^2 / (2 eta)`` up to a constant, and the box-constrained
minimiser of each (separable, isotropic) term is ``y = clip(u - eta G, u - delta, u + delta)``
(also clipped to ``[0, 1]``, the range of ``pi``). So the inner epochs regress every agent's policy
onto its targets ``y``. The regression separates across agents; it runs as one batched kernel
per layer over all agents of a fleet (``StackedMLP``), with a few large minibatches of samples.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from gridflex.learning.policies import FleetPolicy, clip_grad_norm_per_agent_


@dataclass
class ProximalTargets:
    """Regression targets ``y [B, T, N, d]`` per fleet and the share clipped by the trust region."""

    targets: list[torch.Tensor]
    clipped_share: float


def normalise_gradient(g: torch.Tensor, mode: str) -> torch.Tensor:
    """Scale ``G [B, T, N, d]`` so that ``eta`` is a step in u-units.

    ``"fleet_rms"``: divide by the RMS over the whole fleet (one scale per fleet: keeps the
    relative sizes between agents and between cost and constraints). ``"agent_rms"``: divide by
    each agent's own RMS over days, steps and outputs (every agent moves about ``eta``).
    ``"none"``: raw EUR/day per unit of ``u``.
    """
    if mode == "none":
        return g
    if mode == "fleet_rms":
        return g / (g.square().mean().sqrt() + 1e-12)
    if mode == "agent_rms":
        return g / (g.square().mean((0, 1, 3), keepdim=True).sqrt() + 1e-12)
    raise ValueError(f"unknown gradient normalisation {mode!r}")


def proximal_targets(u: list[torch.Tensor], g: list[torch.Tensor], eta: float,
                     delta: float | None) -> ProximalTargets:
    """``y = clip(clip(u - eta G, u - delta, u + delta), 0, 1)`` per fleet (``delta=None``: no trust region)."""
    targets, clipped, total = [], 0, 0
    for u_f, g_f in zip(u, g):
        step = -eta * g_f
        if delta is not None and math.isfinite(delta):
            clipped += int((step.abs() > delta).sum())
            step = step.clamp(-delta, delta)
        total += step.numel()
        targets.append((u_f + step).clamp(0.0, 1.0))
    return ProximalTargets(targets, clipped / max(total, 1))


def fit_policies(policies: list[FleetPolicy], observations: list[torch.Tensor], targets: list[torch.Tensor],
                 optimizer: torch.optim.Optimizer, epochs: int, minibatches: int, max_grad_norm: float,
                 generator: torch.Generator, gather: Gather | None = None) -> tuple[float, int]:
    """Regress each fleet's policies onto ``targets`` (``[B, T, N, d]``) from ``observations``
    (``[B, T, N, k]``) for ``epochs`` passes of ``minibatches`` minibatches over the ``B*T``
    samples (one permutation per epoch shared by all agents: it does not couple them).

    Loss: per agent, mean over samples of the squared error summed over outputs; summed over
    agents and fleets (so each agent's gradient is its own). Per-agent gradient clipping, one
    optimiser step per minibatch. Returns the last epoch's mean loss per agent and the number of
    optimiser steps. With agents sharded over processes (docs/distributed.md), ``policies`` are
    this process's, every process draws the same permutations from its copy of ``generator``, and
    ``gather`` (:meth:`~gridflex.learning.distributed.AgentShard.gather_agents`) collects the
    last epoch's per-agent losses once, so the returned loss is bitwise one process's.
    """
    dtype = policies[0].normaliser.mean.dtype
    # agent-major, contiguous once: [N, S, k] and [N, S, d]; minibatches index dim 1
    xs = [o.detach().reshape(-1, *o.shape[-2:]).transpose(0, 1).to(dtype).contiguous() for o in observations]
    ys = [y.detach().reshape(-1, *y.shape[-2:]).transpose(0, 1).to(dtype).contiguous() for y in targets]
    n_samples = xs[0].shape[1]
    minibatches = max(1, min(minibatches, n_samples))
    n_agents = sum(p.n_agents for p in policies)
    steps, last = 0, 0.0
    recorded: list[tuple[int, list[torch.Tensor]]] = []  # last epoch: (samples, per-agent losses per fleet)
    for epoch in range(epochs):
        perm = torch.randperm(n_samples, generator=generator).to(xs[0].device)
        epoch_loss = torch.zeros((), dtype=dtype, device=xs[0].device)
        for idx in perm.chunk(minibatches):
            optimizer.zero_grad(set_to_none=True)
            loss, per_fleet = 0.0, []
            for policy, x, y in zip(policies, xs, ys):
                pred = policy.squash(policy.logits_agent_major(x[:, idx]), agent_dim=0)  # [N, m, d]
                per_agent = (pred - y[:, idx]).square().sum(-1).mean(1)  # [N]
                per_fleet.append(per_agent.detach())
                loss = loss + per_agent.sum()
            loss.backward()
            for policy in policies:
                clip_grad_norm_per_agent_(policy.mlp.parameters(), max_grad_norm)
            optimizer.step()
            steps += 1
            epoch_loss += loss.detach() * (idx.numel() / n_samples)
            if gather is not None and epoch == epochs - 1:
                recorded.append((idx.numel(), per_fleet))
    last = float(epoch_loss) / n_agents if epochs else 0.0  # read once: a GPU runs the epochs unsynchronised
    if gather is not None and recorded:
        last = _whole_fleet_loss(recorded, gather, n_samples)
    return last, steps


#: ``AgentShard.gather_agents``: ``[(fleet, this process's per-agent tensor, agent dim)]`` -> every agent's
Gather = Callable[[list[tuple[int, torch.Tensor, int]]], list[torch.Tensor]]


def _whole_fleet_loss(recorded: list[tuple[int, list[torch.Tensor]]], gather: Gather, n_samples: int) -> float:
    """:func:`fit_policies`' last-epoch loss over every process's agents, summed in the order
    one process sums it (from the per-agent losses ``[N_f]`` of each minibatch, gathered once)."""
    full = gather([(f, a, 0) for _, per_fleet in recorded for f, a in enumerate(per_fleet)])
    epoch_loss, k, n_agents = full[0].new_zeros(()), 0, 0
    for m, per_fleet in recorded:
        loss, n_agents = 0.0, 0
        for whole in full[k:k + len(per_fleet)]:
            loss, n_agents = loss + whole.sum(), n_agents + whole.numel()
        k += len(per_fleet)
        epoch_loss += loss * (m / n_samples)
    return float(epoch_loss) / n_agents
