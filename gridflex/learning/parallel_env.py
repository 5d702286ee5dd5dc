"""A PettingZoo ``ParallelEnv`` over the batched environment: one day per episode, one step per hour.

For RL libraries that speak PettingZoo (optional extra ``pettingzoo``). The batched tensor
environment (:class:`~gridflex.learning.environment.Environment`, ``rollout`` over ``[B, T]``)
stays the fast path for gridflex's own learners; this adapter steps one day (``B = 1``) with
Python dicts and is for interoperability.

* **Agents**: one per device, named by device type, index and bus (``battery_3@671``;
  :func:`gridflex.learning.agent_ids.agent_ids`), in the environment's order.
* **Spaces**, from the device models: observation ``Box(-inf, inf, (k,), float32)`` with ``k =
  env.obs_dim(fleet)`` (the environment's local features, then the device's own); action
  ``Box(0, 1, (d,), float32)`` with ``d = model.action_dim``: the policy output ``u``, which the
  device maps to its physical set-point ``lo(s) + (hi(s) - lo(s)) u`` (state-dependent limits
  from ``action_bounds``; the set-point is in ``infos[agent]["set_point"]``).
* **Dynamics** exactly as :meth:`Environment.rollout` solving step by step: every agent's action,
  device dynamics, then one AC power flow (warm-started; under the ``regulated`` tap treatment
  with the tap controller).
* **Reward**: IPPO's shaped reward (:mod:`gridflex.learning.rewards`, weights
  :class:`~gridflex.learning.rewards.RewardWeights`): minus own bill share and device cost, own
  node voltage residuals, own comfort, a per-capita share of the feeder's cost with its network
  residuals (training voltage limits), and the end-of-day residuals at the last step.
* **Episodes**: ``reset(seed, options={"day": i})`` takes day ``i`` of the split (default: a day
  drawn with the seeded generator); after ``T`` steps every agent is truncated (a time limit, not
  a terminal state) and ``agents`` is empty.
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np
import torch

try:
    from gymnasium import spaces
    from pettingzoo import ParallelEnv
except ImportError as exc:  # pragma: no cover - the optional extra
    raise ImportError("gridflex.learning.parallel_env needs PettingZoo: pip install 'gridflex[pettingzoo]'") from exc

from gridflex.learning.agent_ids import agent_ids
from gridflex.learning.environment import Exogenous, FleetTrajectory, Rollout
from gridflex.learning.rewards import RewardWeights, agent_monitor_maps, shaped_rewards
from gridflex.network.powerflow import combine_results


class GridflexParallelEnv(ParallelEnv):
    """PettingZoo ParallelEnv of a built world (``gridflex.runs.world.build_world``; see module
    docstring). ``split``: ``"train"``, ``"validation"`` or ``"test"`` days."""

    metadata = {"name": "gridflex_v0", "render_modes": []}

    def __init__(self, world, split: str = "train", weights: RewardWeights | None = None):
        self.world = world
        self.env = world.env
        cfg = world.loaded.config
        self.days = _days_of(world, split)
        self.weights = weights or RewardWeights()
        self.v_limits_train_pu = tuple(cfg.limits.v_limits_train_pu)
        self.line_limits = bool(cfg.limits.line_limits)
        self.ids = agent_ids(self.env)
        self.possible_agents = [a.name for a in self.ids]
        self.agents: list[str] = []
        self._by_fleet = [[a.name for a in self.ids if a.fleet == f] for f in range(len(self.env.fleets))]
        self._maps = agent_monitor_maps(self.env)
        self._rng = np.random.default_rng()
        self._exo: Exogenous | None = None

    # ------------------------------------------------------------------ spaces
    @functools.lru_cache(maxsize=None)
    def observation_space(self, agent: str) -> spaces.Box:
        k = self.env.obs_dim(self._fleet_of(agent))
        return spaces.Box(-np.inf, np.inf, (k,), np.float32)

    @functools.lru_cache(maxsize=None)
    def action_space(self, agent: str) -> spaces.Box:
        d = int(self.env.fleets[self._fleet_of(agent)].model.action_dim)
        return spaces.Box(0.0, 1.0, (d,), np.float32)

    @functools.lru_cache(maxsize=None)
    def _fleet_of(self, agent: str) -> int:
        return next(a.fleet for a in self.ids if a.name == agent)

    # ------------------------------------------------------------------ episode
    def reset(self, seed: int | None = None, options: dict | None = None):
        if seed is not None:
            self._rng = np.random.default_rng(seed)
            for agent in self.possible_agents:
                self.action_space(agent).seed(int(self._rng.integers(2**31)))
        day = (options or {}).get("day")
        day = int(self._rng.integers(len(self.days))) if day is None else int(day)
        env = self.env
        self._exo = exo = env.exogenous(self.days.get(np.array([day])))
        self._states = [f.model.initial_state(1, exo.temp_out_c[:, 0]) for f in env.fleets]
        self._first = list(self._states)
        self._v_prev = [torch.ones(1, f.n_agents, device=env.device, dtype=env.dtype) for f in env.fleets]
        self._warm = None
        self._taps = env.new_tap_controller(1) if env.tap_treatment == "regulated" else None
        self._t = 0
        self.agents = list(self.possible_agents)
        return self._observations(self._t), {a: {"day": day} for a in self.agents}

    def step(self, actions: dict[str, Any]):
        if self._exo is None or not self.agents:
            raise RuntimeError("call reset() before step(); the day is over")
        env, exo, t = self.env, self._exo, self._t
        tensor = dict(device=env.device, dtype=env.dtype)
        p_t = exo.pv_injection_kw[:, t]
        q_t = torch.zeros_like(p_t)
        trajectories, set_points = [], {}
        with torch.no_grad():
            for f, fleet in enumerate(env.fleets):
                model, state = fleet.model, self._states[f]
                inputs = env.step_inputs(exo, t, f, self._v_prev[f])
                obs = env.observation(f, state, inputs)
                u = torch.as_tensor(np.stack([np.asarray(actions[a], dtype=np.float64).reshape(-1)
                                              for a in self._by_fleet[f]]), **tensor).clamp(0.0, 1.0)[None]
                action = model.action(u, state, inputs)
                nxt = model.step(state, action, inputs)
                p_kw, q_kvar = model.demand(action, state)
                last = t == exo.steps - 1
                terminal = model.terminal_residuals(self._first[f], nxt)
                trajectories.append(FleetTrajectory(
                    states=torch.stack([state, nxt], 1), u=u[:, None], actions=action[:, None],
                    observations=obs[:, None], cost=model.cost(state, action, inputs)[:, None],
                    residuals=model.residuals(state, action, nxt, inputs)[:, None],
                    terminal=terminal if last else torch.zeros_like(terminal),
                    p_kw=p_kw[:, None], q_kvar=q_kvar[:, None]))
                p_node, q_node = env.node_consumption(f, p_kw, q_kvar)
                p_t, q_t = p_t + p_node, q_t + q_node
                self._states[f] = nxt
                for name, a in zip(self._by_fleet[f], action[0].cpu().numpy()):
                    set_points[name] = a
            if self._taps is None:
                flow = env.solver.solve(exo.load_scale[:, t], p_t, q_t, warm_start=self._warm)
                env.counters.count_solves(exo.batch)  # counted like the batched environment's
            else:
                flow = self._taps.solve_step(exo.load_scale[:, t], p_t, q_t, self._warm)
            self._warm = flow
            self._v_prev = env.agent_voltages(flow.vm_pu.detach())
            one_step = Rollout(_step_of(exo, t), trajectories, p_t[:, None], q_t[:, None],
                               combine_results([flow], "stack"))
            shaped = shaped_rewards(env, one_step, self._maps, self.weights, self.v_limits_train_pu,
                                    self.line_limits)
        rewards = {}
        for f, names in enumerate(self._by_fleet):
            values = shaped.rewards[f][0, 0].cpu().numpy()
            rewards.update({name: float(v) for name, v in zip(names, values)})
        self._t += 1
        done = self._t >= exo.steps
        observations = self._observations(min(self._t, exo.steps - 1))
        agents = self.agents
        terminations = dict.fromkeys(agents, False)
        truncations = dict.fromkeys(agents, done)
        infos = {a: {"set_point": set_points[a], "converged": bool(flow.converged.all())} for a in agents}
        if done:
            self.agents = []
        return observations, rewards, terminations, truncations, infos

    def _observations(self, t: int) -> dict[str, np.ndarray]:
        """Every agent's observation at step ``t`` (the current device states), float32."""
        env, out = self.env, {}
        with torch.no_grad():
            for f in range(len(env.fleets)):
                inputs = env.step_inputs(self._exo, t, f, self._v_prev[f])
                obs = env.observation(f, self._states[f], inputs)[0].cpu().numpy().astype(np.float32)
                out.update(zip(self._by_fleet[f], obs))
        return out

    def render(self) -> None:
        """Nothing to render (metrics come from gridflex's own evaluation)."""

    def close(self) -> None:
        """Nothing to release."""


def _days_of(world, split: str):
    if split == "test":
        from gridflex.fleet.profiles import load_test_days

        cfg = world.loaded.config
        seed = cfg.seed if cfg.population.seed is None else cfg.population.seed
        return load_test_days(dt_h=cfg.data.dt_h, n_agents=len(world.env.households), seed=seed)
    return world.data.split(split)


def _step_of(exo: Exogenous, t: int) -> Exogenous:
    """Step ``t`` of ``exo`` as a one-step day (every ``[B, ..., T]`` field keeps a step axis)."""
    return Exogenous(household_kw=exo.household_kw[:, :, t:t + 1], pv_kw=exo.pv_kw[:, :, t:t + 1],
                     load_scale=exo.load_scale[:, t:t + 1], pv_injection_kw=exo.pv_injection_kw[:, t:t + 1],
                     temp_out_c=exo.temp_out_c[:, t:t + 1], price_per_kwh=exo.price_per_kwh[:, t:t + 1],
                     dt_h=exo.dt_h, day_of_year=exo.day_of_year)
