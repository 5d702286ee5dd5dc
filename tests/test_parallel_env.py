"""The PettingZoo ParallelEnv adapter (issue #17 item 4): it passes PettingZoo's own API test on the
default small scenario, and one episode under fixed actions is the batched environment's step-wise
rollout of the same day, with IPPO's shaped rewards."""

from __future__ import annotations

import numpy as np
import pytest
import torch

pytest.importorskip("pettingzoo")

from pettingzoo.test import parallel_api_test  # noqa: E402

from gridflex.learning.parallel_env import GridflexParallelEnv  # noqa: E402
from gridflex.learning.rewards import RewardWeights, agent_monitor_maps, shaped_rewards  # noqa: E402


@pytest.fixture(scope="module")
def world():
    from gridflex.plugins.registry import load_registry
    from gridflex.runs.world import build_world
    from gridflex.scenario import load_scenario

    pm, registry = load_registry()
    return build_world(load_scenario(None, [], registry), registry, pm)  # ieee13_small, 160 agents


def test_passes_the_pettingzoo_parallel_api_test(world):
    env = GridflexParallelEnv(world)
    parallel_api_test(env, num_cycles=30)
    names = env.possible_agents
    assert len(names) == world.env.n_agents == len(set(names))
    assert names[0].startswith("battery_0@") and any(n.startswith("heat_pump_") for n in names)
    battery, heat_pump = names[0], next(n for n in names if n.startswith("heat_pump_"))
    assert env.observation_space(battery).shape == (world.env.obs_dim(0),)
    assert env.action_space(battery).shape == (2,)  # p and q (reactive_power: true)
    assert env.action_space(heat_pump).shape == (1,)


def test_an_episode_is_the_batched_step_wise_rollout_with_ippo_rewards(world):
    env = world.env
    par = GridflexParallelEnv(world, split="validation")
    obs, _ = par.reset(seed=3, options={"day": 2})
    rng = np.random.default_rng(0)
    steps = par._exo.steps
    u = [rng.uniform(size=(steps, f.n_agents, f.model.action_dim)) for f in env.fleets]
    rewards, first_obs = [], obs
    for t in range(steps):
        actions = {}
        for f, names in enumerate(par._by_fleet):
            actions.update({name: u[f][t, i].astype(np.float32) for i, name in enumerate(names)})
        obs, reward, terminated, truncated, infos = par.step(actions)
        rewards.append(reward)
        assert not any(terminated.values()) and all(truncated.values()) == (t == steps - 1)
    assert par.agents == []

    # the same day and actions in the batched environment (step-wise, as the adapter solves)
    exo = env.exogenous(par.days.get(np.array([2])))
    u_fixed = [torch.as_tensor(x.astype(np.float32), dtype=env.dtype)[None] for x in u]
    with torch.no_grad():
        rollout = env.rollout(exo, u_fixed=u_fixed, voltage_feedback=True)
        limits = tuple(world.loaded.config.limits.v_limits_train_pu)
        shaped = shaped_rewards(env, rollout, agent_monitor_maps(env), RewardWeights(), limits,
                                world.loaded.config.limits.line_limits)
    for f, names in enumerate(par._by_fleet):
        np.testing.assert_allclose(first_obs[names[0]], rollout.fleets[f].observations[0, 0, 0].numpy(),
                                   rtol=1e-6)  # float32 observations
        mine = np.array([[rewards[t][name] for name in names] for t in range(steps)])
        np.testing.assert_allclose(mine, shaped.rewards[f][0].numpy(), rtol=1e-9, atol=1e-9)
        last = np.array([infos[name]["set_point"] for name in names])
        np.testing.assert_allclose(last, rollout.fleets[f].actions[0, -1].numpy(), rtol=1e-12, atol=1e-12)
    assert np.std([r for step in rewards for r in step.values()]) > 0  # rewards are not constant
