"""Decentralisation of the stacked per-agent policies (docs/design.md §3): no coupling in outputs,
parameters, normalisation statistics or the optimiser update."""

from __future__ import annotations

import copy

import torch

from gridflex.learning.policies import FleetPolicy, clip_grad_norm_per_agent_

N, K, D = 4, 5, 2


def make_policy(seed: int = 0) -> FleetPolicy:
    policy = FleetPolicy(N, K, D, [8, 8], activation="tanh", out_scale=1.0,
                         generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    policy.normaliser.update(torch.randn(16, N, K, dtype=torch.float64) * torch.arange(1, N + 1)[:, None])
    return policy


def assert_block_diagonal(policy: FleetPolicy) -> None:
    obs = torch.randn(N, K, dtype=torch.float64)
    jac = torch.autograd.functional.jacobian(policy, obs)  # [N, D, N, K]
    for i in range(N):
        for j in range(N):
            block = jac[i, :, j, :]
            if i == j:
                assert block.abs().sum() > 0
            else:
                assert torch.all(block == 0), (i, j)
    for i in range(N):  # du_i/dtheta_j = 0 for j != i
        policy.zero_grad()
        policy(obs)[i].sum().backward()
        for p in policy.mlp.parameters():
            others = torch.cat([p.grad[:i], p.grad[i + 1:]])
            assert torch.all(others == 0)
            assert p.grad[i].abs().sum() > 0 or p.dim() == 2  # a bias may be the only path


def test_outputs_depend_on_own_observation_and_parameters_only():
    policy = make_policy()
    assert_block_diagonal(policy)
    u = policy(torch.randn(3, 7, N, K, dtype=torch.float64))
    assert u.shape == (3, 7, N, D) and (u > 0).all() and (u < 1).all()


def test_normaliser_statistics_are_per_agent():
    policy = make_policy()
    obs = torch.randn(10, N, K, dtype=torch.float64)
    other = obs.clone()
    other[:, 1] += 100.0  # change agent 1's observations only
    a, b = copy.deepcopy(policy), copy.deepcopy(policy)
    a.normaliser.update(obs)
    b.normaliser.update(other)
    keep = [0, 2, 3]
    assert torch.equal(a.normaliser.mean[keep], b.normaliser.mean[keep])
    assert torch.equal(a.normaliser.var[keep], b.normaliser.var[keep])
    assert not torch.equal(a.normaliser.mean[1], b.normaliser.mean[1])


def _step(policy: FleetPolicy, loss_fn, max_norm: float) -> None:
    opt = torch.optim.Adam(policy.parameters(), lr=0.1)
    opt.zero_grad()
    loss_fn(policy).backward()
    clip_grad_norm_per_agent_(policy.mlp.parameters(), max_norm)
    opt.step()


def test_optimiser_step_does_not_couple_agents():
    """Agent 0's update is the same whether or not the other agents have (large) losses:
    per-agent clipping and Adam (per-parameter-element) do not mix agents."""
    obs = torch.randn(6, N, K, dtype=torch.float64)
    base = make_policy()
    alone = copy.deepcopy(base)
    together = copy.deepcopy(base)
    _step(alone, lambda p: p(obs)[:, 0].square().sum(), max_norm=0.05)
    _step(together, lambda p: p(obs)[:, 0].square().sum() + 1e3 * p(obs)[:, 1:].sum(), max_norm=0.05)
    for p_a, p_t, p_0 in zip(alone.mlp.parameters(), together.mlp.parameters(), base.mlp.parameters()):
        assert torch.allclose(p_a[0], p_t[0], rtol=0, atol=1e-12)  # agent 0 identical
        assert torch.equal(p_a[1:], p_0[1:])  # without a loss, others do not move
        assert not torch.equal(p_t[1:], p_0[1:])
    assert_block_diagonal(together)  # still decentralised after the step


def test_global_clipping_would_couple_agents():
    """The control experiment: torch's global-norm clipping mixes agents (why we clip per agent)."""
    obs = torch.randn(6, N, K, dtype=torch.float64)
    base = make_policy()
    grads = []
    for scale in (0.0, 1e3):
        p = copy.deepcopy(base)
        (p(obs)[:, 0].square().sum() + scale * p(obs)[:, 1:].sum()).backward()
        torch.nn.utils.clip_grad_norm_(p.mlp.parameters(), 0.05)
        grads.append(next(iter(p.mlp.parameters())).grad[0].clone())
    assert not torch.allclose(grads[0], grads[1])


def test_per_agent_clip_bounds_each_agent_norm():
    policy = make_policy()
    obs = torch.randn(6, N, K, dtype=torch.float64)
    (policy(obs) * torch.tensor([1.0, 10.0, 100.0, 1e-6])[:, None]).sum().backward()
    before = clip_grad_norm_per_agent_(policy.mlp.parameters(), 0.5)
    from gridflex.learning.policies import per_agent_grad_norm

    after = per_agent_grad_norm(policy.mlp.parameters())
    expected = torch.minimum(before, torch.full_like(before, 0.5))
    assert torch.allclose(after, expected, rtol=1e-9)
