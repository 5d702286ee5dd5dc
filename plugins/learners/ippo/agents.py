"""Independent Gaussian actors and critics of one fleet, held as stacked per-agent weights.

Agent ``i`` of a fleet of ``N`` agents owns

* an **actor**: the mean ``mu_i(o) in R^d`` of a diagonal Gaussian over a pre-squash action
  ``x``, computed by :class:`gridflex.learning.policies.FleetPolicy`'s per-agent normaliser and stacked
  MLP (its logits, plus a constant offset), and its own state-independent log-std
  ``log_sigma_i in R^d``;
* a **critic**: ``V_i(o)`` (a stacked MLP with one output), fed with the same per-agent
  normalised observation.

By default nothing is shared: every parameter tensor has the agent index as its leading dimension
(``weight [N, fan_in, fan_out]``, ``log_std [N, d]``), and agent ``i``'s outputs read only row
``i`` of the observations. The observation statistics are agent ``i``'s own
(:class:`gridflex.learning.policies.AgentNormaliser`).

**Parameter sharing** (``shared=True``, one network per device type; MAPPO practice): one actor
MLP, one log-std ``[1, d]`` and one critic MLP for the fleet, fed with agent ``i``'s normalised
observation and its **static features** ``f_i`` (ratings, electrical position: standardised
over the fleet, ``static [N, s]``). Execution stays decentralised: agent ``i`` runs the shared
network on its own observation and its own constants; :meth:`FleetActorCritic.export_policy`
writes it as an ordinary per-agent :class:`~gridflex.learning.policies.FleetPolicy` (the static
features folded into agent ``i``'s first-layer bias), so export and deployment are unchanged.
The agent-major update runs the shared MLP as one ``[1, N*M, in]`` matrix product per layer.

**Centralised critic** (``global_dim > 0``, MAPPO; training only): ``V_i(s, o_i, f_i)`` with the
global state ``s [M, G]`` (normalised by its own running statistics) entering the first hidden
layer through one shared projection ``[G, h]`` added to the agent's local first layer, so the
global state is projected once per sample, not once per agent.

**Bounded actions and the log-probability** (``squash``). The device needs ``u in [0, 1]^d``.
Two exact choices, selected per learner:

* ``"clip"`` (default): the actor's Gaussian lives in ``u``-space with mean ``mu = f(o) + 0.5``
  (unbounded) and the applied action is ``u = clip(x, 0, 1)``, ``x ~ N(mu, sigma^2)``. The applied
  action is then a *censored* Gaussian: a density inside ``(0, 1)`` and point masses
  ``Phi((0 - mu)/sigma)`` at 0 and ``Phi((mu - 1)/sigma)`` at 1. We store the applied ``u`` and
  evaluate its exact log-likelihood under that distribution (the density inside, the log of the
  tail mass at a bound; Fujita & Maeda, "Clipped Action Policy Gradient", ICML 2018), so the PPO
  ratio is the true ratio of the applied actions' probabilities. Bang-bang optima (full charge at
  the cheapest hour) are reached with a finite mean, which matters for arbitrage. Deterministic
  controller: ``clip(mu, 0, 1)``.
* ``"sigmoid"``: ``x ~ N(mu, sigma^2)`` in logit space, ``u = sigmoid(x)``. The sigmoid is a fixed
  bijection, so ``log pi(u) = log N(x) - sum_d log(u_d (1 - u_d))`` and the Jacobian cancels in the
  ratio: we store ``x`` and use Gaussian log-densities, exactly. Reaching a bound needs
  ``|mu| -> inf``, which slows bang-bang policies (measured on the toy of tests/test_ippo.py).
  Deterministic controller: ``sigmoid(mu)`` (the median of ``u``).

In both cases the entropy bonus is that of the underlying Gaussian, ``sum_d (log sigma_d +
(1 + log 2 pi)/2)``, a state-independent function of ``log_sigma`` (not the entropy of the
censored or squashed ``u``).

Shapes: batch-major observations ``[..., N, k]`` for acting; agent-major ``[N, M, k]`` (``M``
samples) on the update path, where :meth:`FleetActorCritic.evaluate` returns log-probs and values
``[N, M]``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from gridflex.learning.policies import ACTIVATIONS, AgentNormaliser, FleetPolicy, StackedMLP

LOG_2PI = math.log(2.0 * math.pi)


def gaussian_log_prob(z: torch.Tensor, mean: torch.Tensor, log_std: torch.Tensor) -> torch.Tensor:
    """``sum_d log N(z_d; mean_d, exp(log_std_d)^2)``: ``[..., d] -> [...]`` (nats)."""
    return (-0.5 * ((z - mean) * torch.exp(-log_std)).square() - log_std - 0.5 * LOG_2PI).sum(-1)


def censored_log_prob(u: torch.Tensor, mean: torch.Tensor, log_std: torch.Tensor) -> torch.Tensor:
    """Log-likelihood of ``u = clip(x, 0, 1)``, ``x ~ N(mean, exp(log_std)^2)``: ``[..., d] -> [...]``.

    Inside ``(0, 1)`` the Gaussian log-density; at ``u <= 0`` the log-mass ``log Phi(-mean/sigma)``;
    at ``u >= 1`` ``log Phi((mean - 1)/sigma)`` (a mixed measure: density w.r.t. Lebesgue inside,
    w.r.t. counting at the bounds; ratios of two such likelihoods at the same ``u`` are exact).
    """
    inv_std = torch.exp(-log_std)
    inside = -0.5 * ((u - mean) * inv_std).square() - log_std - 0.5 * LOG_2PI
    low = torch.special.log_ndtr(-mean * inv_std)
    high = torch.special.log_ndtr((mean - 1.0) * inv_std)
    return torch.where(u <= 0.0, low, torch.where(u >= 1.0, high, inside)).sum(-1)


def gaussian_entropy(log_std: torch.Tensor) -> torch.Tensor:
    """Entropy of a diagonal Gaussian ``[..., d] -> [...]`` (nats)."""
    return (log_std + 0.5 * (1.0 + LOG_2PI)).sum(-1)


class FleetActorCritic(nn.Module):
    """The ``N`` actors and critics of one fleet (module docstring).

    ``squash`` is ``"clip"`` or ``"sigmoid"`` (module docstring). ``log_std_bounds`` clamps
    ``log_sigma`` wherever it is used (not the stored parameter), so the exploration noise stays
    inside ``[exp(lo), exp(hi)]`` (u-units for ``clip``, logit units for ``sigmoid``).
    ``shared``: one network per fleet with ``static [N, s]`` agent features as extra inputs;
    ``global_dim``: size ``G`` of the centralised critic's global state (0: local critic);
    ``actor_out_scale``: initial scale of the actors' last layer (0: the mean starts at the offset).
    """

    def __init__(self, n_agents: int, obs_dim: int, action_dim: int, hidden: Sequence[int],
                 critic_hidden: Sequence[int], activation: str = "tanh", squash: str = "clip",
                 log_std_init: float = -1.0,
                 log_std_bounds: tuple[float, float] = (-5.0, 1.0),
                 generator: torch.Generator | None = None, dtype: torch.dtype = torch.float32,
                 device: torch.device | str = "cpu", *, shared: bool = False,
                 static: torch.Tensor | None = None, global_dim: int = 0, actor_out_scale: float = 0.01):
        super().__init__()
        if squash not in ("clip", "sigmoid"):
            raise ValueError(f"squash must be 'clip' or 'sigmoid', not {squash!r}")
        self.n_agents, self.obs_dim, self.action_dim = n_agents, obs_dim, action_dim
        self.squash = squash
        self.mean_offset = 0.5 if squash == "clip" else 0.0  # clip: the initial mean is mid-range
        self.log_std_bounds = tuple(log_std_bounds)
        self.shared = bool(shared)
        self.global_dim = int(global_dim)
        if self.shared:
            static = torch.zeros(n_agents, 0) if static is None else static
            self.register_buffer("static", static.to(dtype=dtype, device=device))
            s = self.static.shape[1]
            self.policy = None
            self._normaliser = AgentNormaliser(n_agents, obs_dim, dtype=dtype, device=device)
            self.actor_mlp = StackedMLP(1, obs_dim + s, action_dim, hidden, activation, actor_out_scale,
                                        generator, dtype, device)
            rows = 1
        else:
            self.register_buffer("static", torch.zeros(n_agents, 0, dtype=dtype, device=device))
            self.policy = FleetPolicy(n_agents, obs_dim, action_dim, hidden, activation, actor_out_scale,
                                      generator, dtype, device)
            rows = n_agents
        self.log_std = nn.Parameter(torch.full((rows, action_dim), float(log_std_init),
                                               dtype=dtype, device=device))
        critic_in = obs_dim + self.static.shape[1]
        self.critic = StackedMLP(rows, critic_in, 1, critic_hidden, activation, 1.0,
                                 generator, dtype, device)
        if self.global_dim:
            width = list(critic_hidden)[0] if list(critic_hidden) else 1
            w = torch.randn(1, self.global_dim, width, generator=generator, dtype=dtype) / math.sqrt(self.global_dim)
            self.global_proj = nn.Parameter(w.to(device))
            self.global_norm = AgentNormaliser(1, self.global_dim, dtype=dtype, device=device)
        # per-agent location and scale of the returns the critic predicts (EUR): fixed from the
        # warm-up rollout, or running statistics (value normalisation)
        self.register_buffer("return_scale", torch.ones(n_agents, dtype=dtype, device=device))
        self.register_buffer("return_mean", torch.zeros(n_agents, dtype=dtype, device=device))

    @property
    def normaliser(self) -> AgentNormaliser:
        return self._normaliser if self.shared else self.policy.normaliser

    @property
    def loss_weight(self) -> float:
        """Weight of each agent's loss in the fleet's sum: ``1/N`` for a shared network (the mean
        over agents, MAPPO practice), 1 for independent networks (each its own sum)."""
        return 1.0 / self.n_agents if self.shared else 1.0

    def actor_parameters(self) -> list[nn.Parameter]:
        mlp = self.actor_mlp if self.shared else self.policy.mlp
        return [*mlp.parameters(), self.log_std]

    def critic_parameters(self) -> list[nn.Parameter]:
        extra = [self.global_proj] if self.global_dim else []
        return [*self.critic.parameters(), *extra]

    def clamped_log_std(self) -> torch.Tensor:
        """``log_sigma [N, d]`` inside ``log_std_bounds``."""
        return self.log_std.clamp(*self.log_std_bounds).expand(self.n_agents, self.action_dim)

    # ------------------------------------------------------------------ distribution
    def to_u(self, x: torch.Tensor) -> torch.Tensor:
        """Applied action of a Gaussian sample or mean ``x``: ``clip(x, 0, 1)`` or ``sigmoid(x)``."""
        return x.clamp(0.0, 1.0) if self.squash == "clip" else torch.sigmoid(x)

    def log_prob(self, stored: torch.Tensor, mean: torch.Tensor, log_std: torch.Tensor) -> torch.Tensor:
        """Log-likelihood ``[...]`` of a stored sample (``clip``: the applied ``u``; ``sigmoid``:
        the pre-squash ``x``) under ``N(mean, exp(log_std)^2)`` and the squash."""
        if self.squash == "clip":
            return censored_log_prob(stored, mean, log_std)
        return gaussian_log_prob(stored, mean, log_std)

    def _with_static(self, x: torch.Tensor) -> torch.Tensor:
        """``[N, M, k] -> [N, M, k + s]`` (the static features appended; a no-op without)."""
        if not self.static.shape[1]:
            return x
        return torch.cat([x, self.static.unsqueeze(1).expand(-1, x.shape[1], -1)], -1)

    def _run(self, mlp: StackedMLP, x: torch.Tensor, first_extra: torch.Tensor | None = None) -> torch.Tensor:
        """``mlp`` on agent-major ``x [N, M, in]`` -> ``[N, M, out]``; a shared (one-agent) MLP runs
        as one ``[1, N*M, in]`` product per layer. ``first_extra`` (broadcastable to the first
        hidden layer ``[N, M, h]``) is added before its activation (the centralised critic)."""
        n, m = x.shape[:2]
        h = x.reshape(1, n * m, x.shape[-1]) if mlp.n_agents == 1 else x
        n_layers = len(mlp.weights)
        for layer, (w, b) in enumerate(zip(mlp.weights, mlp.biases)):
            h = torch.baddbmm(b.unsqueeze(1), h, w)
            if layer == 0 and first_extra is not None:
                h = (h.reshape(n, m, -1) + first_extra).reshape(h.shape)
            if layer < n_layers - 1:
                h = mlp.activation(h)
        return h.reshape(n, m, -1)

    def mean(self, obs: torch.Tensor) -> torch.Tensor:
        """Gaussian mean ``[..., N, d]`` of batch-major observations ``[..., N, k]``."""
        if not self.shared:
            return self.policy.logits(obs) + self.mean_offset
        lead, (n, k) = obs.shape[:-2], obs.shape[-2:]
        x = self.normalise_agent_major(obs.reshape(-1, n, k).transpose(0, 1))
        out = self.mean_agent_major(x)
        return out.transpose(0, 1).reshape(*lead, n, self.action_dim)

    def mean_agent_major(self, x: torch.Tensor) -> torch.Tensor:
        """Gaussian mean ``[N, M, d]`` of *normalised* agent-major observations ``[N, M, k]``."""
        if self.shared:
            return self._run(self.actor_mlp, self._with_static(x)) + self.mean_offset
        return self.policy.mlp.forward_agent_major(x) + self.mean_offset

    def export_policy(self) -> FleetPolicy:
        """The deterministic actor as a per-agent :class:`FleetPolicy` (logits = mean - offset):
        the policy itself, or for a shared network its weights replicated per agent with
        ``static_i @ W_static`` folded into agent ``i``'s first-layer bias (exact)."""
        if not self.shared:
            return self.policy
        mlp = self.actor_mlp
        w0, b0 = mlp.weights[0].detach(), mlp.biases[0].detach()
        k = self.obs_dim
        hidden = [w.shape[-1] for w in mlp.weights[:-1]]
        act = next(name for name, fn in ACTIVATIONS.items() if fn is mlp.activation)
        out = FleetPolicy(self.n_agents, k, self.action_dim, hidden, act, 0.01, None,
                          w0.dtype, w0.device)
        out.normaliser.load_state_dict(self.normaliser.state_dict())
        with torch.no_grad():
            for layer, (w, b) in enumerate(zip(mlp.weights, mlp.biases)):
                if layer == 0:
                    out.mlp.weights[0].copy_(w0[0, :k].expand(self.n_agents, -1, -1))
                    out.mlp.biases[0].copy_(b0[0] + self.static @ w0[0, k:])
                else:
                    out.mlp.weights[layer].copy_(w.detach().expand(self.n_agents, -1, -1))
                    out.mlp.biases[layer].copy_(b.detach().expand(self.n_agents, -1))
        return out

    # ------------------------------------------------------------------ acting (batch-major)
    def deterministic(self, obs: torch.Tensor) -> torch.Tensor:
        """The deterministic controller ``u = squash(mu(o))`` ``[..., N, d]``, in ``obs``'s dtype."""
        return self.to_u(self.mean(obs)).to(obs.dtype)

    @torch.no_grad()
    def sample(self, obs: torch.Tensor, generator: torch.Generator | None = None
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Draw ``x ~ N(mu(o), sigma^2)`` for observations ``[..., N, k]``.

        Returns the applied ``u`` (``obs`` dtype), the sample to store for :meth:`log_prob`
        (``clip``: ``u``; ``sigmoid``: ``x``; policy dtype) and its log-likelihood ``[..., N]``.
        The noise is drawn on the CPU with ``generator`` (reproducible on any device).
        """
        mean = self.mean(obs)  # [..., N, d]
        log_std = self.clamped_log_std()
        eps = torch.randn(mean.shape, generator=generator, dtype=mean.dtype).to(mean.device)
        x = mean + torch.exp(log_std) * eps
        u = self.to_u(x)
        stored = u if self.squash == "clip" else x
        return u.to(obs.dtype), stored, self.log_prob(stored, mean, log_std)

    # ------------------------------------------------------------------ update path (agent-major)
    def normalise_agent_major(self, obs: torch.Tensor) -> torch.Tensor:
        """Per-agent normalised observations ``[N, M, k]`` (agent ``i`` by its own statistics)."""
        norm = self.normaliser
        x = (obs.to(norm.mean.dtype) - norm.mean.unsqueeze(1)) / torch.sqrt(norm.var.unsqueeze(1) + norm.eps)
        return x.clamp(-norm.clip, norm.clip)

    def _global_term(self, global_state: torch.Tensor | None) -> torch.Tensor | None:
        """The centralised critic's first-layer contribution ``[1, M, h]`` of ``s [M, G]``."""
        if not self.global_dim:
            return None
        if global_state is None:
            raise ValueError("this critic is centralised: pass the global state [M, G]")
        z = self.global_norm(global_state.to(self.global_proj.dtype).unsqueeze(1))[:, 0]  # [M, G]
        return (z @ self.global_proj[0]).unsqueeze(0)

    def _value(self, x: torch.Tensor, global_state: torch.Tensor | None) -> torch.Tensor:
        return self._run(self.critic, self._with_static(x), self._global_term(global_state)).squeeze(-1)

    def value_agent_major(self, obs: torch.Tensor, global_state: torch.Tensor | None = None) -> torch.Tensor:
        """Critic outputs ``[N, M]`` (normalised returns: ``(R - return_mean) / return_scale``) of
        ``obs [N, M, k]`` (and, centralised, the global state ``[M, G]``)."""
        return self._value(self.normalise_agent_major(obs), global_state)

    def evaluate(self, obs: torch.Tensor, stored: torch.Tensor, global_state: torch.Tensor | None = None
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """For ``obs [N, M, k]`` and stored samples ``[N, M, d]`` (see :meth:`sample`): log-probs
        ``[N, M]``, values ``[N, M]`` and entropies ``[N]`` under the current parameters."""
        x = self.normalise_agent_major(obs)
        mean = self.mean_agent_major(x)  # [N, M, d]
        log_std = self.clamped_log_std()  # [N, d]
        log_prob = self.log_prob(stored, mean, log_std.unsqueeze(1))
        value = self._value(x, global_state)
        return log_prob, value, gaussian_entropy(log_std)
