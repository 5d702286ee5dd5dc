"""The PPO variants of issue #21: TorchRL equivalence of the loss and GAE, the generalised reward,
the credit diagnostic, shared actors and the centralised critic, PPO-Lagrangian duals, warm start.

TorchRL (the ``test`` extra, ``torchrl>=0.14.1,<0.15``: 0.14.1 installs beside torch 2.13) is the
independent reference for :func:`gae` and the clipped loss :func:`ppo_loss`.
"""

from __future__ import annotations

import pytest
import torch

from gridflex_plugins.learners.ippo.agents import FleetActorCritic
from gridflex_plugins.learners.ippo.ppo import FleetBatch, PPOSettings, gae, ppo_loss

torchrl = pytest.importorskip("torchrl", reason="TorchRL is the test extra's reference implementation")


# ============================================================================ TorchRL equivalence
def test_gae_equals_torchrl_generalized_advantage_estimate():
    from torchrl.objectives.value.functional import generalized_advantage_estimate

    g = torch.Generator().manual_seed(3)
    b, t, n, gamma, lam = 3, 7, 4, 0.97, 0.9
    rewards = torch.randn(b, t, n, generator=g, dtype=torch.float64)
    values = torch.randn(b, t, n, generator=g, dtype=torch.float64)
    adv, returns = gae(rewards, values, gamma, lam)
    # TorchRL: [..., T, 1] with time at -2; each day ends (terminated) after its last step
    to_rl = lambda x: x.permute(0, 2, 1).unsqueeze(-1)  # noqa: E731  [B, N, T, 1]
    next_values = torch.cat([values[:, 1:], torch.zeros_like(values[:, :1])], 1)
    done = torch.zeros(b, n, t, 1, dtype=torch.bool)
    done[:, :, -1] = True
    f64 = lambda x: torch.tensor(x, dtype=torch.float64)  # noqa: E731  (a float gamma is cast to float32)
    rl_adv, rl_target = generalized_advantage_estimate(f64(gamma), f64(lam), to_rl(values), to_rl(next_values),
                                                       to_rl(rewards), done, done, time_dim=-2)
    torch.testing.assert_close(to_rl(adv), rl_adv, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(to_rl(returns), rl_target, rtol=1e-12, atol=1e-12)


def test_clipped_loss_and_gradients_equal_torchrl_clip_ppo_loss():
    """One agent's :func:`ppo_loss` (``sigmoid`` squash: an exact Gaussian in the stored ``x``) and
    its parameter gradients equal TorchRL's ``ClipPPOLoss`` with the same networks and batch."""
    from tensordict import TensorDict
    from tensordict.nn import TensorDictModule
    from torchrl.modules import IndependentNormal, ProbabilisticActor, ValueOperator
    from torchrl.objectives import ClipPPOLoss

    g = torch.Generator().manual_seed(5)
    k, d, m = 5, 2, 64
    agent = FleetActorCritic(1, k, d, [16], [16], "tanh", "sigmoid", -0.7, generator=g, dtype=torch.float64,
                             actor_out_scale=1.0)
    obs = torch.randn(m, k, generator=g, dtype=torch.float64) * 2 + 1
    agent.normaliser.update(obs[:, None])
    with torch.no_grad():
        _, stored, behaviour_lp = agent.sample(obs[:, None], g)  # [m, 1, d], [m, 1]
        agent.log_std.add_(0.15)  # the current policy differs from the behaviour policy
        for w in agent.policy.mlp.weights:
            w.add_(0.3 * torch.randn(w.shape, generator=g, dtype=w.dtype))
    adv = torch.randn(1, m, generator=g, dtype=torch.float64)
    returns = torch.randn(1, m, generator=g, dtype=torch.float64)
    batch = FleetBatch(obs[None], stored.transpose(0, 1), behaviour_lp.T, adv, returns, torch.zeros(1, m))
    settings = PPOSettings(clip=0.2, value_coef=0.5, entropy_coef=0.01)
    per_agent, parts = ppo_loss(agent, batch, adv, torch.arange(m), settings)
    agent.zero_grad()
    per_agent.sum().backward()
    ours = {name: p.grad.clone() for name, p in agent.named_parameters() if p.grad is not None}

    class Loc(torch.nn.Module):
        def forward(self, o):
            return agent.mean(o[:, None])[:, 0], agent.clamped_log_std()[0].exp().expand(o.shape[0], -1)

    class Value(torch.nn.Module):
        def forward(self, o):
            return agent.value_agent_major(o[None])[0][:, None]

    actor = ProbabilisticActor(TensorDictModule(Loc(), ["observation"], ["loc", "scale"]), in_keys=["loc", "scale"],
                               distribution_class=IndependentNormal, return_log_prob=False)
    critic = ValueOperator(Value(), in_keys=["observation"])
    # TorchRL's l2 critic loss is (V - R)^2 times critic_coeff; ours 0.5 * value_coef * (V - R)^2
    loss_fn = ClipPPOLoss(actor, critic, clip_epsilon=0.2, entropy_bonus=True, entropy_coeff=0.01,
                          critic_coeff=0.25, loss_critic_type="l2", normalize_advantage=False,
                          functional=False)
    loss_fn.set_keys(sample_log_prob="sample_log_prob")
    td = TensorDict({"observation": obs, "action": stored[:, 0], "sample_log_prob": behaviour_lp[:, 0],
                     "advantage": adv[0][:, None], "value_target": returns[0][:, None]}, [m])
    out = loss_fn(td)
    # TorchRL keeps its clip bounds log(1 -+ eps) as float32 buffers and its entropy constant is a
    # float32 one: those terms agree to float32 precision (measured 2e-9 and 2e-8 relative), the
    # critic term to float64 round-off
    assert float(parts["policy_loss"][0]) == pytest.approx(float(out["loss_objective"].detach()), rel=1e-6)
    assert 0.5 * float(parts["value_loss"][0]) == pytest.approx(float(out["loss_critic"].detach()), rel=1e-12)
    assert -0.01 * float(parts["entropy"][0]) == pytest.approx(float(out["loss_entropy"].detach()), rel=1e-6)
    assert float(parts["clip_fraction"][0]) == pytest.approx(float(out["clip_fraction"]), abs=1e-12)
    assert 0.0 < float(parts["clip_fraction"][0]) < 1.0  # the clip is exercised on both sides of it
    agent.zero_grad()
    (out["loss_objective"] + out["loss_critic"] + out["loss_entropy"]).backward()
    for name, grad in ours.items():
        torch.testing.assert_close(agent.get_parameter(name).grad, grad, rtol=1e-6, atol=1e-9, msg=name)


# ============================================================================ shared actors, centralised critic
def shared_agents(global_dim=0) -> FleetActorCritic:
    n, k, d = 5, 4, 2
    g = torch.Generator().manual_seed(1)
    static = torch.randn(n, 3, generator=g, dtype=torch.float64)
    agents = FleetActorCritic(n, k, d, [8, 8], [8], "tanh", generator=g, dtype=torch.float64, shared=True,
                              static=static, global_dim=global_dim, actor_out_scale=1.0)
    agents.normaliser.update(torch.randn(32, n, k, generator=g, dtype=torch.float64) * torch.arange(1, n + 1)[:, None])
    return agents


def test_shared_actor_is_decentralised_and_exports_exactly():
    agents = shared_agents()
    assert all(p.shape[0] == 1 for p in agents.actor_parameters())  # one network for the fleet
    obs = torch.randn(3, 5, 4, dtype=torch.float64, requires_grad=True)
    mean = agents.mean(obs)
    for i in range(5):
        (grad,) = torch.autograd.grad(mean[:, i].sum(), obs, retain_graph=True)
        others = [j for j in range(5) if j != i]
        assert torch.all(grad[:, others] == 0) and torch.any(grad[:, i] != 0)
    # same observation, different static features: different outputs (the features are used)
    same = torch.ones(1, 5, 4, dtype=torch.float64) * agents.normaliser.mean[0]
    assert not torch.allclose(agents.mean(same)[0, 0], agents.mean(same)[0, 1])
    exported = agents.export_policy()
    torch.testing.assert_close(exported.logits(obs) + agents.mean_offset, mean, rtol=1e-12, atol=1e-12)


def test_centralised_critic_reads_the_global_state_and_the_actor_does_not():
    agents = shared_agents(global_dim=6)
    obs = torch.randn(5, 10, 4, dtype=torch.float64)
    stored = torch.rand(5, 10, 2, dtype=torch.float64)
    s1, s2 = torch.randn(10, 6, dtype=torch.float64), torch.randn(10, 6, dtype=torch.float64)
    lp1, v1, _ = agents.evaluate(obs, stored, s1)
    lp2, v2, _ = agents.evaluate(obs, stored, s2)
    assert torch.equal(lp1, lp2) and not torch.allclose(v1, v2)
    with pytest.raises(ValueError, match="centralised"):
        agents.value_agent_major(obs)


# ============================================================================ rewards, credit, duals, warm start
SMALL = ["data.n_validation_days=2", "devices[0].count=20", "devices[1].count=10", "devices[2].count=10"]


@pytest.fixture(scope="module")
def world():
    from gridflex.plugins.registry import load_registry
    from gridflex.runs.world import build_world
    from gridflex.scenario import load_scenario

    pm, registry = load_registry()
    loaded = load_scenario("scenarios/ieee13_small.yaml", SMALL, registry)
    return build_world(loaded, registry, pm), registry


def no_control_rollout(world_registry):
    from gridflex.learning.training import validation_days_exogenous

    world, registry = world_registry
    nc = registry.get("learner", "no_control")
    with torch.no_grad():
        return world.env.rollout(validation_days_exogenous(world), nc(nc.Config(), world.env).act)


def test_own_node_reward_with_fixed_prices_is_the_core_shaped_reward(world):
    from gridflex.learning.rewards import RewardWeights, agent_monitor_maps, shaped_rewards
    from gridflex_plugins.learners.ippo.rewards import ppo_rewards

    env = world[0].env
    rollout = no_control_rollout(world)
    assert bool(rollout.flow.converged.all())
    weights, maps = RewardWeights(), agent_monitor_maps(env)
    core = shaped_rewards(env, rollout, maps, weights, (0.955, 1.045), True)
    ours = ppo_rewards(env, rollout, maps, weights, (0.955, 1.045), True)
    for a, b in zip(core.rewards, ours.rewards):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-9)


def test_credit_shares_team_is_exact_difference_close_own_node_small(world):
    from gridflex_plugins.learners.ippo.credit import credit_diagnostic

    env = world[0].env
    result = credit_diagnostic(env, no_control_rollout(world), (0.955, 1.045), True, max_points=3)
    assert len(result["_points"]) == 3  # the no-control days violate the training limits
    assert result["team"]["all"].share == pytest.approx(1.0, abs=1e-12)
    assert 0.8 < result["difference"]["all"].share < 1.25 and result["difference"]["all"].cosine > 0.95
    assert result["own_node"]["all"].share < 0.5 < result["sensitivity"]["all"].share


def test_dual_ascent_uses_the_gradmap_duals_and_rule(world):
    from gridflex.learning.training import Trainer
    from gridflex_plugins.learners.gradmap.lagrangian import Duals, dual_step, lagrangian

    w, registry = world
    cls = registry.get("learner", "ippo")
    learner = cls({"dual_ascent": True, "reward_network": "difference", "days_per_batch": 2, "epochs": 1,
                   "minibatches": 1, "warm_start_epochs": 0, "budget_iterations": 1}, w.env, seed=0)
    assert isinstance(learner.duals, Duals)
    trainer = Trainer(w, progress=False)
    rollout = no_control_rollout(world)
    expected = learner.duals.voltage.clone()
    means = lagrangian(w.env, rollout, learner.duals, trainer.v_limits_train_pu, True, 0.01, 1.0).means
    dual_step(expected, means.voltage_signed, 1000.0, 1e-3, 1e4)
    learner.ascend_duals(trainer, rollout)
    torch.testing.assert_close(learner.duals.voltage, expected)
    assert bool((learner.duals.voltage > 20.0).any()) and bool((learner.duals.voltage < 20.0).any())  # rise and fall


@pytest.mark.parametrize("name, params", [("ippo", {}), ("mappo", {"hidden_sizes": [32, 32]}), ("gradmap", {})])
def test_warm_start_validation_cost_within_0p1_percent_of_no_control(world, name, params):
    from gridflex.learning.training import Trainer

    w, registry = world
    cls = registry.get("learner", name)
    learner = cls({**params, "budget_iterations": 1}, w.env, seed=0)
    trainer = Trainer(w, progress=False)
    learner.setup(trainer)
    nc = registry.get("learner", "no_control")
    cost = trainer.validate(learner)["cost_per_day"]
    reference = trainer.validate(nc(nc.Config(), w.env))["cost_per_day"]
    assert abs(cost - reference) <= 1e-3 * abs(reference), (cost, reference, getattr(learner, "warm_start_rms_u", None))
