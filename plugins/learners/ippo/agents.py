"""Independent Gaussian actors and critics of one fleet, held as stacked per-agent weights.

Agent ``i`` of a fleet of ``N`` agents owns

* an **actor**: the mean ``mu_i(o) in R^d`` of a diagonal Gaussian over a *pre-squash* action
  ``z``, computed by :class:`gridflex.policies.FleetPolicy`'s per-agent normaliser and stacked
  MLP (its logits), plus its own state-independent log-std ``log_sigma_i in R^d``;
* a **critic**: ``V_i(o)`` (a stacked MLP with one output), fed with the same per-agent
  normalised observation.

Nothing is shared: every parameter tensor has the agent index as its leading dimension
(``weight [N, fan_in, fan_out]``, ``log_std [N, d]``), and agent ``i``'s outputs read only row
``i`` of the observations. The observation statistics are agent ``i``'s own
(:class:`gridflex.policies.AgentNormaliser`).

**Squashing and the log-probability.** The applied policy output is ``u = sigmoid(z)`` in
``(0, 1)^d``; the device maps it into its state-dependent limits. The sigmoid is a fixed
bijection, so ``log pi(u) = log N(z; mu, sigma) - sum_d log(u_d (1 - u_d))`` and the Jacobian term
does not depend on the parameters: the PPO ratio ``pi_new(u) / pi_old(u)`` equals the ratio of
the Gaussian densities of the stored ``z`` **exactly**. We therefore store ``z`` at sampling time
and evaluate all log-probabilities in ``z``-space (no clipping, no density mass at the bounds, no
``atanh`` of a rounded ``u``). The entropy bonus is the Gaussian's entropy in ``z``-space, a
state-independent function of ``log_sigma`` (the entropy of ``u`` differs by ``E[log u(1-u)]``,
which we do not regularise). The deterministic controller used for validation and test is the
median of ``u``, ``sigmoid(mu(o))`` (= :class:`FleetPolicy`'s forward).

Shapes: batch-major observations ``[..., N, k]`` for acting; agent-major ``[N, M, k]`` (``M``
samples) on the update path, where :meth:`FleetActorCritic.evaluate` returns log-probs and values
``[N, M]``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from gridflex.policies import FleetPolicy, StackedMLP

LOG_2PI = math.log(2.0 * math.pi)


def gaussian_log_prob(z: torch.Tensor, mean: torch.Tensor, log_std: torch.Tensor) -> torch.Tensor:
    """``sum_d log N(z_d; mean_d, exp(log_std_d)^2)``: ``[..., d] -> [...]`` (nats)."""
    return (-0.5 * ((z - mean) * torch.exp(-log_std)).square() - log_std - 0.5 * LOG_2PI).sum(-1)


def gaussian_entropy(log_std: torch.Tensor) -> torch.Tensor:
    """Entropy of a diagonal Gaussian ``[..., d] -> [...]`` (nats)."""
    return (log_std + 0.5 * (1.0 + LOG_2PI)).sum(-1)


class FleetActorCritic(nn.Module):
    """The ``N`` independent actors and critics of one fleet (module docstring).

    ``log_std_bounds`` clamps ``log_sigma`` wherever it is used (not the stored parameter), so
    the exploration noise stays inside ``[exp(lo), exp(hi)]`` in logit units.
    """

    def __init__(self, n_agents: int, obs_dim: int, action_dim: int, hidden: Sequence[int],
                 critic_hidden: Sequence[int], activation: str = "tanh", log_std_init: float = -0.5,
                 log_std_bounds: tuple[float, float] = (-5.0, 1.0),
                 generator: torch.Generator | None = None, dtype: torch.dtype = torch.float32,
                 device: torch.device | str = "cpu"):
        super().__init__()
        self.n_agents, self.obs_dim, self.action_dim = n_agents, obs_dim, action_dim
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

    # ------------------------------------------------------------------ acting (batch-major)
    def deterministic(self, obs: torch.Tensor) -> torch.Tensor:
        """``u = sigmoid(mu(o))`` ``[..., N, d]`` (the median action), in ``obs``'s dtype."""
        return self.policy(obs)

    @torch.no_grad()
    def sample(self, obs: torch.Tensor, generator: torch.Generator | None = None
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Draw ``z ~ N(mu(o), sigma^2)`` for observations ``[..., N, k]``.

        Returns ``u = sigmoid(z)`` (``obs`` dtype), ``z`` and ``log N(z)`` ``[..., N]`` (policy
        dtype). The noise is drawn on the CPU with ``generator`` (reproducible on any device).
        """
        mean = self.policy.logits(obs)  # [..., N, d]
        log_std = self.clamped_log_std()
        eps = torch.randn(mean.shape, generator=generator, dtype=mean.dtype).to(mean.device)
        z = mean + torch.exp(log_std) * eps
        return torch.sigmoid(z).to(obs.dtype), z, gaussian_log_prob(z, mean, log_std)

    # ------------------------------------------------------------------ update path (agent-major)
    def normalise_agent_major(self, obs: torch.Tensor) -> torch.Tensor:
        """Per-agent normalised observations ``[N, M, k]`` (agent ``i`` by its own statistics)."""
        norm = self.policy.normaliser
        x = (obs.to(norm.mean.dtype) - norm.mean.unsqueeze(1)) / torch.sqrt(norm.var.unsqueeze(1) + norm.eps)
        return x.clamp(-norm.clip, norm.clip)

    def value_agent_major(self, obs: torch.Tensor) -> torch.Tensor:
        """Critic outputs ``[N, M]`` (returns in units of ``return_scale``) of ``obs [N, M, k]``."""
        return self.critic.forward_agent_major(self.normalise_agent_major(obs)).squeeze(-1)

    def evaluate(self, obs: torch.Tensor, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """For ``obs [N, M, k]`` and stored pre-squash actions ``z [N, M, d]``: log-probs
        ``[N, M]``, values ``[N, M]`` and entropies ``[N]`` under the current parameters."""
        x = self.normalise_agent_major(obs)
        mean = self.policy.mlp.forward_agent_major(x)  # [N, M, d]
        log_std = self.clamped_log_std()  # [N, d]
        log_prob = gaussian_log_prob(z, mean, log_std.unsqueeze(1))
        value = self.critic.forward_agent_major(x).squeeze(-1)
        return log_prob, value, gaussian_entropy(log_std)
