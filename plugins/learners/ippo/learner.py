"""``ippo``: independent PPO for every agent, on a gradient-free environment (docs/design.md §3).

One outer iteration (:meth:`IPPO.train_iteration`), every step vectorised over agents and days:

1. **Roll out** ``days_per_batch`` training days closed loop under ``torch.no_grad()``: each
   agent samples ``x ~ N(mu_i(o_i), sigma_i^2)`` from its own observation and applies
   ``u = clip(x, 0, 1)`` (or ``sigmoid(x)``; :mod:`.agents`); the environment runs the device
   dynamics and one exact AC power flow per day-step (counted in ``power_flow_solves``, as for GradMAP).
2. **Rewards** per agent and step (:mod:`.rewards`): own bill share, own node-phase voltage
   residual, own comfort, end-of-day residuals at the last step, plus a weighted global share.
3. **Values and GAE** per agent (:func:`.ppo.gae`), with each agent's critic predicting returns in
   units of its own ``return_scale`` (EUR, fixed from the warm-up rollout).
4. **PPO update** (:func:`.ppo.ppo_update`): ``epochs`` x ``minibatches`` clipped steps on
   ``sum_i L_i``; per-agent gradient clipping, Adam.
5. Merge the batch's observations into each agent's normaliser (after the update, so the
   behaviour log-probs of step 1 are those of the policy that acted).

**Warm-up** (inside the training clock, like GradMAP's): one ``no_control`` rollout initialises
the observation statistics and each agent's ``return_scale`` (RMS of its shaped returns-to-go,
at least ``return_scale_min_eur``), and ``warm_start_epochs`` epochs of behaviour cloning fit the
actors' deterministic outputs onto the no-control outputs, so exploration starts around the
no-control schedule rather than at ``u = 0.5``.

Counters: ``env_gradient_evaluations`` stays 0 (the environment is never differentiated);
``policy_updates`` counts optimiser steps (warm start included).
"""

from __future__ import annotations

import time
from typing import ClassVar, Literal

import torch
from pydantic import Field, model_validator

from gridflex.plugins.contracts import StepInputs
from gridflex.learning.policies import clip_grad_norm_per_agent_
from gridflex.learning.training import TrainableLearner, Trainer, TrainingConfig

from .agents import FleetActorCritic
from .ppo import PPOSettings, explained_variance, fleet_batch, gae, ppo_update, to_agent_major
from .rewards import RewardWeights, agent_monitor_maps, shaped_rewards


class IPPOConfig(TrainingConfig):
    """Independent PPO: networks, PPO update, shaped-reward weights (EUR per unit)."""

    # networks
    hidden_sizes: list[int] = Field([32, 32], description="hidden layer widths of every agent's actor MLP (Gaussian mean)")
    critic_hidden_sizes: list[int] = Field([32, 32], description="hidden layer widths of every agent's critic MLP")
    activation: Literal["tanh", "relu", "silu"] = Field("tanh", description="hidden activation of actors and critics")
    squash: Literal["clip", "sigmoid"] = Field(
        "clip", description="u = clip(x, 0, 1) (censored Gaussian, exact likelihood) or sigmoid(x) (agents.py)")
    log_std_init: float = Field(-1.0, ge=-10, le=2, description="initial per-agent log-std of the Gaussian (u-units for clip, logit units for sigmoid)")
    log_std_min: float = Field(-5.0, ge=-20, description="lower clamp of the log-std")
    log_std_max: float = Field(1.0, le=5, description="upper clamp of the log-std")
    # optimisation
    learning_rate: float = Field(1e-3, gt=0, le=1, description="Adam step size of the actors (means and log-stds)")
    critic_learning_rate: float = Field(1e-3, gt=0, le=1, description="Adam step size of the critics")
    max_grad_norm: float = Field(0.5, gt=0, description="per-agent gradient-norm clip, actor and critic separately")
    days_per_batch: int = Field(8, ge=1, le=366, description="training days rolled out per iteration (episodes per agent)")
    epochs: int = Field(10, ge=1, le=1000, description="PPO epochs over each batch")
    minibatches: int = Field(4, ge=1, description="minibatches per epoch (samples = days x steps, all agents at once)")
    clip: float = Field(0.2, gt=0, lt=1, description="PPO ratio clip epsilon")
    gamma: float = Field(1.0, gt=0, le=1, description="discount per step of the day-long episode (1: the undiscounted day cost)")
    gae_lambda: float = Field(0.95, ge=0, le=1, description="GAE lambda")
    value_coef: float = Field(0.5, ge=0, description="weight of the critic's squared error in the loss")
    entropy_coef: float = Field(0.0, ge=0, description="weight of the entropy bonus (nats, logit-space Gaussian)")
    normalise_advantages: bool = Field(True, description="standardise advantages per agent over its batch")
    return_scale_min_eur: float = Field(1.0, gt=0, description="floor of each agent's return scale (EUR) for its critic")
    warm_start_epochs: int = Field(30, ge=0, description="behaviour-cloning epochs of the actor means onto no_control (0: none)")
    # shaped reward (see rewards.py), EUR per unit
    reward_own_cost: float = Field(1.0, ge=0, description="weight of the agent's own bill share (price x own demand x dt + device cost)")
    reward_voltage: float = Field(20.0, ge=0, description="EUR per voltage_scale_pu of voltage residual per node-phase-step (own node; also inside the global term)")
    voltage_scale_pu: float = Field(0.01, gt=0, description="voltage residual unit (pu) of the voltage terms")
    reward_line: float = Field(20.0, ge=0, description="EUR per unit line overload per conductor-step, inside the global term")
    reward_comfort: float = Field(1.0, ge=0, description="EUR per degC-step of the agent's own comfort residual")
    reward_terminal: float = Field(1.0, ge=0, description="EUR per unit (kWh, degC) of the agent's end-of-day residuals, at the last step")
    reward_global: float = Field(1.0, ge=0, description="weight of the shared global term (feeder step cost + priced violations) / N")

    @model_validator(mode="after")
    def _log_std_bounds(self):
        if not self.log_std_min < self.log_std_max:
            raise ValueError("log_std_min must be < log_std_max")
        return self


class IPPO(TrainableLearner):
    """Independent PPO: per-agent Gaussian actors and critics, shaped local + global reward."""

    name = "ippo"
    Config: ClassVar = IPPOConfig
    history_extras = ("train_cost_per_day", "train_violation_rate", "mean_reward", "policy_loss",
                      "value_loss", "entropy", "approx_kl", "clip_fraction", "explained_variance",
                      "log_std_mean", "env_s", "fit_s")

    def __init__(self, config, env, *, seed: int = 0):
        config = config if isinstance(config, self.Config) else self.Config.model_validate(config)
        super().__init__(config, env, seed=seed)
        torch.manual_seed(seed)
        init = torch.Generator().manual_seed(int(seed))
        self.agents = torch.nn.ModuleList(
            FleetActorCritic(f.n_agents, env.obs_dim(i), f.model.action_dim, config.hidden_sizes,
                             config.critic_hidden_sizes, config.activation, config.squash, config.log_std_init,
                             (config.log_std_min, config.log_std_max), init, device=env.device)
            for i, f in enumerate(env.fleets))
        actor = [p for a in self.agents for p in a.actor_parameters()]
        critic = [p for a in self.agents for p in a.critic_parameters()]
        self.optimizer = torch.optim.Adam([{"params": actor, "lr": config.learning_rate},
                                           {"params": critic, "lr": config.critic_learning_rate}])
        self.sampler = torch.Generator().manual_seed(int(seed) + 0x697070)  # exploration noise
        self.shuffler = torch.Generator().manual_seed(int(seed) + 0x6F)  # minibatch permutations
        self.weights = RewardWeights(config.reward_own_cost, config.reward_voltage, config.voltage_scale_pu,
                                     config.reward_line, config.reward_comfort, config.reward_terminal,
                                     config.reward_global)
        self.maps = agent_monitor_maps(env)
        self.settings = PPOSettings(config.clip, config.epochs, config.minibatches, config.value_coef,
                                    config.entropy_coef, config.max_grad_norm, config.normalise_advantages)

    # ------------------------------------------------------------------ acting
    def act(self, fleet_index: int, t: int, obs: torch.Tensor, state: torch.Tensor,
            inputs: StepInputs) -> torch.Tensor:
        """Deterministic decentralised controller: ``u = squash(mu_i(o_i))`` ``[B, N, d]``."""
        return self.agents[fleet_index].deterministic(obs)

    def _explore(self, exo):
        """Closed-loop rollout with sampled actions; returns the rollout, ``z`` and log-probs per
        fleet (``[B, T, N, d]``, ``[B, T, N]``)."""
        zs = [[] for _ in self.agents]
        log_probs = [[] for _ in self.agents]

        def controller(f, t, obs, state, inputs):
            u, z, log_prob = self.agents[f].sample(obs, self.sampler)
            zs[f].append(z)
            log_probs[f].append(log_prob)
            return u

        with torch.no_grad():
            rollout = self.env.rollout(exo, controller)
        return rollout, [torch.stack(z, 1) for z in zs], [torch.stack(lp, 1) for lp in log_probs]

    def _rewards(self, trainer: Trainer, rollout):
        with torch.no_grad():
            return shaped_rewards(self.env, rollout, self.maps, self.weights, trainer.v_limits_train_pu,
                                  trainer.line_limits)

    # ------------------------------------------------------------------ training
    def setup(self, trainer: Trainer) -> None:
        """Warm-up (module docstring): statistics, return scales, behaviour cloning."""
        cfg = self.config
        exo = trainer.sample_days(cfg.days_per_batch)
        fleets = self.env.fleets
        with torch.no_grad():
            rollout = self.env.rollout(exo, lambda f, t, o, s, i: fleets[f].model.baseline_u("no_control", s, i))
        shaped = self._rewards(trainer, rollout)
        for agent, traj, reward in zip(self.agents, rollout.fleets, shaped.rewards):
            agent.normaliser.update(traj.observations)
            returns, _ = gae(reward, torch.zeros_like(reward), cfg.gamma, 1.0)  # returns-to-go
            rms = returns.square().mean((0, 1)).sqrt().clamp_min(cfg.return_scale_min_eur)
            agent.return_scale.copy_(rms.to(agent.return_scale.dtype))
        if cfg.warm_start_epochs:
            self.policy_updates += self._behaviour_clone([t.observations for t in rollout.fleets],
                                                         [t.u for t in rollout.fleets])

    def _behaviour_clone(self, observations, targets) -> int:
        """Fit the actors' deterministic outputs onto ``targets`` ``[B, T, N, d]`` by squared error
        (per-agent sum, per-agent clipping; for ``clip`` the unclipped mean is fitted, so that the
        gradient does not vanish outside ``[0, 1]``); returns the optimiser steps."""
        cfg = self.config
        xs = [to_agent_major(o).to(a.log_std.dtype) for o, a in zip(observations, self.agents)]
        ys = [to_agent_major(y).to(a.log_std.dtype) for y, a in zip(targets, self.agents)]
        n_samples, steps = xs[0].shape[1], 0
        for _ in range(cfg.warm_start_epochs):
            perm = torch.randperm(n_samples, generator=self.shuffler)
            for idx in perm.chunk(max(1, min(2, n_samples))):
                self.optimizer.zero_grad(set_to_none=True)
                loss = 0.0
                for agent, x, y in zip(self.agents, xs, ys):
                    mean = agent.mean_agent_major(agent.normalise_agent_major(x[:, idx]))
                    pred = mean if agent.squash == "clip" else agent.to_u(mean)
                    loss = loss + (pred - y[:, idx]).square().sum(-1).mean(1).sum()
                loss.backward()
                for agent in self.agents:
                    clip_grad_norm_per_agent_(agent.policy.mlp.parameters(), cfg.max_grad_norm)
                self.optimizer.step()
                steps += 1
        return steps

    def train_iteration(self, trainer: Trainer) -> dict[str, float]:
        return self.iteration(trainer, trainer.sample_days(self.config.days_per_batch))

    def iteration(self, trainer: Trainer, exo) -> dict[str, float]:
        """Steps 1-5 of the module docstring on the days ``exo``."""
        cfg = self.config
        t0 = time.perf_counter()
        rollout, zs, log_probs = self._explore(exo)
        shaped = self._rewards(trainer, rollout)
        t1 = time.perf_counter()
        batches = [fleet_batch(agent, traj.observations, z, log_prob, reward, cfg.gamma, cfg.gae_lambda)
                   for agent, traj, z, log_prob, reward in zip(self.agents, rollout.fleets, zs, log_probs,
                                                                shaped.rewards)]
        stats, steps = ppo_update(list(self.agents), batches, self.optimizer, self.settings, self.shuffler)
        self.policy_updates += steps
        for agent, traj in zip(self.agents, rollout.fleets):
            agent.normaliser.update(traj.observations)
        t2 = time.perf_counter()
        n_agents = self.env.n_agents
        mean_reward = sum(float(r.sum((1, 2)).mean()) for r in shaped.rewards) / n_agents
        log_std = torch.cat([a.clamped_log_std().detach().reshape(-1) for a in self.agents])
        return {"train_cost_per_day": shaped.cost_per_day, "train_violation_rate": shaped.train_violation_rate,
                "mean_reward": mean_reward, **stats,
                "explained_variance": explained_variance(torch.cat([x.values.reshape(-1) for x in batches]),
                                                         torch.cat([x.returns.reshape(-1) for x in batches])),
                "log_std_mean": float(log_std.mean()), "env_s": t1 - t0, "fit_s": t2 - t1}

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict:
        return {"agents": self.agents.state_dict(), "optimizer": self.optimizer.state_dict(),
                "sampler": self.sampler.get_state(), "shuffler": self.shuffler.get_state(),
                "counters": {"env_gradient_evaluations": self.env_gradient_evaluations,
                             "policy_updates": self.policy_updates}}

    def load_state_dict(self, state: dict) -> None:
        self.agents.load_state_dict(state["agents"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.sampler.set_state(state["sampler"])
        self.shuffler.set_state(state["shuffler"])
        self.env_gradient_evaluations = int(state["counters"]["env_gradient_evaluations"])
        self.policy_updates = int(state["counters"]["policy_updates"])


LEARNERS = (IPPO,)
