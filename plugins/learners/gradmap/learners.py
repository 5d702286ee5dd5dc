"""GradMAP and the gradient-based self-supervised baselines (docs/design.md §3), on shared code.

All four learners hold independent per-agent policies (:class:`gridflex.learning.policies.PolicySet`),
the dual variables of :mod:`.lagrangian`, one Adam optimiser (per-parameter-element, so it does
not couple agents) and per-agent gradient clipping. They differ in how the environment gradient
reaches the policies:

* ``gradmap``: per outer iteration, **one** environment gradient ``G = dL/du`` with respect to the
  rolled-out policy outputs ``u`` (open loop: through the squashing map, device dynamics and the
  implicit power-flow adjoint; observations frozen), then ``E`` epochs of the proximal surrogate
  with a trust region (:mod:`.surrogate`), then dual ascent.
* ``gradmap_e1``: the same with ``E = 1`` and no trust region (the ablation that isolates reuse).
* ``ssl_penalty`` / ``ssl_pd``: back-propagate the **closed-loop** rollout (policy -> action ->
  state -> next observation, through time and the power flow) into the policy parameters, one
  policy update per environment gradient; fixed penalty weights / the same dual ascent.

How GradMAP gets ``G`` in one simulation: the closed-loop rollout calls the policies without
gradient and hands the environment each output as a fresh leaf tensor, so the recorded graph is
exactly that of the open-loop re-simulation with ``u_fixed`` = those outputs (same inputs, same
deterministic trajectory) and one backward pass gives ``dL/du``; this saves the second power-flow
pass of a literal "roll out, then re-simulate" (``tests/test_gradmap.py`` checks the two agree).

Network term (``network_term``): ``ac_residuals`` (default) penalises the AC solution's voltage and
line residuals; ``feasibility_distance`` penalises instead the squared distance of the rollout's
nodal injections to the linearised feasible set (cvxpylayers, :class:`.lagrangian.FeasibilityTerm`,
one hourly dual), so ``G`` flows through the layer's KKT adjoint into the injections; the cost
stays the AC solution's and validation still judges with ``ac3ph``.

Counters: ``env_gradient_evaluations`` = backward passes through the environment (one per outer
iteration); ``policy_updates`` = optimiser steps (GradMAP: ``E x minibatches`` per iteration, plus
the warm start's behaviour-cloning steps).

Sharded over processes (``shards_agents``; docs/distributed.md): each process holds its own
agents' policies and Adam state (``env.acting_fleets``); rollouts return every agent's trajectory,
so the Lagrangian, ``G``'s normalisation, the proximal targets and the duals are computed whole
and identically on every process, and each process fits its own agents' slice. ``state_dict``
gathers every agent (a checkpoint equals a single process's), ``load_state_dict`` takes the slice.
"""

from __future__ import annotations

import math
from typing import ClassVar, Literal

import torch
from pydantic import Field

from gridflex.plugins.contracts import StepInputs
from gridflex.learning.policies import DeployablePolicy, PolicySet, clip_grad_norm_per_agent_
from gridflex.learning.training import TrainableLearner, Trainer, TrainingConfig

from .lagrangian import FAMILIES, DualAscent, DualInit, Duals, FeasibilityTerm, lagrangian
from .surrogate import fit_policies, normalise_gradient, proximal_targets


class PolicyLearnerConfig(TrainingConfig):
    """Settings shared by the GradMAP family (policies, optimiser, Lagrangian, duals)."""

    hidden_sizes: list[int] = Field([32, 32], description="hidden layer widths of every agent's MLP")
    activation: Literal["tanh", "relu", "silu"] = Field("relu", description="hidden activation")
    learning_rate: float = Field(3e-3, gt=0, le=1, description="Adam step size of the policy parameters")
    max_grad_norm: float = Field(1.0, gt=0, description="per-agent gradient-norm clip (each agent's own norm)")
    days_per_batch: int = Field(8, ge=1, le=366, description="training days per outer iteration")
    voltage_scale_pu: float = Field(0.01, gt=0, description="voltage residual unit (pu) of the normalised residual")
    local_scale: float = Field(1.0, gt=0, description="unit of device residuals (degC, kWh) in the normalised residual")
    dual_init_voltage: float = Field(20.0, ge=0, description="initial voltage dual (EUR per 0.01 pu per node-step)")
    dual_init_line: float = Field(20.0, ge=0, description="initial line-loading dual (EUR per unit overload per conductor-step)")
    dual_init_local: float = Field(1.0, ge=0, description="initial per-agent local (comfort) dual (EUR per degC-step)")
    dual_init_terminal: float = Field(1.0, ge=0, description="initial per-agent end-of-day dual (EUR per kWh or degC)")
    rho: float = Field(1000.0, ge=0, description="common dual step (EUR per unit of the dual measure per iteration)")
    rho_voltage: float | None = Field(None, ge=0, description="voltage dual step (as rho); None: rho")
    rho_line: float | None = Field(None, ge=0, description="line-loading dual step (as rho); None: rho")
    rho_local: float | None = Field(None, ge=0, description="local (comfort) dual step (as rho); None: rho")
    rho_terminal: float | None = Field(None, ge=0, description="end-of-day dual step (as rho); None: rho")
    rho_feasibility: float | None = Field(None, ge=0, description="feasibility-distance dual step (as rho); None: rho")
    lambda_max: float = Field(1e4, gt=0, description="upper clip of every dual (EUR per unit)")
    dual_measure: Literal["violation", "signed"] = Field(
        "signed", description="what moves the voltage and line duals: the mean normalised residual, or "
        "the signed mean distance past the limit (negative with slack); device and feasibility duals: violation")
    dual_allowed_voltage: float = Field(
        1e-3, ge=0, description="allowed level of the voltage measure (normalised residual per node-step)")
    dual_allowed_line: float = Field(
        1e-3, ge=0, description="allowed level of the line measure (relative overload per conductor-step)")
    dual_allowed_local: float = Field(
        1e-2, ge=0, description="allowed mean local residual (normalised residual per agent-step, degC / local_scale)")
    dual_allowed_terminal: float = Field(
        1e-2, ge=0, description="allowed mean end-of-day residual (normalised residual per agent, kWh or degC / local_scale)")
    dual_allowed_feasibility: float = Field(
        1e-3, ge=0, description="allowed mean squared feasibility distance (normalised units per step)")
    warm_start_epochs: int = Field(
        30, ge=0, description="behaviour-cloning epochs onto no_control before training (0: none)")
    network_term: Literal["ac_residuals", "feasibility_distance"] = Field(
        "ac_residuals", description="Lagrangian network term: AC voltage/line residuals, or the squared "
        "distance of the injections to the linearised feasible set (cvxpylayers; docs/linearised.md)")
    dual_init_feasibility: float = Field(
        20.0, ge=0, description="initial hourly dual of the squared feasibility distance (EUR per unit per step)")
    feasibility_scale_kw: float | None = Field(
        None, gt=0, description="unit of the feasibility distance (kW); None: the injection change that "
        "moves the median monitored voltage by voltage_scale_pu")


def dual_ascent_rule(cfg: PolicyLearnerConfig) -> DualAscent:
    """The dual update of ``cfg``: per-family rate (``rho_<family>``, else ``rho``) and allowed level.

    Default allowed levels (``eps``, normalised residual per step, all > 0 so that a satisfied
    constraint's dual falls by ``rho eps`` per iteration under ``dual_measure: violation``):
    voltage ``1e-3`` = a mean residual of 1e-5 pu per node-step at the *training* limits (e.g.
    1 % of an hour's samples 0.001 pu past them), far inside the 0.005 pu margin to the evaluation
    limits, yet a fall of 1 EUR per iteration at ``rho`` 1000; line ``1e-3``: 0.1 % mean overload
    (lines have no training margin); local and terminal ``1e-2``: 0.01 degC or kWh per agent-step
    or day, below any comfort or energy shortfall that matters, while the device duals (initial 1)
    are small enough to need a faster fall; feasibility ``1e-3``: ``g_F`` is squared, so 1e-3 is a
    distance of about 0.03 voltage units. A larger ``eps`` lets duals fall faster and tolerates
    more residual; ``dual_measure: signed`` falls in proportion to the slack instead.
    """
    rates = {f: getattr(cfg, f"rho_{f}") for f in FAMILIES}
    return DualAscent(rho={f: cfg.rho if r is None else r for f, r in rates.items()},
                      allowed={f: getattr(cfg, f"dual_allowed_{f}") for f in FAMILIES},
                      lam_max=cfg.lambda_max, measure=cfg.dual_measure)


def dual_space(trial, *, rates: bool = True, levels: bool = True) -> dict:
    """Tunable dual settings of the family (``gridflex tune``, docs/tuning.md): the dual rate per
    constraint family (``rho_voltage``, ``rho_line``, ``rho_local``, ``rho_terminal``; EUR per unit
    per iteration), ``lambda_max`` and the allowed levels ``dual_allowed_*`` (the epsilons). The
    defaults (rates: ``rho`` = 1000) lie inside every range."""
    params = {}
    if rates:
        for family in ("voltage", "line", "local", "terminal"):
            params[f"rho_{family}"] = trial.suggest_float(f"rho_{family}", 10.0, 1e5, log=True)
        params["lambda_max"] = trial.suggest_float("lambda_max", 1e2, 1e5, log=True)
    if levels:
        params["dual_allowed_voltage"] = trial.suggest_float("dual_allowed_voltage", 1e-4, 1e-2, log=True)
        params["dual_allowed_line"] = trial.suggest_float("dual_allowed_line", 1e-4, 1e-2, log=True)
        params["dual_allowed_local"] = trial.suggest_float("dual_allowed_local", 1e-3, 1e-1, log=True)
        params["dual_allowed_terminal"] = trial.suggest_float("dual_allowed_terminal", 1e-3, 1e-1, log=True)
    return params


class _PolicyLearner(TrainableLearner):
    """Policies, optimiser, duals, warm start and state dicts of the family."""

    Config: ClassVar = PolicyLearnerConfig
    dual_ascent: ClassVar[bool] = True
    shards_agents: ClassVar[bool] = True
    dual_columns: ClassVar[tuple[str, ...]] = tuple(
        f"dual_{f}_{k}" for f in FAMILIES for k in ("mean", "at_max"))

    def __init__(self, config, env, *, seed: int = 0):
        config = config if isinstance(config, self.Config) else self.Config.model_validate(config)
        super().__init__(config, env, seed=seed)
        torch.manual_seed(seed)
        self.policies = PolicySet.for_env(env, config.hidden_sizes, config.activation, seed=seed)
        self.optimizer = torch.optim.Adam(self.policies.parameters(), lr=config.learning_rate)
        steps = int(round(24.0 / env.dt_h))
        self.duals = Duals(env, steps, env.dt_h,
                           DualInit(config.dual_init_voltage, config.dual_init_line, config.dual_init_local,
                                    config.dual_init_terminal, config.dual_init_feasibility),
                           feasibility=config.network_term == "feasibility_distance")
        self.ascent = dual_ascent_rule(config)
        self._feasibility: FeasibilityTerm | None = None  # built on first use
        self.generator = torch.Generator().manual_seed(int(seed) + 0x6D6170)

    # ------------------------------------------------------------------ acting
    def act(self, fleet_index: int, t: int, obs: torch.Tensor, state: torch.Tensor,
            inputs: StepInputs) -> torch.Tensor:
        policy = self.policies[fleet_index]
        if torch.is_grad_enabled():  # someone differentiates through the policy: the eager module
            return policy(obs)
        return self.env.acting(policy)(obs)

    def deployable_policies(self) -> list[DeployablePolicy]:
        """Per fleet, the controller of :meth:`act` in exportable parts (``gridflex export``)."""
        return [DeployablePolicy(p, "sigmoid", 0.0) for p in self.policies]

    # ------------------------------------------------------------------ shared steps
    def setup(self, trainer: Trainer) -> None:
        """Observation statistics from a no-control rollout; behaviour-clone it (warm start)."""
        exo = trainer.sample_days(self.config.days_per_batch)
        env, fleets = self.env, self.env.acting_fleets
        with torch.no_grad():
            rollout = env.rollout(exo, lambda f, t, o, s, i: fleets[f].model.baseline_u("no_control", s, i))
        self._update_statistics([traj.observations for traj in rollout.fleets])
        obs = [env.own(f, traj.observations) for f, traj in enumerate(rollout.fleets)]
        if self.config.warm_start_epochs:
            _, steps = fit_policies(list(self.policies), obs, [env.own(f, tr.u) for f, tr in enumerate(rollout.fleets)],
                                    self.optimizer, self.config.warm_start_epochs, 2,
                                    self.config.max_grad_norm, self.generator, self._gather)
            self.env.counters.policy_updates += steps

    def feasibility_term(self, trainer: Trainer) -> FeasibilityTerm | None:
        """The feasibility network term (built once, training limits), or ``None`` for AC residuals."""
        cfg = self.config
        if cfg.network_term != "feasibility_distance":
            return None
        if self._feasibility is None:
            self._feasibility = FeasibilityTerm(self.env, trainer.v_limits_train_pu, trainer.line_limits,
                                                cfg.voltage_scale_pu, cfg.feasibility_scale_kw)
        return self._feasibility

    def _lagrangian(self, trainer: Trainer, rollout):
        cfg = self.config
        return lagrangian(self.env, rollout, self.duals, trainer.v_limits_train_pu, trainer.line_limits,
                          cfg.voltage_scale_pu, cfg.local_scale, self.feasibility_term(trainer))

    @property
    def _gather(self):
        """``AgentShard.gather_agents`` when sharded over processes, else ``None``."""
        return None if self.env.shard is None else self.env.shard.gather_agents

    def _update_statistics(self, observations: list[torch.Tensor]) -> None:
        """Each agent's observation statistics from every fleet's observations ``[B, T, N_f, k]``
        (all agents; sharded over processes, each process updates its own agents' statistics)."""
        shard = self.env.shard
        for f, (policy, obs) in enumerate(zip(self.policies, observations)):
            policy.normaliser.update(obs, None if shard is None else shard.own(f))

    def _after_iteration(self, rollout, lag) -> None:
        self._update_statistics([traj.observations for traj in rollout.fleets])
        if self.dual_ascent:
            self.duals.ascend(lag.means, self.ascent)

    def dual_summary(self) -> tuple[float, float]:
        return self.duals.summary()

    def dual_report(self) -> dict[str, float | None]:
        """Per-family dual mean and share at ``lambda_max`` (:meth:`.lagrangian.Duals.family_report`).
        Sharded over processes, first checks that every process holds bitwise the same duals."""
        if self.env.shard is not None:
            self.env.shard.ranks.check_identical(self.duals.tensors(), "the dual variables")
        return self.duals.family_report(self.config.lambda_max)

    def _per_agent_slots(self, policies: dict, optimizer: dict) -> list[tuple[object, str | None, int]]:
        """``(key, name, fleet)`` of every per-agent tensor (agent index leading) of the two state
        dicts: ``policies[key]`` (``name`` None) or ``optimizer["state"][key][name]``."""
        fleet_of_param = [f for f, p in enumerate(self.policies) for _ in p.parameters()]
        slots = [(key, None, int(key.split(".", 1)[0])) for key, v in policies.items() if v.dim()]
        return slots + [(index, name, fleet_of_param[index]) for index, st in optimizer["state"].items()
                        for name, v in st.items() if torch.is_tensor(v) and v.dim()]

    def _map_per_agent(self, policies: dict, optimizer: dict, fn) -> tuple[dict, dict]:
        """Copies of the two state dicts with their per-agent tensors replaced by ``fn(tensors, fleets)``."""
        slots = self._per_agent_slots(policies, optimizer)
        values = [policies[k] if n is None else optimizer["state"][k][n] for k, n, _ in slots]
        policies, state = dict(policies), {i: dict(st) for i, st in optimizer["state"].items()}
        for (k, n, _), x in zip(slots, fn(values, [f for _, _, f in slots])):
            if n is None:
                policies[k] = x
            else:
                state[k][n] = x
        return policies, {**optimizer, "state": state}

    def state_dict(self) -> dict:
        """Policies, Adam state, duals and the minibatch generator; every agent's, also when
        sharded over processes (gathered: every process must call it)."""
        policies, optimizer = self.policies.state_dict(), self.optimizer.state_dict()
        if self.env.shard is not None:
            gather = self.env.shard.gather_agents
            policies, optimizer = self._map_per_agent(
                policies, optimizer, lambda xs, fs: gather([(f, x, 0) for x, f in zip(xs, fs)]))
        return {"policies": policies, "optimizer": optimizer, "duals": self.duals.state_dict(),
                "generator": self.generator.get_state()}  # minibatch permutations: resumes equal

    def load_state_dict(self, state: dict) -> None:
        """A :meth:`state_dict` (every agent's); sharded over processes, this process's agents of it."""
        policies, optimizer = state["policies"], state["optimizer"]
        if self.env.shard is not None:
            own = self.env.shard.own
            policies, optimizer = self._map_per_agent(
                policies, optimizer, lambda xs, fs: [x[own(f)].clone() for x, f in zip(xs, fs)])
        self.policies.load_state_dict(policies)
        self.optimizer.load_state_dict(optimizer)
        self.duals.load_state_dict(state["duals"])
        if "generator" in state:  # absent in checkpoints written before it was saved
            self.generator.set_state(state["generator"])


# ============================================================================ GradMAP
class GradMAPConfig(PolicyLearnerConfig):
    """GradMAP: one environment gradient, then E proximal epochs with a trust region."""

    eta: float = Field(0.2, gt=0, description="proximal step: targets u - eta * G_normalised (u-units)")
    delta: float | None = Field(0.2, gt=0, le=1, description="trust region |pi(o) - u|_inf <= delta (u-units); None: none")
    epochs: int = Field(8, ge=1, le=1000, description="E: inner epochs on the surrogate per environment gradient")
    minibatches: int = Field(2, ge=1, description="minibatches per inner epoch (samples = days x steps, all agents at once)")
    grad_normalisation: Literal["fleet_rms", "agent_rms", "none"] = Field(
        "fleet_rms", description="scale of G before the proximal step (see surrogate.normalise_gradient)")


class GradMAP(_PolicyLearner):
    """GradMAP: primal-dual learning with a proximal surrogate in action space."""

    name = "gradmap"
    Config = GradMAPConfig
    history_extras = ("lagrangian", "train_cost_per_day", "train_violation_rate", "clipped_share",
                      "fit_loss", "grad_rms", "env_s", "fit_s", "train_feasibility_distance")

    @classmethod
    def search_space(cls, trial) -> dict:
        """Proximal step eta, trust region delta, inner learning rate, inner epochs E, minibatches,
        then the duals (:func:`dual_space`); ranges contain the defaults (docs/tuning.md)."""
        return {"eta": trial.suggest_float("eta", 0.02, 1.0, log=True),
                "delta": trial.suggest_float("delta", 0.02, 1.0, log=True),
                "learning_rate": trial.suggest_float("learning_rate", 3e-4, 3e-2, log=True),
                "epochs": trial.suggest_int("epochs", 1, 16),
                "minibatches": trial.suggest_int("minibatches", 1, 8),
                **dual_space(trial)}

    def environment_gradient(self, trainer: Trainer, exo):
        """Closed-loop rollout with the policies (no policy graph) and ``G = dL/du`` per fleet
        ``[B, T, N, d]`` (every agent's, also when sharded); returns ``(rollout, lagrangian value, G)``."""
        leaves: list[list[torch.Tensor]] = [[] for _ in self.env.fleets]

        def controller(f, t, obs, state, inputs):
            with torch.no_grad():
                u = self.env.acting(self.policies[f])(obs)
            u = u.detach().requires_grad_(True)
            leaves[f].append(u)
            return u

        rollout = self.env.rollout(exo, controller)
        lag = self._lagrangian(trainer, rollout)
        flat = [u for per_fleet in leaves for u in per_fleet]
        grads = torch.autograd.grad(lag.value, flat, allow_unused=True, materialize_grads=True)
        steps = len(leaves[0])
        g = self.env.gather_fleets([torch.stack(grads[f * steps:(f + 1) * steps], 1) for f in range(len(leaves))])
        self.env.counters.env_gradient_evaluations += 1
        return rollout, lag, g

    def train_iteration(self, trainer: Trainer) -> dict[str, float]:
        return self.outer_iteration(trainer, trainer.sample_days(self.config.days_per_batch))

    def outer_iteration(self, trainer: Trainer, exo, ascend: bool = True) -> dict[str, float]:
        """docs/design.md §3 steps 1-4 on the days ``exo`` (``ascend=False`` keeps the duals fixed)."""
        cfg = self.config
        t0 = trainer.timer()
        rollout, lag, g = self.environment_gradient(trainer, exo)
        t1 = trainer.timer()
        env = self.env  # sharded: G, u and the targets cover every agent; the fit, this process's
        obs = [env.own(f, traj.observations.detach()) for f, traj in enumerate(rollout.fleets)]
        u = [traj.u.detach() for traj in rollout.fleets]
        g_hat = [normalise_gradient(g_f, cfg.grad_normalisation) for g_f in g]
        prox = proximal_targets(u, g_hat, cfg.eta, cfg.delta)
        self._update_statistics([traj.observations for traj in rollout.fleets])  # before the fit
        targets = [env.own(f, y) for f, y in enumerate(prox.targets)]
        fit_loss, steps = fit_policies(list(self.policies), obs, targets, self.optimizer, cfg.epochs,
                                       cfg.minibatches, cfg.max_grad_norm, self.generator,
                                       self._gather)
        self.env.counters.policy_updates += steps
        if self.dual_ascent and ascend:
            self.duals.ascend(lag.means, self.ascent)
        t2 = trainer.timer()
        g_all = torch.cat([x.reshape(-1) for x in g])
        return {"lagrangian": float(lag.value.detach()), "train_cost_per_day": lag.cost_per_day,
                "train_violation_rate": lag.train_violation_rate, "clipped_share": prox.clipped_share,
                "fit_loss": fit_loss, "grad_rms": float(g_all.square().mean().sqrt()),
                "env_s": t1 - t0, "fit_s": t2 - t1,
                "train_feasibility_distance": lag.feasibility_distance_per_day}


class GradMAPE1Config(GradMAPConfig):
    """gradmap_e1: GradMAP with E = 1 and no trust region (the reuse ablation)."""

    epochs: Literal[1] = Field(1, description="E = 1: one inner epoch per environment gradient (fixed)")
    delta: None = Field(None, description="no trust region (fixed)")


class GradMAPE1(GradMAP):
    """GradMAP ablation: one surrogate epoch per environment gradient, no trust region."""

    name = "gradmap_e1"
    Config = GradMAPE1Config

    @classmethod
    def search_space(cls, trial) -> dict:
        """GradMAP's space without E and delta (fixed at 1 and none in this ablation)."""
        return {"eta": trial.suggest_float("eta", 0.02, 1.0, log=True),
                "learning_rate": trial.suggest_float("learning_rate", 3e-4, 3e-2, log=True),
                "minibatches": trial.suggest_int("minibatches", 1, 8),
                **dual_space(trial)}


# ============================================================================ SSL baselines
class SSLConfig(PolicyLearnerConfig):
    """Closed-loop back-propagation through time and the power flow; one update per gradient."""


class SSLPenalty(_PolicyLearner):
    """Self-supervised: back-propagate the closed-loop rollout, fixed penalty weights."""

    name = "ssl_penalty"
    Config = SSLConfig
    dual_ascent = False  # the dual_init_* values are the fixed penalty weights
    history_extras = ("lagrangian", "train_cost_per_day", "train_violation_rate", "grad_norm",
                      "train_feasibility_distance")

    @classmethod
    def search_space(cls, trial) -> dict:
        """Learning rate and the fixed penalty weights (``dual_init_*``, EUR per unit)."""
        return {"learning_rate": trial.suggest_float("learning_rate", 3e-4, 3e-2, log=True),
                "dual_init_voltage": trial.suggest_float("dual_init_voltage", 0.5, 1000.0, log=True),
                "dual_init_line": trial.suggest_float("dual_init_line", 0.5, 1000.0, log=True),
                "dual_init_local": trial.suggest_float("dual_init_local", 0.05, 100.0, log=True),
                "dual_init_terminal": trial.suggest_float("dual_init_terminal", 0.05, 100.0, log=True)}

    def train_iteration(self, trainer: Trainer) -> dict[str, float]:
        cfg = self.config
        exo = trainer.sample_days(cfg.days_per_batch)
        rollout = self.env.rollout(exo, lambda f, t, o, s, i: self.policies[f](o))
        lag = self._lagrangian(trainer, rollout)
        self.optimizer.zero_grad(set_to_none=True)
        lag.value.backward()  # sharded: each process's policies get their own agents' gradient
        self.env.counters.env_gradient_evaluations += 1
        norms = [clip_grad_norm_per_agent_(p.mlp.parameters(), cfg.max_grad_norm) for p in self.policies]
        self.optimizer.step()
        self.env.counters.policy_updates += 1
        self._after_iteration(rollout, lag)
        norms = self.env.gather_fleets(norms, dim=0)  # every agent's norm [N_f]
        grad_norm = float(torch.cat(norms).square().sum().sqrt())
        return {"lagrangian": float(lag.value.detach()), "train_cost_per_day": lag.cost_per_day,
                "train_violation_rate": lag.train_violation_rate,
                "grad_norm": grad_norm if math.isfinite(grad_norm) else None,
                "train_feasibility_distance": lag.feasibility_distance_per_day}


class SSLPD(SSLPenalty):
    """Self-supervised primal-dual: closed-loop back-propagation with GradMAP's dual ascent."""

    name = "ssl_pd"
    dual_ascent = True

    @classmethod
    def search_space(cls, trial) -> dict:
        """Learning rate and the dual ascent (rates per family, lambda_max, allowed levels)."""
        return {"learning_rate": trial.suggest_float("learning_rate", 3e-4, 3e-2, log=True),
                **dual_space(trial)}


LEARNERS = (GradMAP, GradMAPE1, SSLPenalty, SSLPD)
