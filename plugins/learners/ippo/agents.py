"""Independent Gaussian actors and critics of one fleet, held as stacked per-agent weights.

Agent ``i`` of a fleet of ``N`` agents owns

* an **actor**: the mean ``mu_i(o) in R^d`` of a diagonal Gaussian over a pre-squash action
  ``x``, computed by :class:`gridflex.learning.policies.FleetPolicy`'s per-agent normaliser and stacked
  MLP (its logits, plus a constant offset), and its own state-independent log-std
  ``log_sigma_i in R^d``;
* a **critic**: ``V_i(o)`` (a stacked MLP with one output), fed with the same per-agent
  normalised observation.

Nothing is shared: every parameter tensor has the agent index as its leading dimension
(``weight [N, fan_in, fan_out]``, ``log_std [N, d]``), and agent ``i``'s outputs read only row
``i`` of the observations. The observation statistics are agent ``i``'s own
(:class:`gridflex.learning.policies.AgentNormaliser`).

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

from gridflex.learning.policies import FleetPolicy, StackedMLP

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
    """The ``N`` independent actors and critics of one fleet (module docstring).

    ``squash`` is ``"clip"`` or ``"sigmoid"`` (module docstring). ``log_std_bounds`` clamps
    ``log_sigma`` wherever it is used (not the stored parameter), so the exploration noise stays
    inside ``[exp(lo), exp(hi)]`` (u-units for ``clip``, logit units for ``sigmoid``).
    """

    def __init__(self, n_agents: int, obs_dim: int, action_dim: int, hidden: Sequence[int],
                 critic_hidden: Sequence[int], activation: str = "tanh", squash: str = "clip",
                 log_std_init: float = -1.0,
                 log_std_bounds: tuple[float, float] = (-5.0, 1.0),
                 generator: torch.Generator | None = None, dtype: torch.dtype = torch.float32,
                 device: torch.device | str = "cpu"):
        super().__init__()
        if squash not in ("clip", "sigmoid"):
            raise ValueError(f"squash must be 'clip' or 'sigmoid', not {squash!r}")
        self.n_agents, self.obs_dim, self.action_dim = n_agents, obs_dim, action_dim
        self.squash = squash
        self.mean_offset = 0.5 if squash == "clip" else 0.0  # clip: the initial mean is mid-range
        self.log_std_bounds = tuple(log_std_bounds)
        self.policy = FleetPolicy(n_agents, obs_dim, action_dim, hidden, activation, 0.01,
                                  generator, dtype, device)
        self.log_std = nn.Parameter(torch.full((n_agents, action_dim), float(log_std_init),
                                               dtype=dtype, device=device))
        self.critic = StackedMLP(n_agents, obs_dim, 1, critic_hidden, activation, 1.0,
                                 generator, dtype, device)
        # per-agent scale of the returns the critic predicts (EUR), set once from a warm-up rollout
        self.register_buffer("return_scale", torch.ones(n_agents, dtype=dtype, device=device))

    @property
    def normaliser(self):
        return self.policy.normaliser

    def actor_parameters(self) -> list[nn.Parameter]:
        return [*self.policy.mlp.parameters(), self.log_std]

    def critic_parameters(self) -> list[nn.Parameter]:
        return list(self.critic.parameters())

    def clamped_log_std(self) -> torch.Tensor:
        """``log_sigma [N, d]`` inside ``log_std_bounds``."""
        return self.log_std.clamp(*self.log_std_bounds)

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

    def mean(self, obs: torch.Tensor) -> torch.Tensor:
        """Gaussian mean ``[..., N, d]`` of batch-major observations ``[..., N, k]``."""
        return self.policy.logits(obs) + self.mean_offset

    def mean_agent_major(self, x: torch.Tensor) -> torch.Tensor:
        """Gaussian mean ``[N, M, d]`` of *normalised* agent-major observations ``[N, M, k]``."""
        return self.policy.mlp.forward_agent_major(x) + self.mean_offset

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
        norm = self.policy.normaliser
        x = (obs.to(norm.mean.dtype) - norm.mean.unsqueeze(1)) / torch.sqrt(norm.var.unsqueeze(1) + norm.eps)
        return x.clamp(-norm.clip, norm.clip)

    def value_agent_major(self, obs: torch.Tensor) -> torch.Tensor:
        """Critic outputs ``[N, M]`` (returns in units of ``return_scale``) of ``obs [N, M, k]``."""
        return self.critic.forward_agent_major(self.normalise_agent_major(obs)).squeeze(-1)

    def evaluate(self, obs: torch.Tensor, stored: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """For ``obs [N, M, k]`` and stored samples ``[N, M, d]`` (see :meth:`sample`): log-probs
        ``[N, M]``, values ``[N, M]`` and entropies ``[N]`` under the current parameters."""
        x = self.normalise_agent_major(obs)
        mean = self.mean_agent_major(x)  # [N, M, d]
        log_std = self.clamped_log_std()  # [N, d]
        log_prob = self.log_prob(stored, mean, log_std.unsqueeze(1))
        value = self.critic.forward_agent_major(x).squeeze(-1)
        return log_prob, value, gaussian_entropy(log_std)
