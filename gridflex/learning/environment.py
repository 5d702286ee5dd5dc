"""The multi-agent environment: every agent's action -> device dynamics -> AC power flow.

One rollout simulates a batch of ``B`` days for all agents (``T`` steps a day). Per step, each
fleet's agents observe only local quantities (:class:`~gridflex.plugins.contracts.StepInputs` of their
own household and node), a controller maps observations to ``u in [0, 1]^d``, the fleet turns
``u`` into feasible actions and steps its dynamics, and the devices' demand is added to the
households' net demand at the injection nodes. The AC power flow (``ac3ph`` or any solver with the
same interface) then gives voltages, currents and source power for all days and steps at once
(or step by step when agents observe their previous voltage).

Modes: differentiable end to end through the closed loop (autograd through the controller,
device dynamics and the implicit power-flow adjoint), with respect to open-loop policy outputs
(:meth:`Environment.rollout` with ``u_fixed``), or gradient-free (``torch.no_grad()``).

Sharded over processes (docs/distributed.md): ``fleets`` stay whole, ``acting_fleets`` are this
process's agents (stepped here, acted for by controllers); their demand and trajectories are
all-gathered, so the power flow and the :class:`Rollout` cover every agent, identically on every
process. Unsharded, ``acting_fleets is fleets`` and ``shard is None``.

Size: one rollout loop serves every mode (closed and open loop, step-wise power flow and tap
control, compiled device steps, agents sharded over processes), so the modes stay one code path.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from gridflex.plugins.contracts import DeviceModel, StepInputs
from gridflex.learning.counters import WorkCounters
from gridflex.learning.device_step import DeviceStep, compile_for, compiled_device_step, device_step
from gridflex.network.constraints import CurrentMonitor, VoltageMonitor
from gridflex.network.feeder import Feeder
from gridflex.fleet.population import HouseholdSites, Placement
from gridflex.network.powerflow import combine_results, map_batch
from gridflex.fleet.profiles import DayBatch
from gridflex.network.regulators import TAP_TREATMENTS, TapController, TapSolvers

#: act(fleet_index, t, observation [B, N, k], state [B, N, S], inputs) -> u [B, N, d]
Controller = Callable[[int, int, torch.Tensor, torch.Tensor, StepInputs], torch.Tensor]

COMMON_FEATURES = ("household_kw", "pv_kw", "temp_out", "price", "hour_sin", "hour_cos")


@dataclass
class Fleet:
    """One device group: the model and where its agents are."""

    name: str  # YAML path, e.g. "devices[0]"
    model: DeviceModel
    placement: Placement

    @property
    def n_agents(self) -> int:
        return self.model.n_agents


@dataclass
class Exogenous:
    """Uncontrolled inputs of a batch of days, on the environment's device.

    household_kw[B, H, T] scaled household demand; pv_kw[B, H, T] rooftop PV output;
    load_scale[B, T, L] multiplier of each spot load's nominal kW/kvar; pv_injection_kw[B, T, n_inj]
    PV as (negative) consumption at the injection nodes; temp_out_c[B, T]; price_per_kwh[B, T].
    """

    household_kw: torch.Tensor
    pv_kw: torch.Tensor
    load_scale: torch.Tensor
    pv_injection_kw: torch.Tensor
    temp_out_c: torch.Tensor
    price_per_kwh: torch.Tensor
    dt_h: float
    day_of_year: np.ndarray

    @property
    def batch(self) -> int:
        return self.temp_out_c.shape[0]

    @property
    def steps(self) -> int:
        return self.temp_out_c.shape[1]


@dataclass
class FleetTrajectory:
    """One fleet over a batch of days: states [B, T+1, N, S], u/actions [B, T, N, d],
    observations [B, T, N, k], cost [B, T, N], residuals [B, T, N, r], terminal [B, N, r_T],
    demand p_kw/q_kvar [B, T, N]."""

    states: torch.Tensor
    u: torch.Tensor
    actions: torch.Tensor
    observations: torch.Tensor
    cost: torch.Tensor
    residuals: torch.Tensor
    terminal: torch.Tensor
    p_kw: torch.Tensor
    q_kvar: torch.Tensor


@dataclass
class Rollout:
    """A simulated batch of days: per-fleet trajectories, network injections and power flow."""

    exogenous: Exogenous
    fleets: list[FleetTrajectory]
    p_injection_kw: torch.Tensor  # [B, T, n_inj] net consumption at injection nodes
    q_injection_kvar: torch.Tensor
    flow: object  # PowerFlowResult over [B, T]
    taps: np.ndarray | None = None  # [B, T, n_reg] when a tap controller ran


class Environment:
    """Fleets on a feeder with households, PV and an AC solver (see module docstring)."""

    def __init__(
        self,
        grid,
        solver_factory: Callable[[Sequence[int]], object],
        households: HouseholdSites,
        fleets: list[Fleet],
        voltage_monitor: VoltageMonitor,
        current_monitor_factory: Callable[[dict[str, slice]], CurrentMonitor],
        *,
        dt_h: float,
        device: torch.device,
        dtype: torch.dtype = torch.float64,
        observe_voltage: bool = False,
        feeder: Feeder | None = None,
        tap_treatment: str = "frozen",
        compile_steps: bool = False,
    ):
        self.grid = grid
        self.households = households
        self.fleets = fleets
        self.acting_fleets = fleets  # this process's agents (module docstring)
        self.shard = None  # gridflex.learning.distributed.AgentShard when sharded
        self.dt_h = dt_h
        self.device = device
        self.dtype = dtype
        self.observe_voltage = observe_voltage
        #: device steps through torch.compile (scenario ``environment.compile``; .device_step)
        self.compiled = compile_steps
        self._device_steps: dict[int, DeviceStep] = {}  # id(model) -> its step function
        self._acting: dict[int, Callable] = {}  # id(policy) -> its acting forward
        self.voltage_monitor = voltage_monitor
        self.injection_nodes = self._injection_nodes()
        self.solver = solver_factory(self.injection_nodes)
        self._solver_factory = solver_factory
        if tap_treatment not in TAP_TREATMENTS:
            raise ValueError(f"tap_treatment must be one of {TAP_TREATMENTS}, got {tap_treatment!r}")
        if tap_treatment == "regulated" and (feeder is None or not feeder.regcontrols):
            raise ValueError("tap_treatment 'regulated' needs a feeder with RegControls")
        self.feeder = feeder
        self.tap_treatment = tap_treatment
        #: the taps of ``grid`` (frozen or settled; where every regulated day starts)
        self.base_taps: dict[str, int] = dict((grid.meta or {}).get("taps", {}))
        names = [rc.transformer for rc in feeder.regcontrols] if feeder is not None else []
        base_state = tuple(self.base_taps.get(n, 0) for n in names)
        self.tap_solvers = TapSolvers(names, self.with_taps_solver, known={base_state: self.solver})
        self.current_monitor = current_monitor_factory(grid.branch_slices)
        #: training work: this environment counts solves, learners the rest
        self.counters = WorkCounters()
        self._build_maps()

    # ------------------------------------------------------------------ set-up
    def _injection_nodes(self) -> np.ndarray:
        nodes = set(self.households.node[self.households.pv_kwp > 0].tolist())
        for fleet in self.fleets:
            for agent_nodes in fleet.placement.nodes:
                nodes.update(int(n) for n in agent_nodes)
        return np.array(sorted(nodes), dtype=np.int64)

    def _build_maps(self) -> None:
        col = {int(n): k for k, n in enumerate(self.injection_nodes)}
        n_inj = len(self.injection_nodes)
        tensor = dict(device=self.device, dtype=self.dtype)
        hh = self.households
        self._hh_scale = torch.as_tensor(hh.kw_scale, **tensor)
        self._hh_pv_kwp = torch.as_tensor(hh.pv_kwp, **tensor)
        pv_map = torch.zeros(len(hh), n_inj, **tensor)
        with_pv = np.flatnonzero(hh.pv_kwp > 0)
        pv_map[with_pv, [col[int(hh.node[h])] for h in with_pv]] = 1.0
        self._pv_map = pv_map  # [H, n_inj]
        load_map = torch.zeros(len(hh), len(hh.spot_p_kw), **tensor)
        inv_p = np.where(hh.spot_p_kw > 0, 1.0 / np.maximum(hh.spot_p_kw, 1e-12), 0.0)
        load_map[np.arange(len(hh)), hh.load] = torch.as_tensor(inv_p[hh.load], **tensor)
        self._load_map = load_map  # [H, L]: household kW -> spot load scale
        self._injection_index = torch.as_tensor(self.injection_nodes, device=self.device)
        self._fleet_maps = []
        for fleet in self.fleets:
            m = torch.zeros(fleet.n_agents, n_inj, **tensor)
            for i, nodes in enumerate(fleet.placement.nodes):
                for n in nodes:
                    m[i, col[int(n)]] += 1.0 / len(nodes)
            self._fleet_maps.append(m)  # [N, n_inj]: agent demand -> node consumption
        self._fleet_households = [torch.as_tensor(f.placement.household, device=self.device)
                                  for f in self.acting_fleets]

    @property
    def power_flow_solves(self) -> int:
        """Training power-flow samples so far (read-only; see :attr:`counters`)."""
        return self.counters.power_flow_solves

    @property
    def n_agents(self) -> int:
        return sum(f.n_agents for f in self.fleets)

    def obs_dim(self, fleet_index: int) -> int:
        extra = 1 if self.observe_voltage else 0
        return len(COMMON_FEATURES) + extra + self.fleets[fleet_index].model.obs_dim

    # ------------------------------------------------------------------ data
    def exogenous(self, batch: DayBatch) -> Exogenous:
        """Tensors of a :class:`DayBatch` (households in this environment's population)."""
        tensor = dict(device=self.device, dtype=self.dtype)
        household_kw = torch.as_tensor(batch.household_kw, **tensor)[:, : len(self.households)]
        household_kw = household_kw * self._hh_scale[None, :, None]
        pv_kw = torch.as_tensor(batch.pv_kw_per_kwp, **tensor)[:, : len(self.households)]
        pv_kw = pv_kw * self._hh_pv_kwp[None, :, None]
        load_scale = torch.einsum("bht,hl->btl", household_kw, self._load_map)
        pv_injection = -torch.einsum("bht,hn->btn", pv_kw, self._pv_map)
        return Exogenous(
            household_kw=household_kw,
            pv_kw=pv_kw,
            load_scale=load_scale,
            pv_injection_kw=pv_injection,
            temp_out_c=torch.as_tensor(batch.temp_out_c, **tensor),
            price_per_kwh=torch.as_tensor(batch.price_per_kwh, **tensor),
            dt_h=batch.dt_h,
            day_of_year=np.asarray(batch.day_of_year),
        )

    def step_inputs(self, exo: Exogenous, t: int, fleet_index: int, v_prev_pu: torch.Tensor) -> StepInputs:
        households = self._fleet_households[fleet_index]
        return StepInputs(
            t=t,
            dt_h=exo.dt_h,
            hour_of_day=t * exo.dt_h,
            temp_out_c=exo.temp_out_c[:, t],
            price_per_kwh=exo.price_per_kwh[:, t],
            household_kw=exo.household_kw[:, households, t],
            pv_kw=exo.pv_kw[:, households, t],
            v_prev_pu=v_prev_pu,
        )

    def observation(self, fleet_index: int, state: torch.Tensor, inputs: StepInputs) -> torch.Tensor:
        """Local observation ``[B, N, obs_dim]``: common features, optional |V|, device features."""
        model = self.acting_fleets[fleet_index].model
        b, n = inputs.household_kw.shape
        angle = 2 * math.pi * (inputs.hour_of_day + 0.5 * inputs.dt_h) / 24.0
        ones = torch.ones(b, n, device=self.device, dtype=self.dtype)
        features = [
            inputs.household_kw,
            inputs.pv_kw / 5.0,
            ((inputs.temp_out_c - 10.0) / 10.0)[:, None] * ones,
            ((inputs.price_per_kwh - 0.3) / 0.1)[:, None] * ones,
            math.sin(angle) * ones,
            math.cos(angle) * ones,
        ]
        if self.observe_voltage:
            features.append((inputs.v_prev_pu - 1.0) / 0.05)
        return torch.cat([torch.stack(features, -1), model.observation(state, inputs)], -1)

    # ------------------------------------------------------------------ rollout
    def rollout(
        self,
        exo: Exogenous,
        controller: Controller | None = None,
        *,
        u_fixed: Sequence[torch.Tensor] | None = None,
        tap_controller: TapController | None = None,
        regulate: bool | None = None,
        voltage_feedback: bool = False,
    ) -> Rollout:
        """Simulate ``exo``'s days. Either ``controller`` acts from observations (closed loop) or
        ``u_fixed[f]`` ``[B, T, N_f, d_f]`` gives every fleet's outputs (open loop; differentiate
        with respect to them). Regulator taps follow the scenario's treatment: a tap controller
        runs when the treatment is ``regulated`` or ``regulate=True`` (``test_regulated``), or
        when ``tap_controller`` is given. ``voltage_feedback`` solves step by step so that
        ``inputs.v_prev_pu`` holds each agent's measured voltage even when it is not an
        observation (droop). Autograd flows unless called under ``torch.no_grad()``."""
        if (controller is None) == (u_fixed is None):
            raise ValueError("pass exactly one of controller and u_fixed")
        b, steps = exo.batch, exo.steps
        if tap_controller is None and (regulate if regulate is not None else self.tap_treatment == "regulated"):
            tap_controller = self.new_tap_controller(b)
        fleets, shard = self.acting_fleets, self.shard  # shard: docs/distributed.md
        states = [f.model.initial_state(b, exo.temp_out_c[:, 0]) for f in fleets]
        first_states = list(states)
        v_prev = [torch.ones(b, f.n_agents, device=self.device, dtype=self.dtype) for f in fleets]
        record = [{k: [] for k in ("states", "u", "actions", "obs", "cost", "res", "p", "q")} for _ in fleets]
        p_inj, q_inj, flows, warm = [], [], [], None
        step_wise = self.observe_voltage or voltage_feedback or tap_controller is not None
        for t in range(steps):
            p_t = exo.pv_injection_kw[:, t]
            q_t = torch.zeros_like(p_t)
            for f, fleet in enumerate(fleets):
                model, state = fleet.model, states[f]
                inputs = self.step_inputs(exo, t, f, v_prev[f])
                obs = self.observation(f, state, inputs)
                u = u_fixed[f][:, t] if u_fixed is not None else controller(f, t, obs, state, inputs)
                action, nxt, p_kw, q_kvar, cost, residuals = self.device_step(model)(u, state, inputs)
                rec = record[f]
                rec["states"].append(state)
                rec["u"].append(u)
                rec["actions"].append(action)
                rec["obs"].append(obs)
                rec["cost"].append(cost)
                rec["res"].append(residuals)
                rec["p"].append(p_kw)
                rec["q"].append(q_kvar)
                if shard is None:
                    p_t = p_t + p_kw @ self._fleet_maps[f]
                    q_t = q_t + q_kvar @ self._fleet_maps[f]
                states[f] = nxt
            if shard is not None:
                if not step_wise:  # every agent's demand is gathered once, after the loop
                    continue
                demand = shard.gather_agents([(f, rec[k][-1], 1) for f, rec in enumerate(record) for k in "pq"])
                p_t, q_t = self._add_demand(p_t, q_t, demand[0::2], demand[1::2])
            p_inj.append(p_t)
            q_inj.append(q_t)
            if step_wise:
                if tap_controller is None:
                    flow = self.solver.solve(exo.load_scale[:, t], p_t, q_t, warm_start=warm)
                    self.counters.count_solves(b)
                else:
                    flow = tap_controller.solve_step(exo.load_scale[:, t], p_t, q_t, warm)
                warm = flow
                flows.append(flow)
                v_prev = self.agent_voltages(flow.vm_pu.detach())
                if shard is not None:
                    v_prev = [v[:, shard.own(f)] for f, v in enumerate(v_prev)]
        trajectories = None  # unsharded: built after the solve, as always
        if shard is not None:  # every agent's trajectory; non-step-wise, the injections from them
            trajectories = shard.gather_trajectories([self._trajectory(fleet, record[f], first_states[f], states[f])
                                                      for f, fleet in enumerate(fleets)])
            p_steps = [tr.p_kw.unbind(1) for tr in trajectories] if not step_wise else []
            q_steps = [tr.q_kvar.unbind(1) for tr in trajectories] if not step_wise else []
            for t in range(0 if step_wise else steps):  # unbind: one backward node, not T selects
                pv_t = exo.pv_injection_kw[:, t]
                p_t, q_t = self._add_demand(pv_t, torch.zeros_like(pv_t), [p[t] for p in p_steps],
                                            [q[t] for q in q_steps])
                p_inj.append(p_t)
                q_inj.append(q_t)
        p_all, q_all = torch.stack(p_inj, 1), torch.stack(q_inj, 1)
        taps = None
        if not step_wise:
            flow = self.solver.solve(exo.load_scale, p_all, q_all)
            self.counters.count_solves(b * steps)
        elif tap_controller is None:
            flow = combine_results(flows, "stack")
        else:
            self.counters.count_solves(tap_controller.solves)
            tap_controller.solves = 0
            taps = tap_controller.history()
            flow = combine_results(flows, "stack")
            if torch.is_grad_enabled() and (p_all.requires_grad or q_all.requires_grad):
                # the control loop ran without autograd: solve every day-step once more at its
                # settled taps, warm-started there, so the implicit adjoint reaches the injections
                flow = self.solve_at_taps(exo.load_scale, p_all, q_all, taps, warm=flow.v_pu.detach())
        if trajectories is None:
            trajectories = [self._trajectory(fleet, record[f], first_states[f], states[f])
                            for f, fleet in enumerate(fleets)]
        return Rollout(exo, trajectories, p_all, q_all, flow, taps)

    def device_step(self, model: DeviceModel) -> DeviceStep:
        """``model``'s step function (action, dynamics, demand, cost, residuals), compiled when
        :attr:`compiled`; built once per model."""
        key = id(model)
        if key not in self._device_steps:
            self._device_steps[key] = (compiled_device_step(model, self.device) if self.compiled
                                       else device_step(model))
        return self._device_steps[key]

    def acting(self, policy: Callable[[torch.Tensor], torch.Tensor]) -> Callable[[torch.Tensor], torch.Tensor]:
        """``policy``'s forward for acting without autograd (observations ``[B, N, k]`` ->
        ``u [B, N, d]``), compiled like the device steps when :attr:`compiled`; built once per
        policy. Its parameters are read at each call, so in-place optimiser updates apply."""
        if not self.compiled:
            return policy
        key = id(policy)
        if key not in self._acting:
            self._acting[key] = compile_for(policy, self.device)
        return self._acting[key]

    @staticmethod
    def _trajectory(fleet: Fleet, rec: dict, first_state: torch.Tensor, last_state: torch.Tensor) -> FleetTrajectory:
        return FleetTrajectory(
            states=torch.stack(rec["states"] + [last_state], 1),
            u=torch.stack(rec["u"], 1),
            actions=torch.stack(rec["actions"], 1),
            observations=torch.stack(rec["obs"], 1),
            cost=torch.stack(rec["cost"], 1),
            residuals=torch.stack(rec["res"], 1),
            terminal=fleet.model.terminal_residuals(first_state, last_state),
            p_kw=torch.stack(rec["p"], 1),
            q_kvar=torch.stack(rec["q"], 1),
        )

    def _add_demand(self, p_t: torch.Tensor, q_t: torch.Tensor, p_kw: list[torch.Tensor],
                    q_kvar: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """``p_t [B, n_inj] + sum_f p_kw[f] [B, N_f] @ map_f`` (and ``q``), fleets in order."""
        for f, fleet_map in enumerate(self._fleet_maps):
            p_t = p_t + p_kw[f] @ fleet_map
            q_t = q_t + q_kvar[f] @ fleet_map
        return p_t, q_t

    def own(self, fleet_index: int, x: torch.Tensor, dim: int = 2) -> torch.Tensor:
        """This process's agents of fleet ``fleet_index`` in ``x`` (agents along ``dim``; ``x`` unsharded)."""
        if self.shard is None:
            return x
        index = [slice(None)] * x.dim()
        index[dim] = self.shard.own(fleet_index)
        return x[tuple(index)]

    def gather_fleets(self, xs: Sequence[torch.Tensor], dim: int = 2) -> list[torch.Tensor]:
        """Per fleet, ``xs[f]`` (this process's agents along ``dim``) for all agents (an all-gather
        when sharded, differentiable; ``list(xs)`` otherwise)."""
        if self.shard is None:
            return list(xs)
        return self.shard.gather_agents([(f, x, dim) for f, x in enumerate(xs)])

    # ------------------------------------------------------------------ regulators
    def new_tap_controller(self, batch: int) -> TapController:
        """A controller for ``batch`` days starting at :attr:`base_taps`, sharing this
        environment's per-tap-state solvers."""
        if self.feeder is None or not self.feeder.regcontrols:
            raise ValueError("this environment's feeder has no RegControls to regulate")
        self.tap_solvers.enable_batched(self.solver, self.feeder, self.base_taps)
        return TapController(self.feeder, self.grid.node_names, self.tap_solvers, batch,
                             start_taps=self.base_taps)

    def solve_at_taps(self, load_scale: torch.Tensor, p_kw: torch.Tensor, q_kvar: torch.Tensor,
                      taps: np.ndarray | None, warm: torch.Tensor | None = None):
        """Power flow of day-steps ``[B, T, ...]`` each at its regulator taps ``taps [B, T, n_reg]``
        (``None``: this environment's fixed taps), all in one batched solve when the solver
        supports per-sample taps, else grouped by tap state (:class:`TapSolvers`);
        differentiable like :meth:`solve`. Counts ``B x T`` solves."""
        b, steps = p_kw.shape[:2]
        self.counters.count_solves(b * steps)
        if taps is None:
            return self.solver.solve(load_scale, p_kw, q_kvar, warm_start=warm)
        if self.feeder is not None:
            self.tap_solvers.enable_batched(self.solver, self.feeder, self.base_taps)

        def flat(x):
            return None if x is None else x.reshape(b * steps, *x.shape[2:])

        flow = self.tap_solvers.solve(np.asarray(taps).reshape(b * steps, -1), flat(load_scale), flat(p_kw),
                                      flat(q_kvar), flat(warm))
        return map_batch(flow, lambda x: x.reshape(b, steps, *x.shape[1:]))

    def node_consumption(self, fleet_index: int, p_kw: torch.Tensor, q_kvar: torch.Tensor
                         ) -> tuple[torch.Tensor, torch.Tensor]:
        """Fleet ``fleet_index``'s demand ``[B, N]`` (kW, kvar) as consumption at the injection
        nodes ``[B, n_inj]`` (a three-phase device's demand spread evenly over its phases)."""
        fleet_map = self._fleet_maps[fleet_index]
        return p_kw @ fleet_map, q_kvar @ fleet_map

    def agent_voltages(self, vm_pu: torch.Tensor) -> list[torch.Tensor]:
        """Each agent's own node |V| [B, N] per fleet (mean over phases for three-phase devices),
        from node magnitudes ``vm_pu [B, n]``."""
        vm_inj = vm_pu[:, self._injection_index]  # [B, n_inj]
        return [vm_inj @ fleet_map.T for fleet_map in self._fleet_maps]

    def with_taps_solver(self, taps: dict[str, int]):
        """A solver for this environment's injection nodes at other regulator taps."""
        return self._solver_factory(self.injection_nodes, taps)
