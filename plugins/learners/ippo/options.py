"""The PPO variants of issue #21, as config fields and a learner mixin shared by ``ippo`` and ``mappo``.

* **Network reward** (``reward_network``): ``own_node`` | ``sensitivity`` | ``difference``
  (:mod:`.credit`, :func:`.rewards.ppo_rewards`); the sensitivities are linearised once, in
  :meth:`VariantMixin.setup_variants` (inside the training clock).
* **PPO-Lagrangian** (``dual_ascent``): the prices become the GradMAP family's duals
  (:class:`gridflex_plugins.learners.gradmap.lagrangian.Duals`: voltage ``[H, M]``, line ``[H, R]``,
  per-agent comfort and end-of-day), initialised at ``reward_voltage`` / ``reward_line`` /
  ``reward_comfort`` / ``reward_terminal`` and moved after every exploring batch by the same
  :meth:`Duals.ascend` (``dual_step``: duals that can fall) with the measures of
  :func:`~gridflex_plugins.learners.gradmap.lagrangian.lagrangian` on that batch.
* **Parameter sharing** (``shared``): one actor and critic per device type with static agent
  features (:class:`.credit.Sensitivities.static` plus the device's ratings where it has them),
  standardised over the fleet; execution stays decentralised (:mod:`.agents`).
* **MAPPO practice**: ``lr_annealing`` (linear to 0 over the budget), ``value_normalisation``
  ``running`` (:func:`.ppo.update_return_statistics`), and a centralised critic (``critic``,
  :meth:`VariantMixin.global_state`).
* **Warm start to a tolerance**: behaviour cloning until the deterministic controller's RMS
  distance to ``no_control``'s outputs is below ``warm_start_tolerance_u`` on every fleet (or
  ``warm_start_max_epochs``); targets at a bound are fitted one-sidedly past the bound by
  ``BOUND_MARGIN_U`` (``clip``), so the controller returns them exactly.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from pydantic import Field

from gridflex.plugins.contracts import StrictConfig
from gridflex_plugins.learners.gradmap.lagrangian import FAMILIES, DualAscent, DualInit, Duals, lagrangian

from .credit import Sensitivities
from .ppo import to_agent_major
from .rewards import ppo_rewards

BOUND_MARGIN_U = 0.25  # u-units past a bound that a ``clip`` actor's mean is fitted to for targets at it
STATIC_RATINGS = ("p_max_kw", "capacity_kwh", "s_max_kva")  # device attributes [N] used as static features


class PPOVariantOptions(StrictConfig):
    """The variant options of issue #21 (docs/ippo.md, "Variants")."""

    reward_network: Literal["own_node", "sensitivity", "difference"] = Field(
        "own_node", description="network term of each agent's reward: own node-phase voltage residual (lines only "
        "via the global term), every node and conductor weighted by |dV/dp_i| and |dI/dp_i|, or the first-order "
        "difference reward c_i p_i from linearised sensitivities (with the marginal loss factor on the bill)")
    dual_ascent: bool = Field(
        False, description="PPO-Lagrangian: the voltage/line/comfort/end-of-day prices are the GradMAP family's "
        "hourly per-node and per-conductor duals, initialised at reward_*, moved by dual_step after every batch")
    rho: float = Field(1000.0, ge=0, description="dual step (EUR per unit of the dual measure per iteration), every family")
    lambda_max: float = Field(1e4, gt=0, description="upper clip of every dual (EUR per unit)")
    dual_measure: Literal["violation", "signed"] = Field(
        "signed", description="what moves the voltage and line duals (as the GradMAP family's option)")
    dual_allowed_voltage: float = Field(1e-3, ge=0, description="allowed level of the voltage measure (normalised residual per node-step)")
    dual_allowed_line: float = Field(1e-3, ge=0, description="allowed level of the line measure (relative overload per conductor-step)")
    dual_allowed_local: float = Field(1e-2, ge=0, description="allowed mean comfort residual (degC per agent-step)")
    dual_allowed_terminal: float = Field(1e-2, ge=0, description="allowed mean end-of-day residual (kWh or degC per agent)")
    shared: bool = Field(
        False, description="one actor and critic per device type (static agent features as inputs; decentralised "
        "execution); false: independent networks per agent (the ablation)")
    critic: Literal["local", "centralised"] = Field(
        "local", description="critic input: the agent's own observation, or also the global state (training only)")
    lr_annealing: bool = Field(False, description="anneal both learning rates linearly to 0 over the budget")
    value_normalisation: Literal["warmup_scale", "running"] = Field(
        "warmup_scale", description="critic targets divided by a per-agent scale fixed in the warm-up, or running "
        "per-agent mean and std of the returns (MAPPO's ValueNorm)")
    warm_start_tolerance_u: float = Field(
        0.002, gt=0, description="behaviour cloning continues until the RMS distance of every fleet's deterministic "
        "output to no_control's is below this (u-units)")
    warm_start_max_epochs: int = Field(500, ge=1, description="cap on behaviour-cloning epochs")
    warm_start_learning_rate: float = Field(1e-2, gt=0, le=1, description="Adam step size of the behaviour cloning")


class VariantMixin:
    """Methods for :class:`~.learner.IPPO` and :class:`~.mappo.MAPPO` (module docstring)."""

    dual_columns = tuple(f"dual_{f}_{k}" for f in FAMILIES for k in ("mean", "at_max"))

    # ------------------------------------------------------------------ construction
    def build_agents(self, env, config, generator: torch.Generator) -> torch.nn.ModuleList:
        from .agents import FleetActorCritic

        self._global_dim = self.global_state_dim(env) if config.critic == "centralised" else 0
        return torch.nn.ModuleList(
            FleetActorCritic(f.n_agents, env.obs_dim(i), f.model.action_dim, config.hidden_sizes,
                             config.critic_hidden_sizes, config.activation, config.squash, config.log_std_init,
                             (config.log_std_min, config.log_std_max), generator, device=env.device,
                             shared=config.shared, static=self.static_placeholder(f) if config.shared else None,
                             global_dim=self._global_dim, actor_out_scale=0.0)
            for i, f in enumerate(env.fleets))

    @staticmethod
    def static_placeholder(fleet) -> torch.Tensor:
        """Zeros ``[N, s]``: 4 sensitivity features plus the device's ratings (filled in setup)."""
        ratings = [r for r in STATIC_RATINGS if isinstance(getattr(fleet.model, r, None), torch.Tensor)]
        return torch.zeros(fleet.n_agents, 4 + len(ratings))

    def init_variants(self) -> None:
        cfg, env = self.config, self.env
        self.sens: Sensitivities | None = None
        self.duals = None
        if cfg.dual_ascent:
            self.duals = Duals(env, int(round(24.0 / env.dt_h)), env.dt_h,
                               DualInit(cfg.reward_voltage, cfg.reward_line, cfg.reward_comfort, cfg.reward_terminal))
            self.ascent = DualAscent(rho=dict.fromkeys(FAMILIES, cfg.rho),
                                     allowed={"voltage": cfg.dual_allowed_voltage, "line": cfg.dual_allowed_line,
                                              "local": cfg.dual_allowed_local, "terminal": cfg.dual_allowed_terminal,
                                              "feasibility": 0.0},
                                     lam_max=cfg.lambda_max, measure=cfg.dual_measure)
        self._clock_s = 0.0
        self._iterations_done = 0
        self._base_lrs = [g["lr"] for g in self.optimizer.param_groups]

    def setup_variants(self, trainer) -> None:
        """Linearise once (rewards other than ``own_node``, shared networks' static features)."""
        cfg = self.config
        if cfg.reward_network != "own_node" or cfg.shared:
            self.sens = Sensitivities(self.env, trainer.line_limits)
        if cfg.shared:
            for f, (agent, fleet) in enumerate(zip(self.agents, self.env.fleets)):
                cols = [self.sens.static[f]]
                cols += [getattr(fleet.model, r).to(self.sens.static[f].dtype)[:, None]
                         for r in STATIC_RATINGS if isinstance(getattr(fleet.model, r, None), torch.Tensor)]
                x = torch.cat(cols, 1)
                x = (x - x.mean(0)) / x.std(0, unbiased=False).clamp_min(1e-12)  # constant features -> 0
                agent.static.copy_(x.to(agent.static.dtype))

    # ------------------------------------------------------------------ rewards and duals
    def variant_rewards(self, trainer, rollout):
        cfg = self.config
        with torch.no_grad():
            return ppo_rewards(self.env, rollout, self.maps, self.weights, trainer.v_limits_train_pu,
                               trainer.line_limits, kind=cfg.reward_network, sens=self.sens, duals=self.duals)

    def ascend_duals(self, trainer, rollout) -> None:
        """One dual step from the exploring batch's residual measures (GradMAP's rule)."""
        if self.duals is None:
            return
        with torch.no_grad():
            value = lagrangian(self.env, rollout, self.duals, trainer.v_limits_train_pu, trainer.line_limits,
                               self.config.voltage_scale_pu, 1.0)
        self.duals.ascend(value.means, self.ascent)

    def dual_summary(self):
        return self.duals.summary() if self.duals is not None else (None, None)

    def dual_report(self):
        return self.duals.family_report(self.config.lambda_max) if self.duals is not None else {}

    # ------------------------------------------------------------------ centralised critic
    @staticmethod
    def global_state_dim(env) -> int:
        return len(env.voltage_monitor) + 6 + sum(f.model.state_dim for f in env.fleets)

    def global_state(self, rollout) -> torch.Tensor:
        """``s [B, T, G]`` known before the step's actions: monitored ``|V|`` of the previous step
        (1 pu at ``t = 0``), price, hour (sin, cos), outdoor temperature, total household load and
        PV (kW), and per fleet the agents' mean device state."""
        exo = rollout.exogenous
        vm = self.env.voltage_monitor.magnitudes_pu(rollout.flow.v_pu).detach()  # [B, T, M]
        prev = torch.cat([torch.ones_like(vm[:, :1]), vm[:, :-1]], 1)
        b, steps = exo.batch, exo.steps
        hours = torch.arange(steps, device=vm.device, dtype=vm.dtype) * exo.dt_h
        angle = 2 * math.pi * (hours + 0.5 * exo.dt_h) / 24.0
        parts = [prev, exo.price_per_kwh[..., None], angle.sin().expand(b, -1)[..., None],
                 angle.cos().expand(b, -1)[..., None], exo.temp_out_c[..., None],
                 exo.household_kw.sum(1)[..., None], exo.pv_kw.sum(1)[..., None]]
        parts += [traj.states[:, :-1].mean(2) for traj in rollout.fleets]
        out = torch.cat([p.to(vm.dtype) for p in parts], -1)
        if out.shape[-1] != self._global_dim:
            raise RuntimeError(f"global state has {out.shape[-1]} features, the critic expects {self._global_dim}")
        return out

    # ------------------------------------------------------------------ schedule
    def anneal(self, trainer, iteration_s: float, iteration: bool = True) -> None:
        """Advance the learner's clock; with ``lr_annealing`` set every group's lr to ``lr0 (1 -
        progress)`` (progress: the larger of clock / budget_seconds and iterations / budget)."""
        self._clock_s += iteration_s
        self._iterations_done += int(iteration)
        cfg = self.config
        if not cfg.lr_annealing:
            return
        progress = 0.0
        if cfg.budget_seconds is not None:
            progress = max(progress, self._clock_s / cfg.budget_seconds)
        if cfg.budget_iterations is not None:
            progress = max(progress, self._iterations_done / cfg.budget_iterations)
        frac = max(0.0, 1.0 - progress)
        for group, lr0 in zip(self.optimizer.param_groups, self._base_lrs):
            group["lr"] = lr0 * max(frac, 1e-3)

    # ------------------------------------------------------------------ warm start
    def behaviour_clone(self, observations, targets) -> tuple[int, float]:
        """Fit the actors' deterministic outputs onto ``targets [B, T, N, d]`` (module docstring);
        returns the optimiser steps and the final worst fleet RMS distance (u-units). Full batch,
        a separate Adam (``warm_start_learning_rate``, decaying linearly to a tenth over
        ``warm_start_max_epochs``), at least ``warm_start_epochs`` epochs; a fleet stops once its
        RMS distance is within ``warm_start_tolerance_u`` (its networks are its own)."""
        cfg = self.config
        xs = [to_agent_major(o).to(a.log_std.dtype) for o, a in zip(observations, self.agents)]
        ys = [to_agent_major(y).to(a.log_std.dtype) for y, a in zip(targets, self.agents)]
        params = [p for a in self.agents for p in a.actor_parameters() if p is not a.log_std]
        opt = torch.optim.Adam(params, lr=cfg.warm_start_learning_rate)
        xn = [a.normalise_agent_major(x) for a, x in zip(self.agents, xs)]
        n_fleets = len(self.agents)
        rms = [float("inf")] * n_fleets
        steps = 0
        for epoch in range(cfg.warm_start_max_epochs):
            active = [f for f in range(n_fleets)
                      if epoch < cfg.warm_start_epochs or rms[f] > cfg.warm_start_tolerance_u]
            if not active:
                break
            for group in opt.param_groups:
                group["lr"] = cfg.warm_start_learning_rate * (1.0 - 0.9 * epoch / cfg.warm_start_max_epochs)
            opt.zero_grad(set_to_none=True)
            loss = 0.0
            for f in active:
                agent, x, y = self.agents[f], xn[f], ys[f]
                mean = agent.mean_agent_major(x)
                if agent.squash == "clip":
                    low, high = y <= 0.0, y >= 1.0
                    err = torch.where(low, torch.relu(mean + BOUND_MARGIN_U),
                                      torch.where(high, torch.relu(1.0 + BOUND_MARGIN_U - mean), mean - y))
                else:
                    err = agent.to_u(mean) - y
                loss = loss + agent.loss_weight * err.square().sum(-1).mean(1).sum()
                with torch.no_grad():
                    rms[f] = float((agent.to_u(mean) - y).square().mean().sqrt())
            if epoch >= cfg.warm_start_epochs and all(r <= cfg.warm_start_tolerance_u for r in rms):
                break
            loss.backward()  # full batch, no clipping: a regression, not a policy-gradient step
            opt.step()
            steps += 1
        with torch.no_grad():  # the final distances, after the last step
            for f, (agent, x, y) in enumerate(zip(self.agents, xn, ys)):
                rms[f] = float((agent.to_u(agent.mean_agent_major(x)) - y).square().mean().sqrt())
        self.warm_start_rms_per_fleet_u = rms
        self.warm_start_rms_u = max(rms) if rms else 0.0
        return steps, self.warm_start_rms_u

    # ------------------------------------------------------------------ state and report
    def variant_state(self) -> dict:
        return {} if self.duals is None else {"duals": self.duals.state_dict()}

    def load_variant_state(self, state: dict) -> None:
        if self.duals is not None and "duals" in state:
            self.duals.load_state_dict(state["duals"])

    def report(self) -> dict:
        cfg = self.config
        out = {"reward_network": cfg.reward_network, "dual_ascent": cfg.dual_ascent, "shared": cfg.shared,
               "critic": cfg.critic, "warm_start_rms_u": getattr(self, "warm_start_rms_u", None),
               "warm_start_rms_per_fleet_u": getattr(self, "warm_start_rms_per_fleet_u", None)}
        if self.duals is not None:
            out.update(self.dual_report())
        return out

