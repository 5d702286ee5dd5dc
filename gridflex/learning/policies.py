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

import copy
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
    def update(self, obs: torch.Tensor, agents: slice | None = None) -> None:
        """Merge ``obs [..., N, k]`` (leading dims are samples) into the running statistics.

        ``agents``: ``obs`` holds a whole fleet and these statistics are its agents ``agents``
        (a process's block of a sharded fleet, docs/distributed.md). The batch moments are then
        computed over the whole fleet and sliced, so they are bitwise those of one process."""
        x = obs.detach().to(self.mean.dtype).reshape(-1, *obs.shape[-2:])  # [M, N, k]
        m = x.shape[0]
        if m == 0:
            return
        batch_mean = x.mean(0)
        batch_var = x.var(0, unbiased=False)
        if agents is not None:
            batch_mean, batch_var = batch_mean[agents], batch_var[agents]
        n = float(self.count)
        total = n + m
        delta = batch_mean - self.mean
        self.mean += delta * (m / total)
        self.var.copy_((self.var * n + batch_var * m + delta.square() * (n * m / total)) / total)
        self.count.fill_(total)

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        z = (obs.to(self.mean.dtype) - self.mean) / torch.sqrt(self.var + self.eps)
        return z.clamp(-self.clip, self.clip)


# ----------------------------------------------------------------------------- sharded blocks
# A process that holds a block of a fleet (docs/distributed.md) must compute its agents' outputs
# and gradients bitwise as one process does for the whole fleet. Two CPU kernels depend on the
# agent count: an element-wise kernel computes the last few elements (in memory order) with a
# scalar loop (for sigmoid, a scalar exp that can differ from the SIMD one by one ulp), and a
# reduction over an outer dimension vectorises over the inner ones with a scalar remainder. The
# block's sigmoid and its output-layer bias gradient (a sum over samples of a gradient laid out
# day-major when the policy acts) are therefore evaluated on a zero-padded tensor laid out in
# memory as the whole fleet's; every other per-agent operation is a batched GEMM, an element-wise
# operation or a per-agent reduction whose result does not depend on the agent count.
def _in_whole_layout(fn, x: torch.Tensor, agent_dim: int, start: int, total: int) -> torch.Tensor:
    """``fn`` applied to ``x`` (agents ``start..start+n-1`` of ``total`` along ``agent_dim``)
    zero-padded to the whole fleet with ``x``'s memory order, narrowed back to the block."""
    order = sorted(range(x.dim()), key=lambda i: -x.stride(i))  # outermost first
    xp = x.permute(order)  # contiguous for a dense x
    dim, n = order.index(agent_dim), x.shape[agent_dim]
    shape = list(xp.shape)
    shape[dim] = total
    whole = xp.new_zeros(shape)
    whole.narrow(dim, start, n).copy_(xp)
    return fn(whole.permute([order.index(i) for i in range(x.dim())])).narrow(agent_dim, start, n)


class _WholeLayoutSigmoid(torch.autograd.Function):
    """``sigmoid(logits)`` of a block, bitwise as on the whole fleet; the result has the strides
    ``torch.sigmoid(logits)`` gives, and the backward is sigmoid's own, so gradients take the
    layout they have in one process."""

    @staticmethod
    def forward(ctx, logits: torch.Tensor, agent_dim: int, start: int, total: int):  # noqa: D102
        out = torch.empty_like(logits)
        out.copy_(_in_whole_layout(torch.sigmoid, logits, agent_dim, start, total))
        ctx.save_for_backward(out)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # noqa: D102
        (out,) = ctx.saved_tensors
        return torch.ops.aten.sigmoid_backward(grad, out), None, None, None


class _WholeLayoutBias(torch.autograd.Function):
    """A block's bias ``[N, 1, out]`` expanded over ``M`` samples for ``baddbmm``; its gradient is
    the sum over samples (what autograd does for a broadcast bias) taken in the whole layout."""

    @staticmethod
    def forward(ctx, bias: torch.Tensor, samples: int, start: int, total: int):  # noqa: D102
        ctx.block = (start, total)
        return bias.expand(bias.shape[0], samples, bias.shape[2])

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # noqa: D102
        return _in_whole_layout(lambda g: g.sum(1, keepdim=True), grad, 0, *ctx.block), None, None, None


class StackedMLP(nn.Module):
    """``N`` independent MLPs ``in -> hidden... -> out`` as stacked weights.

    Parameters ``weight_l [N, fan_in, fan_out]`` and ``bias_l [N, fan_out]``. :meth:`forward` maps
    ``x [..., N, in]`` to ``[..., N, out]`` (no output activation) with one ``baddbmm`` per layer.
    Initialisation: each agent's layers are drawn independently (orthogonal-like scaled normal);
    the last layer is scaled by ``out_scale`` so initial outputs are near the output bias.
    ``whole = (start, N_whole)`` for a block of a sharded fleet (see above), else ``None``.
    """

    whole: tuple[int, int] | None = None

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
            bias = b.unsqueeze(1)
            if layer == n_layers - 1 and self.whole is not None and h.device.type == "cpu":
                bias = _WholeLayoutBias.apply(bias, h.shape[1], *self.whole)
            h = torch.baddbmm(bias, h, w)  # [N, M, fan_out]
            if layer < n_layers - 1:
                h = self.activation(h)
        return h


class FleetPolicy(nn.Module):
    """The policies of one fleet: per-agent normalisation, stacked MLPs, a sigmoid.

    ``forward(obs [..., N, k]) -> u [..., N, d]`` in ``(0, 1)``; computed in the policy dtype
    (float32 by default) and returned in the observation's dtype.

    A block of a fleet sharded over processes (:meth:`select_agents`) knows its place in the
    whole fleet (``whole = (start, N_whole)``) for :meth:`squash` and its output layer.
    """

    whole: tuple[int, int] | None = None

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
        return self.squash(self.logits(obs), agent_dim=-2).to(obs.dtype)

    def squash(self, logits: torch.Tensor, agent_dim: int) -> torch.Tensor:
        """``sigmoid(logits)`` (agents along ``agent_dim``). For a block of a sharded fleet on CPU
        it is evaluated on a zero-padded tensor laid out in memory as the whole fleet's logits
        would be (:class:`_WholeLayoutSigmoid`), so that every agent gets bitwise its output in
        one process (docs/distributed.md); ``O(N_whole)`` elements per call."""
        if self.whole is None or logits.device.type != "cpu":
            return torch.sigmoid(logits)
        return _WholeLayoutSigmoid.apply(logits, agent_dim % logits.dim(), *self.whole)

    def select_agents(self, start: int, stop: int) -> FleetPolicy:
        """A copy holding agents ``start <= i < stop`` only (their weights and observation
        statistics; every per-agent tensor has the agent index as its leading dimension), with
        ``whole = (start, N)`` for :meth:`squash`."""
        part = copy.deepcopy(self)
        with torch.no_grad():
            for param in part.parameters():
                param.data = param.data[start:stop].clone()
            for module in part.modules():
                for name, buf in module._buffers.items():
                    if buf is not None and buf.dim():
                        module._buffers[name] = buf[start:stop].clone()
        base, total = self.whole or (0, self.n_agents)
        part.whole = part.mlp.whole = (base + start, total)
        part.n_agents = part.mlp.n_agents = stop - start
        return part


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
        """Every fleet's policies, drawn fleet by fleet from one generator seeded ``seed``; on an
        environment sharded over processes, this process's agents of them (all agents are drawn,
        then selected, so an agent's initial weights do not depend on the number of processes)."""
        generator = torch.Generator().manual_seed(int(seed))
        policies = (FleetPolicy(f.n_agents, env.obs_dim(i), f.model.action_dim, hidden, activation,
                                out_scale, generator, dtype, env.device)
                    for i, f in enumerate(env.fleets))
        shard = getattr(env, "shard", None)
        if shard is None:
            return cls(policies)
        return cls(p.select_agents(*shard.bounds(i)) for i, p in enumerate(policies))


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
