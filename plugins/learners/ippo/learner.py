"""``ippo``: independent PPO for every agent, on a gradient-free environment (docs/design.md §3).

One outer iteration (:meth:`IPPO.train_iteration`), every step vectorised over agents and days:

1. **Roll out** ``days_per_batch`` training days closed loop under ``torch.no_grad()``: each
   agent samples ``x ~ N(mu_i(o_i), sigma_i^2)`` from its own observation and applies
   ``u = clip(x, 0, 1)`` (or ``sigmoid(x)``; :mod:`.agents`); the environment runs the device
   dynamics and one exact AC power flow per day-step (counted in ``power_flow_solves``, as for GradMAP).
2. **Rewards** per agent and step (:mod:`.rewards`): own bill share, a network term
   (``reward_network``: own node-phase voltage residual, sensitivity-weighted, or the difference
   reward; :mod:`.credit`), own comfort, end-of-day residuals at the last step, plus a weighted
   global share; at fixed prices or the GradMAP family's duals (``dual_ascent``).
3. **Values and GAE** per agent (:func:`.ppo.gae`), with each agent's critic predicting returns
   normalised by its own ``return_scale`` (EUR; fixed from the warm-up rollout, or running), from
   its own observation or also the global state (``critic: centralised``, :mod:`.mappo`).
4. **PPO update** (:func:`.ppo.ppo_update`): ``epochs`` x ``minibatches`` clipped steps on
   ``sum_i L_i``; per-agent gradient clipping, Adam.
5. Merge the batch's observations into each agent's normaliser (after the update, so the
   behaviour log-probs of step 1 are those of the policy that acted); one dual step with
   ``dual_ascent``; learning rates annealed with ``lr_annealing``.

The variants of issue #21 (network reward, PPO-Lagrangian, sharing per device type, MAPPO
practice, warm start to a tolerance) are fields of :class:`.options.PPOVariantOptions` and
methods of :class:`.options.VariantMixin`.

**Warm-up** (inside the training clock, like GradMAP's): one ``no_control`` rollout initialises
the observation statistics and each agent's ``return_scale`` (RMS of its shaped returns-to-go,
at least ``return_scale_min_eur``), and behaviour cloning fits the actors' deterministic outputs
onto the no-control outputs to ``warm_start_tolerance_u`` (:meth:`.options.VariantMixin.
behaviour_clone`), so training starts at the no-control schedule rather than at ``u = 0.5``.

Counters: ``env_gradient_evaluations`` stays 0 (the environment is never differentiated);
``policy_updates`` counts optimiser steps (warm start included).
"""

from __future__ import annotations

from typing import ClassVar, Literal

import torch
from pydantic import Field, model_validator

from gridflex.plugins.contracts import StepInputs
from gridflex.learning.policies import DeployablePolicy
from gridflex.learning.training import TrainableLearner, Trainer, TrainingConfig

from .options import PPOVariantOptions, VariantMixin
from .ppo import PPOSettings, explained_variance, fleet_batch, gae, ppo_update
from .rewards import RewardWeights, agent_monitor_maps, shaped_rewards


WARM_UP_DAYS = 8  # days of the no_control warm-up rollout (statistics, return scales, cloning)


class IPPOConfig(PPOVariantOptions, TrainingConfig):
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
    warm_start_epochs: int = Field(30, ge=0, description="minimum behaviour-cloning epochs of the actor means onto no_control (0: no warm start)")
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


class IPPO(VariantMixin, TrainableLearner):
    """Independent PPO: per-agent Gaussian actors and critics, shaped local + global reward."""

    name = "ippo"
    Config: ClassVar = IPPOConfig
    history_extras = ("train_cost_per_day", "train_violation_rate", "mean_reward", "policy_loss",
                      "value_loss", "entropy", "approx_kl", "clip_fraction", "explained_variance",
                      "log_std_mean", "env_s", "fit_s")

    @classmethod
    def search_space(cls, trial) -> dict:
        """Learning rate, PPO clip range, entropy coefficient, GAE lambda and the shaped-reward
        weights (EUR per unit); ranges contain the defaults (docs/tuning.md)."""
        return {"learning_rate": trial.suggest_float("learning_rate", 1e-4, 1e-2, log=True),
                "clip": trial.suggest_float("clip", 0.05, 0.4),
                "entropy_coef": trial.suggest_float("entropy_coef", 0.0, 0.05),
                "gae_lambda": trial.suggest_float("gae_lambda", 0.8, 1.0),
                "reward_voltage": trial.suggest_float("reward_voltage", 1.0, 200.0, log=True),
                "reward_line": trial.suggest_float("reward_line", 1.0, 200.0, log=True),
                "reward_comfort": trial.suggest_float("reward_comfort", 0.1, 10.0, log=True),
                "reward_global": trial.suggest_float("reward_global", 0.1, 10.0, log=True)}

    def __init__(self, config, env, *, seed: int = 0):
        config = config if isinstance(config, self.Config) else self.Config.model_validate(config)
        super().__init__(config, env, seed=seed)
        torch.manual_seed(seed)
        init = torch.Generator().manual_seed(int(seed))
        self.agents = self.build_agents(env, config, init)  # options.VariantMixin (sharing, critic)
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
        self.init_variants()  # duals, schedules (options.VariantMixin)

    # ------------------------------------------------------------------ acting
    def act(self, fleet_index: int, t: int, obs: torch.Tensor, state: torch.Tensor,
            inputs: StepInputs) -> torch.Tensor:
        """Deterministic decentralised controller: ``u = squash(mu_i(o_i))`` ``[B, N, d]``."""
        return self.agents[fleet_index].deterministic(obs)

    def deployable_policies(self) -> list[DeployablePolicy]:
        """Per fleet, the deterministic controller of :meth:`act` in exportable parts."""
        return [DeployablePolicy(a.export_policy(), a.squash, a.mean_offset) for a in self.agents]

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
        if self.config.reward_network != "own_node" or self.config.dual_ascent:
            return self.variant_rewards(trainer, rollout)  # options.VariantMixin, rewards.ppo_rewards
        with torch.no_grad():
            return shaped_rewards(self.env, rollout, self.maps, self.weights, trainer.v_limits_train_pu,
                                  trainer.line_limits)

    # ------------------------------------------------------------------ training
    def setup(self, trainer: Trainer) -> None:
        """Warm-up (module docstring): statistics, return scales, behaviour cloning."""
        cfg = self.config
        t0 = trainer.timer()
        self.setup_variants(trainer)  # linearised sensitivities, static features
        exo = trainer.sample_days(min(cfg.days_per_batch, WARM_UP_DAYS))
        fleets = self.env.fleets
        with torch.no_grad():
            rollout = self.env.rollout(exo, lambda f, t, o, s, i: fleets[f].model.baseline_u("no_control", s, i))
        shaped = self._rewards(trainer, rollout)
        for agent, traj, reward in zip(self.agents, rollout.fleets, shaped.rewards):
            agent.normaliser.update(traj.observations)
            returns, _ = gae(reward, torch.zeros_like(reward), cfg.gamma, 1.0)  # returns-to-go
            rms = returns.square().mean((0, 1)).sqrt().clamp_min(cfg.return_scale_min_eur)
            agent.return_scale.copy_(rms.to(agent.return_scale.dtype))
        if cfg.critic == "centralised":
            state = self.global_state(rollout)
            for agent in self.agents:
                agent.global_norm.update(state.reshape(-1, 1, state.shape[-1]))
        if cfg.warm_start_epochs:  # to the tolerance warm_start_tolerance_u (options.VariantMixin)
            steps, _ = self.behaviour_clone([t.observations for t in rollout.fleets], [t.u for t in rollout.fleets])
            self.env.counters.policy_updates += steps
        self.anneal(trainer, trainer.timer() - t0, iteration=False)

    def train_iteration(self, trainer: Trainer) -> dict[str, float]:
        return self.iteration(trainer, trainer.sample_days(self.config.days_per_batch))

    def iteration(self, trainer: Trainer, exo) -> dict[str, float]:
        """Steps 1-5 of the module docstring on the days ``exo``."""
        cfg = self.config
        t0 = trainer.timer()
        rollout, zs, log_probs = self._explore(exo)
        shaped = self._rewards(trainer, rollout)
        t1 = trainer.timer()
        state = self.global_state(rollout) if cfg.critic == "centralised" else None
        batches = [fleet_batch(agent, traj.observations, z, log_prob, reward, cfg.gamma, cfg.gae_lambda,
                               global_state=state, running_values=cfg.value_normalisation == "running")
                   for agent, traj, z, log_prob, reward in zip(self.agents, rollout.fleets, zs, log_probs,
                                                                shaped.rewards)]
        stats, steps = ppo_update(list(self.agents), batches, self.optimizer, self.settings, self.shuffler)
        self.env.counters.policy_updates += steps
        for agent, traj in zip(self.agents, rollout.fleets):
            agent.normaliser.update(traj.observations)
            if state is not None:
                agent.global_norm.update(state.reshape(-1, 1, state.shape[-1]))
        self.ascend_duals(trainer, rollout)  # PPO-Lagrangian (no-op with fixed prices)
        t2 = trainer.timer()
        self.anneal(trainer, t2 - t0)
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
                "clock_s": self._clock_s, "iterations_done": self._iterations_done,
                **self.variant_state()}

    def load_state_dict(self, state: dict) -> None:
        self.agents.load_state_dict(state["agents"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.sampler.set_state(state["sampler"])
        self.shuffler.set_state(state["shuffler"])
        self._clock_s = float(state.get("clock_s", 0.0))
        self._iterations_done = int(state.get("iterations_done", 0))
        self.load_variant_state(state)


LEARNERS = (IPPO,)
