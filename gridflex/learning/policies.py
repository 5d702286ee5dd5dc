"""Independent per-agent policies held as stacked weights (docs/design.md §3).

Agent ``i`` of a fleet of ``N`` agents has its own MLP ``pi_{theta_i}``: nothing is shared. All
``N`` networks are stored as stacked tensors (``W1 [N, in, h]``, ``b1 [N, h]``, ...) and applied
with one batched matrix product per layer (``torch.baddbmm``), so a forward pass over all agents
is a handful of kernels regardless of ``N``.

Shapes: observations ``[..., N, k]`` (any leading batch dims, e.g. ``[B, T]`` or ``[B]``), outputs
``u [..., N, d]`` in ``(0, 1)`` through a sigmoid. Every parameter tensor has the agent index as its
leading dimension, which is what makes the per-agent operations below (gradient clipping, state
selection) one-liners and what the decentralisation tests check.

Observation normalisation is per agent and feature: agent ``i``'s running mean and variance are
computed from agent ``i``'s own observations only (:class:`AgentNormaliser`).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

ACTIVATIONS = {"tanh": torch.tanh, "relu": torch.relu, "silu": nn.functional.silu}


class AgentNormaliser(nn.Module):
    """Per-agent, per-feature running mean and variance of observations ``[..., N, k]``.

    Statistics are buffers ``mean [N, k]``, ``var [N, k]``, ``count`` (samples per agent, the
    same for every agent since each agent sees one observation per sample). :meth:`update` merges
    a batch with Chan's parallel algorithm; the statistic of agent ``i`` depends on agent ``i``'s
    observations only. Normalised features are clipped to ``+-clip``.
    """

    def __init__(self, n_agents: int, n_features: int, clip: float = 5.0, eps: float = 1e-4,
                 dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu"):
        super().__init__()
        self.clip = clip
        self.eps = eps
        self.register_buffer("mean", torch.zeros(n_agents, n_features, dtype=dtype, device=device))
        self.register_buffer("var", torch.ones(n_agents, n_features, dtype=dtype, device=device))
        self.register_buffer("count", torch.zeros((), dtype=torch.float64, device=device))

    @torch.no_grad()
    def update(self, obs: torch.Tensor) -> None:
        """Merge ``obs [..., N, k]`` (leading dims are samples) into the running statistics."""
        x = obs.detach().to(self.mean.dtype).reshape(-1, *self.mean.shape)  # [M, N, k]
        m = x.shape[0]
        if m == 0:
            return
        batch_mean = x.mean(0)
        batch_var = x.var(0, unbiased=False)
        n = float(self.count)
        total = n + m
        delta = batch_mean - self.mean
        self.mean += delta * (m / total)
        self.var.copy_((self.var * n + batch_var * m + delta.square() * (n * m / total)) / total)
        self.count.fill_(total)

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        z = (obs.to(self.mean.dtype) - self.mean) / torch.sqrt(self.var + self.eps)
        return z.clamp(-self.clip, self.clip)


class StackedMLP(nn.Module):
    """``N`` independent MLPs ``in -> hidden... -> out`` as stacked weights.

    Parameters ``weight_l [N, fan_in, fan_out]`` and ``bias_l [N, fan_out]``. :meth:`forward` maps
    ``x [..., N, in]`` to ``[..., N, out]`` (no output activation) with one ``baddbmm`` per layer.
    Initialisation: each agent's layers are drawn independently (orthogonal-like scaled normal);
    the last layer is scaled by ``out_scale`` so initial outputs are near the output bias.
    """

    def __init__(self, n_agents: int, in_dim: int, out_dim: int, hidden: Sequence[int],
                 activation: str = "tanh", out_scale: float = 0.01,
                 generator: torch.Generator | None = None,
                 dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu"):
        super().__init__()
        self.n_agents = n_agents
        self.activation = ACTIVATIONS[activation]
        sizes = [in_dim, *hidden, out_dim]
        self.weights = nn.ParameterList()
        self.biases = nn.ParameterList()
        for layer, (fan_in, fan_out) in enumerate(zip(sizes[:-1], sizes[1:])):
            last = layer == len(sizes) - 2
            std = (out_scale if last else 1.0) / math.sqrt(fan_in)
            w = torch.randn(n_agents, fan_in, fan_out, generator=generator, dtype=dtype) * std
            self.weights.append(nn.Parameter(w.to(device)))
            self.biases.append(nn.Parameter(torch.zeros(n_agents, fan_out, dtype=dtype, device=device)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lead = x.shape[:-2]
        n, k = x.shape[-2:]
        h = self.forward_agent_major(x.reshape(-1, n, k).transpose(0, 1))  # [N, M, out]
        return h.transpose(0, 1).reshape(*lead, n, h.shape[-1])

    def forward_agent_major(self, h: torch.Tensor) -> torch.Tensor:
        """``[N, M, in] -> [N, M, out]`` (agent-major samples: no transposes on the hot path)."""
        n_layers = len(self.weights)
        for layer, (w, b) in enumerate(zip(self.weights, self.biases)):
            h = torch.baddbmm(b.unsqueeze(1), h, w)  # [N, M, fan_out]
            if layer < n_layers - 1:
                h = self.activation(h)
        return h


class FleetPolicy(nn.Module):
    """The policies of one fleet: per-agent normalisation, stacked MLPs, a sigmoid.

    ``forward(obs [..., N, k]) -> u [..., N, d]`` in ``(0, 1)``; computed in the policy dtype
    (float32 by default) and returned in the observation's dtype.
    """

    def __init__(self, n_agents: int, obs_dim: int, action_dim: int, hidden: Sequence[int],
                 activation: str = "tanh", out_scale: float = 0.01,
                 generator: torch.Generator | None = None,
                 dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu"):
        super().__init__()
        self.n_agents, self.obs_dim, self.action_dim = n_agents, obs_dim, action_dim
        self.normaliser = AgentNormaliser(n_agents, obs_dim, dtype=dtype, device=device)
        self.mlp = StackedMLP(n_agents, obs_dim, action_dim, hidden, activation, out_scale,
                              generator, dtype, device)

    def logits(self, obs: torch.Tensor) -> torch.Tensor:
        return self.mlp(self.normaliser(obs))

    def logits_agent_major(self, obs: torch.Tensor) -> torch.Tensor:
        """Logits ``[N, M, d]`` of agent-major observations ``[N, M, k]`` (the fitting path)."""
        norm = self.normaliser
        z = (obs - norm.mean.unsqueeze(1)) / torch.sqrt(norm.var.unsqueeze(1) + norm.eps)
        return self.mlp.forward_agent_major(z.clamp(-norm.clip, norm.clip))

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.logits(obs)).to(obs.dtype)


@dataclass(frozen=True)
class DeployablePolicy:
    """A fleet's deterministic controller in exportable parts (``gridflex export``).

    ``u = squash(policy.logits(obs) + offset)`` ``[..., N, d]``: ``squash`` is ``"sigmoid"``
    (``1 / (1 + exp(-x))``) or ``"clip"`` (``clip(x, 0, 1)``); ``offset`` is a constant in logit
    (sigmoid) or u (clip) units. A learner that can be exported returns one per fleet from
    ``deployable_policies()``.
    """

    policy: FleetPolicy
    squash: str = "sigmoid"
    offset: float = 0.0

    def __call__(self, obs: torch.Tensor) -> torch.Tensor:
        x = self.policy.logits(obs) + self.offset
        u = torch.sigmoid(x) if self.squash == "sigmoid" else x.clamp(0.0, 1.0)
        return u.to(obs.dtype)


class PolicySet(nn.ModuleList):
    """One :class:`FleetPolicy` per fleet of an environment, in fleet order."""

    @classmethod
    def for_env(cls, env, hidden: Sequence[int], activation: str = "tanh",
                out_scale: float = 0.01, seed: int = 0,
                dtype: torch.dtype = torch.float32) -> PolicySet:
        generator = torch.Generator().manual_seed(int(seed))
        return cls(
            FleetPolicy(f.n_agents, env.obs_dim(i), f.model.action_dim, hidden, activation,
                        out_scale, generator, dtype, env.device)
            for i, f in enumerate(env.fleets)
        )


# ----------------------------------------------------------------------------- per-agent ops
def per_agent_grad_norm(params: Iterable[nn.Parameter]) -> torch.Tensor:
    """Per-agent gradient norm ``[N]`` over parameters whose leading dim is the agent index."""
    squares = None
    for p in params:
        if p.grad is None:
            continue
        s = p.grad.detach().reshape(p.shape[0], -1).square().sum(1)
        squares = s if squares is None else squares + s
    if squares is None:
        raise ValueError("no gradients to measure")
    return squares.sqrt()


@torch.no_grad()
def clip_grad_norm_per_agent_(params: Iterable[nn.Parameter], max_norm: float) -> torch.Tensor:
    """Scale each agent's gradient (over all its parameters) to norm <= ``max_norm`` in place.

    Agent ``i``'s scale depends on agent ``i``'s gradient only, so clipping never couples agents
    (unlike ``torch.nn.utils.clip_grad_norm_``, whose global norm does). Returns the norms ``[N]``
    before clipping.
    """
    params = [p for p in params if p.grad is not None]
    norms = per_agent_grad_norm(params)
    scale = (max_norm / (norms + 1e-12)).clamp(max=1.0)
    for p in params:
        p.grad.mul_(scale.reshape(-1, *([1] * (p.dim() - 1))).to(p.grad.dtype))
    return norms
