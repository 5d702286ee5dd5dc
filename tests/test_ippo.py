"""``ippo``: a toy with a known optimum, decentralisation, and a smoke run through the training loop."""

from __future__ import annotations

import copy
import csv
import json

import numpy as np
import pytest
import torch

from gridflex.plugins.contracts import StepInputs
from gridflex_plugins.devices.battery import Battery
from gridflex_plugins.learners.ippo.agents import FleetActorCritic
from gridflex_plugins.learners.ippo.ppo import PPOSettings, fleet_batch, gae, ppo_update


# ============================================================================ toy: battery arbitrage
PRICES = (0.10, 0.20, 0.50, 0.40)  # EUR/kWh, one price profile every day
T = len(PRICES)
N_TOY = 4
DEGRADATION = 0.01  # EUR/kWh of throughput
ITERATIONS = 120
TERMINAL_EUR_PER_KWH = 1.0  # end-of-day shortfall price (> any price: never worth selling below e_0)


def toy_battery() -> Battery:
    """``N_TOY`` identical lossless 10 kWh / 5 kW batteries starting half full, ``dt = 1 h``."""
    config = {"capacity_kwh": (10.0, 10.0), "p_max_kw": (5.0, 5.0), "eta_charge": (1.0, 1.0),
              "eta_discharge": (1.0, 1.0), "soc_min": (0.0, 0.0), "soc_init": (0.5, 0.5),
              "degradation_eur_per_kwh": (DEGRADATION, DEGRADATION)}
    return Battery(config, N_TOY, torch.Generator().manual_seed(0), dt_h=1.0, dtype=torch.float64)


def toy_optimum() -> float:
    """Optimal day cost of one battery (EUR) by linear programming over charge and discharge.

    Variables ``c_t, d_t in [0, 5]`` kW; energy ``e_t = 5 + sum_{s<=t} (c_s - d_s)`` in ``[0, 10]``;
    ``e_T >= e_0`` (the toy's terminal price exceeds every price, so this is what the optimum of
    the penalised problem satisfies). With these prices: buy 5 kWh at 0.10, sell 5 kWh at 0.50,
    paying 0.01 EUR/kWh of throughput: ``0.5 - 2.5 + 0.1 = -1.9`` EUR.
    """
    from scipy.optimize import linprog

    price = np.array(PRICES)
    cost = np.concatenate([price + DEGRADATION, -price + DEGRADATION])
    lower = np.tril(np.ones((T, T)))
    a_ub = np.block([[lower, -lower], [-lower, lower], [-np.ones((1, T)), np.ones((1, T))]])
    b_ub = np.concatenate([np.full(T, 5.0), np.full(T, 5.0), [0.0]])
    res = linprog(cost, A_ub=a_ub, b_ub=b_ub, bounds=[(0.0, 5.0)] * (2 * T))
    assert res.status == 0
    return float(res.fun)


def toy_rollout(battery: Battery, controller, batch: int):
    """Days of the toy: observations ``[B, T, N, 6]`` (one-hot step, state of charge, start slack),
    controller outputs, rewards ``[B, T, N]`` (minus bill, degradation and, at the last step,
    the end-of-day shortfall)."""
    state = battery.initial_state(batch, torch.zeros(batch, dtype=torch.float64))
    zeros = torch.zeros(batch, N_TOY, dtype=torch.float64)
    observations, outputs, rewards = [], [], []
    for t, price in enumerate(PRICES):
        inputs = StepInputs(t, 1.0, float(t), torch.zeros(batch), torch.full((batch,), price),
                            zeros, zeros, torch.ones_like(zeros))
        onehot = torch.zeros(batch, N_TOY, T, dtype=torch.float64)
        onehot[..., t] = 1.0
        obs = torch.cat([onehot, battery.observation(state, inputs)], -1)
        out = controller(obs)
        u = out[0] if isinstance(out, tuple) else out
        action = battery.action(u, state, inputs)
        cost = price * battery.demand(action, state)[0] + battery.cost(state, action, inputs)
        state = battery.step(state, action, inputs)
        if t == T - 1:
            cost = cost + TERMINAL_EUR_PER_KWH * battery.terminal_residuals(None, state)[..., 0]
        observations.append(obs)
        outputs.append(out)
        rewards.append(-cost)
    return torch.stack(observations, 1), outputs, torch.stack(rewards, 1)


def test_toy_battery_arbitrage_reaches_the_lp_optimum():
    """IPPO's agents, GAE and clipped update (the learner's own code) on 4 independent batteries.

    Optimum: -1.9 EUR/day per battery (:func:`toy_optimum`); an idle battery costs 0 and the
    initial policy (u ~ 0.5 = idle, exploring) about 0. Tolerance: after 120 iterations of 64 days,
    every agent's deterministic policy (the median action) is within 0.1 EUR/day of the optimum,
    i.e. it captures >= 95 % of the achievable arbitrage profit.
    """
    torch.manual_seed(0)
    optimum = toy_optimum()
    assert optimum == pytest.approx(-1.9, abs=1e-9)
    battery = toy_battery()
    agent = FleetActorCritic(N_TOY, T + 2, 1, [16], [16], "tanh", squash="clip", log_std_init=-1.0,
                             generator=torch.Generator().manual_seed(1))
    agent.normaliser.update(toy_rollout(battery, lambda o: torch.full((*o.shape[:-1], 1), 0.5, dtype=o.dtype), 8)[0])
    agent.return_scale.fill_(1.0)
    optimizer = torch.optim.Adam([*agent.actor_parameters(), *agent.critic_parameters()], lr=1e-2)
    settings = PPOSettings(clip=0.2, epochs=4, minibatches=1, max_grad_norm=1.0)
    sampler, shuffler = torch.Generator().manual_seed(2), torch.Generator().manual_seed(3)
    for _ in range(ITERATIONS):
        obs, outputs, rewards = toy_rollout(battery, lambda o: agent.sample(o, sampler), 64)
        z = torch.stack([out[1] for out in outputs], 1)
        log_prob = torch.stack([out[2] for out in outputs], 1)
        batch = fleet_batch(agent, obs, z, log_prob, rewards, gamma=1.0, lam=0.95)
        ppo_update([agent], [batch], optimizer, settings, shuffler)
    with torch.no_grad():
        _, _, rewards = toy_rollout(battery, agent.deterministic, 1)
    day_cost = -rewards.sum(1)[0]  # [N]
    assert torch.all(day_cost <= optimum + 0.1), day_cost
    assert torch.all(day_cost >= optimum - 1e-9), day_cost  # nothing beats the LP


def test_gae_matches_its_definition():
    gen = torch.Generator().manual_seed(0)
    r, v = torch.randn(2, 5, 3, generator=gen), torch.randn(2, 5, 3, generator=gen)
    gamma, lam = 0.9, 0.8
    adv, ret = gae(r, v, gamma, lam)
    for t in range(5):  # A_t = sum_k (gamma lam)^k delta_{t+k}
        deltas = [r[:, s] + (gamma * v[:, s + 1] if s + 1 < 5 else 0) - v[:, s] for s in range(t, 5)]
        expected = sum((gamma * lam) ** k * d for k, d in enumerate(deltas))
        assert torch.allclose(adv[:, t], expected, atol=1e-6)
    # lambda = 1, V = 0: plain discounted returns-to-go
    ret1, _ = gae(r, torch.zeros_like(r), gamma, 1.0)
    assert torch.allclose(ret1[:, 0], sum(gamma ** k * r[:, k] for k in range(5)), atol=1e-6)
    assert torch.allclose(ret, adv + v)


# ============================================================================ decentralisation
N, K, D = 5, 4, 2


def make_agents(seed=0) -> FleetActorCritic:
    agents = FleetActorCritic(N, K, D, [8, 8], [8], "tanh", generator=torch.Generator().manual_seed(seed),
                              dtype=torch.float64)
    agents.normaliser.update(torch.randn(16, N, K, dtype=torch.float64) * torch.arange(1, N + 1)[:, None])
    with torch.no_grad():  # non-trivial outputs and per-agent log-stds
        for w in agents.policy.mlp.weights:
            w.mul_(50.0)
        agents.log_std.copy_(torch.linspace(-1, 0, N * D, dtype=torch.float64).reshape(N, D))
    return agents


def test_no_shared_parameters_and_per_agent_statistics():
    agents = make_agents()
    for name, p in agents.named_parameters():
        assert p.shape[0] == N, name  # every parameter tensor is indexed by agent first
    for name, buf in agents.named_buffers():
        if buf.dim():
            assert buf.shape[0] == N, name


def test_action_distribution_of_agent_i_ignores_agent_j():
    agents = make_agents()
    obs = torch.randn(3, N, K, dtype=torch.float64)
    mean = lambda o: agents.policy.logits(o)  # noqa: E731
    jac = torch.autograd.functional.jacobian(mean, obs[0])  # [N, D, N, K]
    for i in range(N):
        for j in range(N):
            assert (jac[i, :, j].abs().sum() > 0) if i == j else torch.all(jac[i, :, j] == 0), (i, j)
    # sampled actions and log-probs: agent i's are unchanged when agent j's observation changes
    other = obs.clone()
    other[:, 2] += 10.0
    u1, z1, lp1 = agents.sample(obs, torch.Generator().manual_seed(5))
    u2, z2, lp2 = agents.sample(other, torch.Generator().manual_seed(5))
    keep = [i for i in range(N) if i != 2]
    assert torch.equal(u1[:, keep], u2[:, keep]) and torch.equal(lp1[:, keep], lp2[:, keep])
    assert not torch.equal(u1[:, 2], u2[:, 2])
    # the value of agent i ignores agent j too
    v = lambda o: agents.value_agent_major(o.transpose(0, 1))  # noqa: E731
    jv = torch.autograd.functional.jacobian(v, obs[:1])  # [N, 1, 1, N, K]
    for i in range(N):
        for j in range(N):
            if i != j:
                assert torch.all(jv[i, :, :, j] == 0)


def test_update_does_not_couple_agents():
    """A PPO step whose advantages and returns are nonzero only for agent 0 leaves every other
    agent's parameters untouched (sum of per-agent losses, per-agent clipping, Adam per element)."""
    agents = make_agents()
    before = copy.deepcopy(agents.state_dict())
    gen = torch.Generator().manual_seed(0)
    obs = torch.randn(4, 3, N, K, dtype=torch.float64, generator=gen)
    with torch.no_grad():
        _, z, log_prob = agents.sample(obs, gen)
    rewards = torch.zeros(4, 3, N, dtype=torch.float64)
    rewards[..., 0] = torch.randn(4, 3, dtype=torch.float64, generator=gen)
    batch = fleet_batch(agents, obs, z, log_prob, rewards, 1.0, 0.95)
    # zero critic error for agents != 0: returns = values, so their value loss has zero gradient
    batch.returns[1:] = batch.values[1:]
    batch.advantages[1:] = 0.0
    optimizer = torch.optim.Adam([*agents.actor_parameters(), *agents.critic_parameters()], lr=1e-2)
    ppo_update([agents], [batch], optimizer,
               PPOSettings(epochs=2, minibatches=2, normalise_advantages=False), gen)
    after = agents.state_dict()
    changed_0 = False
    for key, value in after.items():
        if key.startswith("policy.normaliser") or key == "return_scale":
            continue
        assert torch.equal(value[1:], before[key][1:]), key
        changed_0 |= not torch.equal(value[0], before[key][0])
    assert changed_0


# ============================================================================ training loop smoke
TINY = """
name: tiny13_ippo
feeder: {file: ieee13, taps: file}
solver: {type: ac3ph}
population: {households_per_kw: 0.05, pv_share: 0.4}
devices:
  - {type: battery, count: 8, params: {reactive_power: true}}
  - {type: heat_pump, count: 4}
  - {type: generator, count: 4}
learner: {type: ippo, params: {days_per_batch: 2, hidden_sizes: [8], critic_hidden_sizes: [8],
          epochs: 2, minibatches: 2, warm_start_epochs: 2, budget_iterations: 2,
          validation_interval_iterations: 1, budget_seconds: null}}
data: {n_validation_days: 2, n_test_days: 1}
environment: {regulated_evaluation: false}
target: {max_violation_rate: 0.5}
"""


def test_training_loop_smoke_history_and_checkpoint(tmp_path):
    from gridflex.plugins.registry import load_registry
    from gridflex.runs.run import execute_run
    from gridflex.scenario import load_scenario
    from gridflex.learning.training import BASE_COLUMNS

    path = tmp_path / "tiny13_ippo.yaml"
    path.write_text(TINY)
    pm, registry = load_registry()
    loaded = load_scenario(path, [], registry)
    cls = registry.get("learner", "ippo")
    run_dir = tmp_path / "run"
    docs = execute_run(loaded, registry, pm, run_dir, references=False, progress=False).documents
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics == json.loads(json.dumps(docs["ippo"]))
    rows = list(csv.DictReader((run_dir / "history.csv").open()))
    assert [int(r["iteration"]) for r in rows] == [0, 1, 2]
    assert list(rows[0]) == [*BASE_COLUMNS, *cls.dual_columns, *cls.history_extras, "meets_target"]
    # every training day-step is one counted AC solve: warm-up + 2 iterations x 2 days x 24 steps
    assert int(rows[-1]["power_flow_solves"]) == 3 * 2 * 24 == metrics["power_flow_solves"]
    assert int(rows[-1]["env_gradient_evaluations"]) == 0 == metrics["env_gradient_evaluations"]
    assert rows[0]["policy_loss"] == "" and rows[-1]["policy_loss"] != ""
    warm_steps = metrics["policy_updates"] - 2 * 2 * 2  # 2 iterations x epochs x minibatches
    assert 2 <= warm_steps <= 2000  # the warm start's full-batch steps: >= warm_start_epochs, capped
    assert metrics["train_seconds"] == pytest.approx(float(rows[-1]["wall_s"]), rel=1e-5)
    for name in ("checkpoint.pt", "policy.pt"):
        state = torch.load(run_dir / name, weights_only=True)
        from gridflex.runs.world import build_world

        fresh = cls(loaded.component_config("learner"), build_world(loaded, registry, pm).env, seed=1)
        fresh.load_state_dict(state["learner"])
        for key, value in fresh.agents.state_dict().items():
            assert torch.equal(value, state["learner"]["agents"][key])
    checkpoint = torch.load(run_dir / "checkpoint.pt", weights_only=True)
    assert checkpoint["policy_updates"] == metrics["policy_updates"]  # counters live in the checkpoint
