"""The device contract suite: :class:`DeviceContract`.

Subclass it in a test module (the class name must start with ``Test`` for pytest to collect it),
name the device class and its scenario ``params``, and declare the sign of its demand::

    from gridflex.testing import DeviceContract
    from my_package.water_heater import WaterHeater

    class TestWaterHeater(DeviceContract):
        device_class = WaterHeater
        config = {"p_max_kw": [2.0, 3.0]}
        demand_sign = "load"

Every check runs on a fleet of ``n_agents`` agents built as gridflex builds it
(``cls(Config, n_agents, generator, dt_h=..., device=..., dtype=...)``) over ``batch`` made-up
days (:func:`gridflex.testing.synthetic_day`) stepped with policy outputs ``u`` at the corners
(all 0, all 1) and at random, so empty and full stores and cold and hot houses are visited. What
each test checks is in its docstring; docs/plugins.md lists them.

Size: one suite, one requirement of the device contract per test, so that a device author reads
what gridflex relies on in one place.
"""

from __future__ import annotations

import itertools
from dataclasses import replace
from typing import Any, ClassVar

import pytest
import torch
from pydantic import ValidationError

from gridflex.plugins.contracts import ConvexFleet, DeviceModel, StepInputs
from gridflex.testing._common import (clone_inputs, differing_fields, per_agent_fields, per_day_fields,
                                      synthetic_day)

#: the non-learning controllers every device serves through ``baseline_u``
CONTROLLERS = ("no_control", "rule_based", "droop")
#: allowed values of :attr:`DeviceContract.demand_sign`
DEMAND_SIGNS = ("load", "generation", "bidirectional")


def device_outputs(fleet: DeviceModel, state: torch.Tensor, u: torch.Tensor, inputs: StepInputs,
                   first_state: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """Every method of ``fleet`` at one step, by name; each value has leading dims ``[B, N]``.

    ``state [B, N, S]``, ``u [B, N, d]`` in ``[0, 1]``; ``first_state`` (default ``state``) is the
    day's first state for :meth:`~DeviceModel.terminal_residuals`, evaluated at the next state.
    """
    first = state if first_state is None else first_state
    lo, hi = fleet.action_bounds(state, inputs)
    action = fleet.action(u, state, inputs)
    nxt = fleet.step(state, action, inputs)
    p_kw, q_kvar = fleet.demand(action, state)
    out = {
        "observation": fleet.observation(state, inputs),
        "lo": lo, "hi": hi, "action": action, "next_state": nxt,
        "cost": fleet.cost(state, action, inputs),
        "residuals": fleet.residuals(state, action, nxt, inputs),
        "terminal_residuals": fleet.terminal_residuals(first, nxt),
        "p_kw": p_kw, "q_kvar": q_kvar,
    }
    for controller in CONTROLLERS:
        out[f"baseline_u[{controller}]"] = fleet.baseline_u(controller, state, inputs)
    with torch.no_grad():
        for direction in (1, -1):
            p_auth, q_auth = fleet.authority_demand(state, inputs, direction)
            out[f"authority_p_kw[{direction:+d}]"] = p_auth
            out[f"authority_q_kvar[{direction:+d}]"] = q_auth
    return out


def expected_shapes(fleet: DeviceModel, batch: int) -> dict[str, tuple[int, ...]]:
    """The shape every entry of :func:`device_outputs` must have (docs of :class:`DeviceModel`)."""
    b, n = batch, fleet.n_agents
    s, d = int(fleet.state_dim), int(fleet.action_dim)
    shapes = {
        "observation": (b, n, int(fleet.obs_dim)), "lo": (b, n, d), "hi": (b, n, d),
        "action": (b, n, d), "next_state": (b, n, s), "cost": (b, n),
        "residuals": (b, n, len(fleet.residual_names)),
        "terminal_residuals": (b, n, len(fleet.terminal_residual_names)),
        "p_kw": (b, n), "q_kvar": (b, n),
    }
    shapes.update({f"baseline_u[{c}]": (b, n, d) for c in CONTROLLERS})
    shapes.update({f"authority_{x}[{k:+d}]": (b, n) for x in ("p_kw", "q_kvar") for k in (1, -1)})
    return shapes


class DeviceContract:
    """Contract tests for a :class:`~gridflex.plugins.contracts.DeviceModel` subclass.

    Set in a subclass: :attr:`device_class`, :attr:`config` (the scenario ``params``, validated by
    ``device_class.Config``) and :attr:`demand_sign`; optionally the sizes below and
    :attr:`gradcheck`. Helper methods (:meth:`make_fleet`, :meth:`make_day`,
    :meth:`trajectory`) are public so a subclass can add its own device-specific tests.
    """

    #: the device class under test
    device_class: ClassVar[type[DeviceModel]]
    #: its scenario ``params`` (parameter ranges), validated by ``device_class.Config``
    config: ClassVar[dict[str, Any]] = {}
    #: the sign of ``demand()``'s ``p_kw`` (positive = drawn from the grid, docs/devices.md):
    #: ``"load"`` (always >= 0, e.g. a heater), ``"generation"`` (always <= 0) or
    #: ``"bidirectional"`` (both occur, e.g. a battery)
    demand_sign: ClassVar[str | None] = None
    n_agents: ClassVar[int] = 5
    batch: ClassVar[int] = 3  # days; at least 3 (all-0, all-1 and random policy outputs)
    steps: ClassVar[int] = 24
    dt_h: ClassVar[float] = 1.0
    seed: ClassVar[int] = 0
    #: run ``torch.autograd.gradcheck`` (float64) on every method w.r.t. ``u`` and the state;
    #: set False only for a device whose maps are not smooth at interior points
    gradcheck: ClassVar[bool] = True
    #: observations must be "roughly unit-scaled": ``|obs| <= obs_bound`` on visited states
    obs_bound: ClassVar[float] = 10.0

    # ------------------------------------------------------------------ helpers
    def make_fleet(self, *, n_agents: int | None = None, seed: int | None = None,
                   dtype: torch.dtype = torch.float64, device: str | torch.device = "cpu") -> DeviceModel:
        """A fleet built the way gridflex builds it, from :attr:`config` and a seeded generator."""
        config = self.device_class.Config.model_validate(dict(self.config))
        generator = torch.Generator().manual_seed(self.seed if seed is None else seed)
        return self.device_class(config, self.n_agents if n_agents is None else n_agents, generator,
                                 dt_h=self.dt_h, device=device, dtype=dtype)

    def make_day(self, fleet: DeviceModel, batch: int | None = None, seed: int = 1) -> list[StepInputs]:
        """:func:`~gridflex.testing.synthetic_day` for ``fleet`` (its dtype and device)."""
        return synthetic_day(batch or self.batch, fleet.n_agents, steps=self.steps, dt_h=self.dt_h,
                             dtype=fleet.dtype, device=fleet.device,
                             generator=torch.Generator().manual_seed(seed))

    def policy_outputs(self, fleet: DeviceModel, batch: int, generator: torch.Generator) -> torch.Tensor:
        """``u [B, N, d]``: day 0 all zeros, day 1 all ones, the other days uniform at random."""
        d = int(fleet.action_dim)
        u = torch.rand(batch, fleet.n_agents, d, generator=generator, dtype=torch.float64)
        u[0], u[1] = 0.0, 1.0
        return u.to(dtype=fleet.dtype, device=fleet.device)

    def trajectory(self, fleet: DeviceModel, day: list[StepInputs], seed: int = 2
                   ) -> list[tuple[torch.Tensor, torch.Tensor, StepInputs]]:
        """``(state, u, inputs)`` of every step of ``day`` under :meth:`policy_outputs` (no grad)."""
        gen = torch.Generator().manual_seed(seed)
        batch = day[0].temp_out_c.shape[0]
        with torch.no_grad():
            state = fleet.initial_state(batch, day[0].temp_out_c)
            visited = []
            for inputs in day:
                u = self.policy_outputs(fleet, batch, gen)
                # copies: a method that writes into its inputs must not hide it from the checks
                visited.append((state.clone(), u.clone(), clone_inputs(inputs)))
                state = fleet.step(state, fleet.action(u, state, inputs), inputs)
        return visited

    @pytest.fixture
    def fleet(self) -> DeviceModel:
        return self.make_fleet()

    @pytest.fixture
    def visited(self, fleet) -> list[tuple[torch.Tensor, torch.Tensor, StepInputs]]:
        assert self.batch >= 3, "DeviceContract.batch must be >= 3 (all-0, all-1 and random days)"
        return self.trajectory(fleet, self.make_day(fleet))

    # ------------------------------------------------------------------ class and config
    def test_class_declarations(self, fleet):
        """``name``, ``kind``, dims, residual names and ``Config`` are well formed."""
        cls = self.device_class
        assert issubclass(cls, DeviceModel), f"{cls.__name__} must subclass gridflex.plugins.contracts.DeviceModel"
        assert isinstance(cls.name, str) and cls.name, "`name` must be a non-empty string"
        assert cls.kind == "device"
        for attr in ("state_dim", "action_dim", "obs_dim"):
            value = getattr(fleet, attr)
            assert isinstance(value, int) and value >= (1 if attr == "action_dim" else 0), \
                f"{attr} must be an int (>= 1 for action_dim), got {value!r}"
        for attr in ("residual_names", "terminal_residual_names"):
            names = getattr(fleet, attr)
            assert isinstance(names, tuple) and all(isinstance(x, str) and x for x in names), \
                f"{attr} must be a tuple of non-empty strings, got {names!r}"
            assert len(set(names)) == len(names), f"{attr} has duplicates: {names!r}"
        assert fleet.n_agents == self.n_agents and fleet.dt_h == self.dt_h
        assert isinstance(fleet.three_phase, bool)
        with pytest.raises(ValidationError, match="unknown_key_for_the_contract_test"):
            cls.Config.model_validate({**self.config, "unknown_key_for_the_contract_test": 1})

    # ------------------------------------------------------------------ shapes and dtypes
    @pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["float64", "float32"])
    def test_shapes_dtypes_and_finite_values(self, dtype):
        """Every method returns the documented ``[B, N, ...]`` shape, in the fleet's dtype and
        device, with finite values, on every visited state (both float64 and float32)."""
        fleet = self.make_fleet(dtype=dtype)
        visited = self.trajectory(fleet, self.make_day(fleet))
        first = visited[0][0]
        shapes = expected_shapes(fleet, self.batch)
        assert tuple(first.shape) == (self.batch, self.n_agents, int(fleet.state_dim)), \
            f"initial_state: shape {tuple(first.shape)}, expected [B, N, S]"
        for state, u, inputs in visited:
            out = device_outputs(fleet, state, u, inputs, first)
            for key, value in out.items():
                where = f"{key} at step {inputs.t}"
                assert isinstance(value, torch.Tensor), f"{where}: not a tensor but {type(value).__name__}"
                assert tuple(value.shape) == shapes[key], f"{where}: shape {tuple(value.shape)}, expected {shapes[key]}"
                assert value.dtype == dtype, f"{where}: dtype {value.dtype}, expected the fleet's {dtype}"
                assert value.device == fleet.device, f"{where}: on {value.device}, expected {fleet.device}"
                assert torch.isfinite(value).all(), f"{where}: non-finite values"
            assert out["observation"].abs().max() <= self.obs_bound, \
                f"observation at step {inputs.t} reaches {float(out['observation'].abs().max()):.3g}; " \
                f"features should be roughly unit-scaled (|x| <= {self.obs_bound})"

    # ------------------------------------------------------------------ feasibility
    def test_bounds_ordered_and_actions_inside(self, fleet, visited):
        """``lo <= hi`` and ``action(u)`` lies in ``[lo, hi]`` for ``u`` at the corners of
        ``[0, 1]^d``, at 0.5 and at random, on every visited state."""
        gen = torch.Generator().manual_seed(3)
        d = int(fleet.action_dim)
        for state, _, inputs in visited:
            lo, hi = fleet.action_bounds(state, inputs)
            scale = 1e-9 * (1.0 + torch.maximum(lo.abs(), hi.abs()))
            assert (lo <= hi + scale).all(), f"step {inputs.t}: action_bounds gives lo > hi"
            candidates = [torch.tensor(c, dtype=fleet.dtype).expand(*state.shape[:-1], d)
                          for c in itertools.product((0.0, 1.0), repeat=d)]
            candidates.append(torch.full((*state.shape[:-1], d), 0.5, dtype=fleet.dtype))
            candidates.append(torch.rand(*state.shape[:-1], d, generator=gen, dtype=fleet.dtype))
            for u in candidates:
                a = fleet.action(u, state, inputs)
                assert ((a >= lo - scale) & (a <= hi + scale)).all(), \
                    f"step {inputs.t}: action(u) leaves [lo, hi] (worst excess " \
                    f"{float(torch.maximum(lo - a, a - hi).max()):.3g})"

    def test_demand_sign_convention(self, fleet, visited):
        """``demand()`` returns power *drawn* (positive = load, docs/devices.md); the declared
        :attr:`demand_sign` holds on every visited state and ``u`` corner."""
        assert self.demand_sign in DEMAND_SIGNS, (
            f"declare demand_sign = one of {DEMAND_SIGNS} in {type(self).__name__}: the sign of "
            "demand()'s p_kw, positive = power drawn from the grid (a generator's output is "
            "negative demand)")
        d = int(fleet.action_dim)
        seen_pos = seen_neg = False
        for state, _, inputs in visited:
            for corner in itertools.product((0.0, 1.0), repeat=d):
                u = torch.tensor(corner, dtype=fleet.dtype).expand(*state.shape[:-1], d)
                p_kw, _ = fleet.demand(fleet.action(u, state, inputs), state)
                seen_pos |= bool((p_kw > 1e-9).any())
                seen_neg |= bool((p_kw < -1e-9).any())
                if self.demand_sign == "load":
                    assert (p_kw >= -1e-9).all(), f"step {inputs.t}: a 'load' device returns negative demand"
                if self.demand_sign == "generation":
                    assert (p_kw <= 1e-9).all(), f"step {inputs.t}: a 'generation' device returns positive demand"
        if self.demand_sign == "load":
            assert seen_pos, "a 'load' device never draws power at u = 1"
        elif self.demand_sign == "generation":
            assert seen_neg, "a 'generation' device never injects (negative demand) at any u corner"
        else:
            assert seen_pos and seen_neg, "a 'bidirectional' device must both draw and inject"

    def test_baseline_u_in_unit_box(self, fleet, visited):
        """``baseline_u`` of every controller is ``[B, N, d]`` in ``[0, 1]``, on every visited
        state and at voltages from 0.9 to 1.1 pu."""
        for state, _, inputs in visited:
            for controller in CONTROLLERS:
                u = fleet.baseline_u(controller, state, inputs)
                assert tuple(u.shape) == (*state.shape[:-1], int(fleet.action_dim))
                assert torch.isfinite(u).all() and (u >= 0).all() and (u <= 1).all(), \
                    f"baseline_u({controller!r}) leaves [0, 1] at step {inputs.t}"

    def test_residuals_nonnegative(self, fleet, visited):
        """Step and end-of-day residuals are ``>= 0`` (0 when fine) on every visited state; the
        residuals of a day's last state are those of :meth:`terminal_residuals`."""
        first = visited[0][0]
        for state, u, inputs in visited:
            out = device_outputs(fleet, state, u, inputs, first)
            assert (out["residuals"] >= 0).all(), f"residuals < 0 at step {inputs.t}"
            assert (out["terminal_residuals"] >= 0).all(), f"terminal_residuals < 0 at step {inputs.t}"

    def test_authority_extremes_ordered(self, fleet, visited):
        """``authority_demand(+1)`` draws at least as much active power as ``authority_demand(-1)``
        (the extreme that lowers the voltage against the one that raises it)."""
        for state, _, inputs in visited:
            with torch.no_grad():
                p_up, _ = fleet.authority_demand(state, inputs, 1)
                p_down, _ = fleet.authority_demand(state, inputs, -1)
            assert (p_up >= p_down - 1e-9).all(), f"authority_demand(+1) < authority_demand(-1) at step {inputs.t}"

    # ------------------------------------------------------------------ purity
    def test_deterministic_given_the_generator(self):
        """Two fleets from equally seeded generators behave identically on identical inputs;
        building and stepping a fleet never draws from torch's global generator."""
        global_before = torch.random.get_rng_state()
        first, second = self.make_fleet(), self.make_fleet()
        a = self.trajectory(first, self.make_day(first))
        b = self.trajectory(second, self.make_day(second))
        for (sa, ua, ia), (sb, ub, ib) in zip(a, b):
            out_a = device_outputs(first, sa, ua, ia, a[0][0])
            out_b = device_outputs(second, sb, ub, ib, b[0][0])
            for key in out_a:
                assert torch.equal(out_a[key], out_b[key]), f"{key} differs between equally seeded fleets"
        assert torch.equal(torch.random.get_rng_state(), global_before), \
            "the device drew from torch's global random generator: draw from the generator it is given"

    def test_no_in_place_mutation_of_inputs(self, fleet, visited):
        """No method changes its input tensors (state, u, action, StepInputs)."""
        first = visited[0][0].clone()
        for state, u, inputs in visited:
            state_copy, u_copy, inputs_copy = state.clone(), u.clone(), clone_inputs(inputs)
            action = fleet.action(u, state, inputs)
            action_copy = action.clone()
            nxt = fleet.step(state, action, inputs)
            nxt_copy = nxt.clone()
            fleet.cost(state, action, inputs)
            fleet.residuals(state, action, nxt, inputs)
            fleet.demand(action, state)
            fleet.terminal_residuals(first, nxt)
            device_outputs(fleet, state, u, inputs, first)
            assert torch.equal(state, state_copy), f"a method changed `state` in place (step {inputs.t})"
            assert torch.equal(u, u_copy), f"action() changed `u` in place (step {inputs.t})"
            assert torch.equal(action, action_copy), f"a method changed `action` in place (step {inputs.t})"
            assert torch.equal(nxt, nxt_copy), "residuals/terminal_residuals changed next_state in place"
            changed = differing_fields(inputs, inputs_copy)
            assert not changed, f"a method changed StepInputs.{changed} in place (step {inputs.t})"
        assert torch.equal(first, visited[0][0]), "terminal_residuals changed first_state in place"

    def test_agents_and_days_are_independent(self, fleet, visited):
        """Agent ``j``'s state, ``u`` and own inputs change no other agent's outputs; day ``b``'s
        inputs change no other day's outputs (no coupling across ``N`` or ``B``)."""
        state, u, inputs = visited[len(visited) // 2]
        other_state, other_u, other_inputs = visited[len(visited) // 2 + 1]
        base = device_outputs(fleet, state, u, inputs)
        n, b = fleet.n_agents, state.shape[0]
        for j in (0, n - 1):
            s2, u2, i2 = state.clone(), u.clone(), clone_inputs(inputs)
            s2[:, j] = other_state[:, j] if not torch.equal(other_state[:, j], state[:, j]) else state[:, j] * 0.9
            u2[:, j] = 1.0 - u[:, j] * 0.5
            for name in per_agent_fields():
                getattr(i2, name)[:, j] = getattr(other_inputs, name)[:, j] + 0.05
            out = device_outputs(fleet, s2, u2, i2)
            keep = torch.arange(n) != j
            for key, value in out.items():
                assert torch.allclose(value[:, keep], base[key][:, keep], rtol=1e-12, atol=1e-12), \
                    f"{key} of other agents changed when only agent {j}'s inputs changed"
        for day in (0, b - 1):
            s2, u2, i2 = state.clone(), u.clone(), clone_inputs(inputs)
            s2[day] = other_state[day]
            u2[day] = 1.0 - u[day] * 0.5
            for name in per_agent_fields() + per_day_fields():
                getattr(i2, name)[day] = getattr(other_inputs, name)[day] + 0.05
            out = device_outputs(fleet, s2, u2, i2)
            keep = torch.arange(b) != day
            for key, value in out.items():
                assert torch.allclose(value[keep], base[key][keep], rtol=1e-12, atol=1e-12), \
                    f"{key} of other days changed when only day {day}'s inputs changed"

    def test_select_agents_matches_the_full_fleet(self, fleet, visited):
        """A contiguous block of the fleet (:meth:`~DeviceModel.select_agents`: what one process
        of a sharded run steps, docs/distributed.md) gives its agents the full fleet's outputs."""
        n = fleet.n_agents
        a, b = (1, n - 1) if n > 2 else (0, 1)
        part = fleet.select_agents(a, b)
        assert type(part) is type(fleet) and part.n_agents == b - a, \
            f"select_agents({a}, {b}) must return a {type(fleet).__name__} of {b - a} agents"
        temp = visited[0][2].temp_out_c
        assert torch.allclose(part.initial_state(temp.shape[0], temp), fleet.initial_state(temp.shape[0], temp)[:, a:b],
                              rtol=1e-12, atol=1e-12), "initial_state of the selected agents differs"
        for state, u, inputs in visited[:: max(1, len(visited) // 4)]:
            own = replace(inputs, **{name: getattr(inputs, name)[:, a:b] for name in per_agent_fields()})
            block = device_outputs(part, state[:, a:b], u[:, a:b], own)
            for key, value in device_outputs(fleet, state, u, inputs).items():
                assert torch.allclose(block[key], value[:, a:b], rtol=1e-12, atol=1e-12), \
                    f"{key} of agents {a}..{b - 1} differs between select_agents({a}, {b}) and the full fleet"

    # ------------------------------------------------------------------ gradients
    def test_gradient_reaches_u(self, fleet, visited):
        """Demand and cost are differentiable in ``u``: finite gradients everywhere, and every
        agent with a non-empty action range moves its demand (``d(p, q)/du != 0``)."""
        for state, u_seen, inputs in visited[:: max(1, len(visited) // 6)]:
            u = u_seen.clamp(0.05, 0.95).clone().requires_grad_(True)
            action = fleet.action(u, state, inputs)
            p_kw, q_kvar = fleet.demand(action, state)
            cost = fleet.cost(state, action, inputs)
            assert p_kw.requires_grad or q_kvar.requires_grad, \
                f"step {inputs.t}: demand() is cut off from u (detached or rebuilt from numbers)"
            (g_demand,) = torch.autograd.grad(p_kw.sum() + 0.5 * q_kvar.sum(), u, retain_graph=True)
            g_cost = (torch.autograd.grad(cost.sum(), u, allow_unused=True)[0]
                      if cost.requires_grad else None)  # a cost independent of u is fine
            assert torch.isfinite(g_demand).all(), f"non-finite d demand / du at step {inputs.t}"
            assert g_cost is None or torch.isfinite(g_cost).all(), f"non-finite d cost / du at step {inputs.t}"
            lo, hi = fleet.action_bounds(state, inputs)
            movable = ((hi - lo) > 1e-6).any(-1)
            moved = (g_demand.abs() > 0).any(-1)
            stuck = torch.nonzero(movable & ~moved)[:, 1].tolist()
            assert not stuck, f"step {inputs.t}: demand does not depend on u for agents {stuck}"

    def test_gradcheck_float64(self):
        """``torch.autograd.gradcheck`` (float64, 2 agents x 2 days) of every method w.r.t. ``u``
        (in ``[0.1, 0.9]``) and the state, at the first state of a day and after one step."""
        if not self.gradcheck:
            pytest.skip(f"{type(self).__name__}.gradcheck is False (device declared non-smooth)")
        fleet = self.make_fleet(n_agents=2)
        day = synthetic_day(2, 2, steps=2, dt_h=self.dt_h, generator=torch.Generator().manual_seed(5))
        gen = torch.Generator().manual_seed(6)
        d = int(fleet.action_dim)
        with torch.no_grad():
            s0 = fleet.initial_state(2, day[0].temp_out_c)
            s1 = fleet.step(s0, fleet.action(torch.full((2, 2, d), 0.5, dtype=torch.float64), s0, day[0]), day[0])
        for state, inputs in ((s0, day[0]), (s1, day[1])):
            u = (0.1 + 0.8 * torch.rand(2, 2, d, generator=gen, dtype=torch.float64)).requires_grad_(True)
            s = state.clone().requires_grad_(True)

            def every_output(u, s):
                out = device_outputs(fleet, s, u, inputs, s)
                return tuple(v for k, v in out.items() if not k.startswith(("baseline_u", "authority")))

            assert torch.autograd.gradcheck(every_output, (u, s), eps=1e-6, atol=1e-5, rtol=1e-4), \
                f"gradcheck failed at step {inputs.t}"

    # ------------------------------------------------------------------ optional convex model
    def test_convex_model_replays_exactly(self, fleet):
        """If :meth:`~DeviceModel.convex_model` returns a model: its day solves (cvxpy), with
        ``p_kw``/``q_kvar`` ``[N, T]``, ``actions()`` ``[T, N, d]``, and replaying the planned
        actions through ``to_u`` -> :meth:`~DeviceModel.action` -> :meth:`~DeviceModel.step`
        reproduces the planned actions and demand."""
        cp = pytest.importorskip("cvxpy", reason="cvxpy (gridflex[convex]) is not installed")
        model = fleet.convex_model(cp, self.steps)
        if model is None:
            pytest.skip(f"{self.device_class.__name__} has no convex_model (optional)")
        assert isinstance(model, ConvexFleet), f"convex_model must return a ConvexFleet, got {type(model).__name__}"
        day = self.make_day(fleet, batch=1, seed=7)
        temp_c = torch.stack([i.temp_out_c[0] for i in day]).cpu().numpy()
        price = torch.stack([i.price_per_kwh[0] for i in day]).cpu().numpy()
        model.set_day(temp_c, price)
        n, steps = fleet.n_agents, self.steps
        for attr in ("p_kw", "q_kvar"):
            shape = getattr(getattr(model, attr), "shape", (n, steps))
            assert tuple(shape) in ((n, steps), ()), f"ConvexFleet.{attr} has shape {shape}, expected [N, T]"
        energy = cp.sum(cp.multiply(price[None, :] * self.dt_h, model.p_kw))
        problem = cp.Problem(cp.Minimize(energy + model.cost + 1.0 * model.penalty), model.constraints)
        assert problem.is_dcp(), "the ConvexFleet's cost, penalty and constraints must be DCP"
        problem.solve()
        for _ in range(3):
            assert problem.status in ("optimal", "optimal_inaccurate"), f"convex model: status {problem.status}"
            if not model.exclude_simultaneous():
                break
            problem.solve()
        planned = torch.as_tensor(model.actions(), dtype=fleet.dtype)
        assert tuple(planned.shape) == (steps, n, int(fleet.action_dim)), \
            f"actions() has shape {tuple(planned.shape)}, expected [T, N, d]"
        p_plan = torch.as_tensor(getattr(model.p_kw, "value", None), dtype=fleet.dtype)
        tol = 1e-3 * (1.0 + float(planned.abs().max()))
        with torch.no_grad():
            state = fleet.initial_state(1, day[0].temp_out_c)
            for t, inputs in enumerate(day):
                u = model.to_u(planned[t].unsqueeze(0), state, inputs)
                assert ((u >= -1e-9) & (u <= 1 + 1e-9)).all(), f"to_u leaves [0, 1] at step {t}"
                action = fleet.action(u, state, inputs)
                gap = float((action[0] - planned[t]).abs().max())
                assert gap <= tol, f"step {t}: the replayed action differs from the plan by {gap:.3g}"
                p_kw, _ = fleet.demand(action, state)
                assert torch.allclose(p_kw[0], p_plan[:, t], atol=tol), \
                    f"step {t}: the replayed demand differs from the plan"
                state = fleet.step(state, action, inputs)
