"""Base classes of the components plugins register.

Every component has a class attribute ``name`` (the scenario's ``type``), ``kind`` and a nested
pydantic model ``Config`` that validates its ``params`` (unknown keys rejected, units in field
names). A component class documents each config field with a one-line ``description``.
"""

from __future__ import annotations

import abc
import itertools
from dataclasses import dataclass
from typing import Any, Callable, ClassVar, get_args

import torch
from pydantic import BaseModel, ConfigDict, ValidationInfo, field_validator


class StrictConfig(BaseModel):
    """Base of every component config: unknown keys are errors; values are validated on assignment;
    NaN/inf are rejected and so is ``true``/``false`` where a number is expected."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)

    @field_validator("*", mode="before")
    @classmethod
    def _no_bool_for_numbers(cls, value: Any, info: ValidationInfo) -> Any:
        if isinstance(value, bool) and info.field_name is not None:
            annotation = cls.model_fields[info.field_name].annotation
            kinds = set(get_args(annotation)) or {annotation}
            if bool not in kinds and kinds & {int, float}:
                raise ValueError(f"must be a number, got {str(value).lower()}")
        return value


class Component:
    """A pluggable component. Subclasses set ``name``, ``kind`` and ``Config``."""

    name: ClassVar[str]
    kind: ClassVar[str]
    Config: ClassVar[type[StrictConfig]] = StrictConfig

    @classmethod
    def summary(cls) -> str:
        """First line of the class docstring."""
        return (cls.__doc__ or "").strip().splitlines()[0] if cls.__doc__ else ""


@dataclass
class StepInputs:
    """What the environment hands every fleet at one time step (``B`` days, ``N`` agents).

    All tensors share one device and dtype. Per-agent quantities are those of the agent's own
    household and node: the only information a decentralised policy may use.
    """

    t: int  # step index within the day, 0..T-1
    dt_h: float  # step length (h)
    hour_of_day: float  # start of the step (h)
    temp_out_c: torch.Tensor  # [B] outdoor temperature (degC)
    price_per_kwh: torch.Tensor  # [B] energy price (currency/kWh)
    household_kw: torch.Tensor  # [B, N] own uncontrolled household demand (kW)
    pv_kw: torch.Tensor  # [B, N] own rooftop PV output (kW)
    v_prev_pu: torch.Tensor  # [B, N] own node voltage magnitude at the previous step (pu)


class DeviceModel(Component, abc.ABC):
    """A fleet of one device type: all agents of the type as batched tensors.

    Shapes: ``B`` days in a batch, ``N`` agents of this type, ``S = state_dim``,
    ``d = action_dim``. A fleet is built once per scenario from its validated ``Config``
    (parameter *ranges*, sampled per agent with ``generator``), then stepped through each day by
    the environment. Every method is batched over ``[B, N]``, pure (no mutation of inputs) and
    differentiable in torch; no per-agent Python loops.

    Sign convention (docs/design.md §1): :meth:`demand` returns power drawn from the grid
    (positive = load; a generator's output is negative demand).

    The policy output ``u in [0, 1]^d`` maps to a physical action inside the device's feasible
    set *given its current state*: ``a = lo(s) + (hi(s) - lo(s)) * u`` with
    :meth:`action_bounds`. The non-learning controllers call :meth:`baseline_u`.
    """

    kind = "device"
    state_dim: ClassVar[int] = 1
    action_dim: ClassVar[int] = 1
    obs_dim: ClassVar[int] = 1  # local features contributed by the device (its state, scaled)
    residual_names: ClassVar[tuple[str, ...]] = ()  # per-step soft local residuals
    terminal_residual_names: ClassVar[tuple[str, ...]] = ()  # end-of-day soft residuals
    three_phase: bool = False  # set per fleet from its config

    def __init__(
        self,
        config: StrictConfig,
        n_agents: int,
        generator: torch.Generator,
        *,
        dt_h: float,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float64,
    ):
        self.config = config
        self.n_agents = n_agents
        self.dt_h = dt_h
        self.device = torch.device(device)
        self.dtype = dtype

    @abc.abstractmethod
    def initial_state(self, batch: int, temp_out_c: torch.Tensor) -> torch.Tensor:
        """State at the start of each day ``[B, N, S]`` (``temp_out_c``: [B] at step 0)."""

    @abc.abstractmethod
    def observation(self, state: torch.Tensor, inputs: StepInputs) -> torch.Tensor:
        """Device-specific local features ``[B, N, obs_dim]``, roughly unit-scaled."""

    @abc.abstractmethod
    def action_bounds(
        self, state: torch.Tensor, inputs: StepInputs
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """State-dependent limits ``lo, hi`` of the physical action, each ``[B, N, d]``."""

    def action(self, u: torch.Tensor, state: torch.Tensor, inputs: StepInputs) -> torch.Tensor:
        """Physical action ``[B, N, d]`` from a policy output ``u`` in ``[0, 1]^d``."""
        lo, hi = self.action_bounds(state, inputs)
        return lo + (hi - lo) * u

    @abc.abstractmethod
    def step(self, state: torch.Tensor, action: torch.Tensor, inputs: StepInputs) -> torch.Tensor:
        """Next state ``[B, N, S]`` after applying ``action`` for one step."""

    @abc.abstractmethod
    def cost(self, state: torch.Tensor, action: torch.Tensor, inputs: StepInputs) -> torch.Tensor:
        """Operating cost of this step ``[B, N]`` (currency), excluding the energy bought from
        the grid (the network pays that at the source)."""

    @abc.abstractmethod
    def residuals(
        self, state: torch.Tensor, action: torch.Tensor, next_state: torch.Tensor, inputs: StepInputs
    ) -> torch.Tensor:
        """Soft local residuals of this step ``[B, N, len(residual_names)]``, >= 0, 0 if fine."""

    @abc.abstractmethod
    def terminal_residuals(self, first_state: torch.Tensor, last_state: torch.Tensor) -> torch.Tensor:
        """End-of-day residuals ``[B, N, len(terminal_residual_names)]``, >= 0, 0 if fine."""

    @abc.abstractmethod
    def demand(self, action: torch.Tensor, state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Power drawn from the grid ``p_kw, q_kvar``, each ``[B, N]`` (total over its phases)."""

    @abc.abstractmethod
    def baseline_u(
        self, controller: str, state: torch.Tensor, inputs: StepInputs
    ) -> torch.Tensor:
        """Policy output ``u`` ``[B, N, d]`` of a non-learning controller.

        ``controller`` is ``"no_control"``, ``"rule_based"`` or ``"droop"`` (docs/design.md §1).
        """

    def authority_demand(
        self, state: torch.Tensor, inputs: StepInputs, direction: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Demand at the extreme of the device's authority, for the fleet-authority bound.

        ``direction = +1``: the extreme that *lowers* the node voltage: the most active power
        drawn, then (among those) the most reactive power absorbed. ``direction = -1``: the
        extreme that *raises* it: the least drawn (most injected), then the most reactive power
        injected. Energy and comfort limits are meant to be relaxed (power and inverter
        ratings kept): it is a bound on what the fleet could do in one step, not a feasible
        schedule.

        Returns ``p_kw, q_kvar`` (demand sign: positive = drawn / absorbed), each ``[B, N]``,
        for ``state`` ``[B, N, S]``; no gradient is needed (callers use ``torch.no_grad()``).

        Default: evaluate :meth:`demand` of :meth:`action` at the ``2^d`` corners of
        ``u in {0, 1}^d`` for the given state and pick per agent lexicographically (``p``
        first, then ``q``, ties within 1e-9). It keeps the state's own limits (it cannot know
        which of them are energy limits); a device whose :meth:`action_bounds` depend on an
        energy or comfort state overrides this with its rated extremes.
        """
        if direction not in (1, -1):
            raise ValueError(f"direction must be +1 or -1, got {direction!r}")
        d = int(self.action_dim)
        lead = state.shape[:-1]
        best_p = best_q = None
        for corner in itertools.product((0.0, 1.0), repeat=d):
            u = torch.tensor(corner, dtype=state.dtype, device=state.device).expand(*lead, d)
            p_kw, q_kvar = self.demand(self.action(u, state, inputs), state)
            p_kw, q_kvar = p_kw.expand(lead), q_kvar.expand(lead)
            if best_p is None:
                best_p, best_q = p_kw, q_kvar
                continue
            tie = torch.isclose(p_kw, best_p, rtol=0.0, atol=1e-9)
            better = (direction * (p_kw - best_p) > 0) & ~tie
            better = better | (tie & (direction * (q_kvar - best_q) > 0))
            best_p = torch.where(better, p_kw, best_p)
            best_q = torch.where(better, q_kvar, best_q)
        return best_p, best_q

    def convex_model(self, cp, steps: int) -> ConvexFleet | None:
        """Optional: this fleet over one day of ``steps`` steps as convex cvxpy objects
        (:class:`ConvexFleet`), for the centralised perfect-foresight reference.

        ``cp`` is the ``cvxpy`` module, passed in so that device plugins never import cvxpy at
        module level. Must be exact for the device's dynamics and limits (the reference's plan
        is replayed through :meth:`action`). Default: ``None`` (the device cannot be planned;
        the reference refuses such scenarios).
        """
        return None

@dataclass
class ConvexFleet:
    """A fleet's day in convex form (cvxpy objects), for the centralised reference (docs/design.md §1).

    Returned by the optional :meth:`DeviceModel.convex_model`. ``N`` agents, ``T`` steps, ``d``
    the action dim. Day data enter only through cvxpy Parameters (filled by :meth:`set_day`), so
    the problem that holds it is DPP and compiled once.

    * ``constraints``: dynamics, local limits and end-of-day conditions (hard where the device
      treats them as hard, or with non-negative slacks that enter ``penalty``);
    * ``cost``: the device's operating cost over the day (currency), as :meth:`DeviceModel.cost`;
    * ``penalty``: sum over the day of the soft local residuals x dt (residual units x h; e.g.
      degC h of discomfort), ``0`` if none; the reference prices it;
    * ``p_kw``, ``q_kvar``: power drawn per agent and step ``[N, T]`` (demand sign);
    * ``set_day(temp_out_c [T], price_per_kwh [T])``: fill the day's Parameters (numpy);
    * ``actions()``: after a solve, the planned physical actions ``[T, N, d]`` (numpy), in the
      units of :meth:`DeviceModel.action`;
    * ``to_u(action [B, N, d], state, inputs)``: the policy output ``u`` that reproduces a
      planned action at a step through :meth:`DeviceModel.action_bounds` (torch);
    * ``diagnostics()``: small dict of plan checks (e.g. simultaneous charge and discharge);
    * ``exclude_simultaneous()``: after a solve, forbid the minority direction wherever the plan
      both charges and discharges (a device that cannot do both at once) and return how many
      agent-steps it changed (0: the plan is physical as it stands); ``set_day`` lifts the bans.
    """

    constraints: list
    cost: object
    penalty: object
    p_kw: object
    q_kvar: object
    set_day: Callable[[object, object], None]
    actions: Callable[[], object]
    to_u: Callable[[torch.Tensor, torch.Tensor, StepInputs], torch.Tensor]
    diagnostics: Callable[[], dict] = lambda: {}
    exclude_simultaneous: Callable[[], int] = lambda: 0


class NetworkSolver(Component):
    """A network solver: nodal injections in, voltages, currents and source power out."""

    kind = "solver"


class Learner(Component, abc.ABC):
    """A learner or non-learning controller.

    Built as ``cls(config, env, seed=...)`` on an :class:`~gridflex.learning.environment.Environment`. It exposes
    :meth:`act`, the decentralised controller: for fleet ``f`` at step ``t`` it maps the agents'
    own observations ``[B, N, k]`` (and their own device state) to ``u in [0, 1]^d``; agent i's
    output may depend on agent i's inputs only. Learners that train set ``trains = True`` and
    implement :meth:`train`.
    """

    kind = "learner"
    trains: ClassVar[bool] = False
    #: the controller reads ``inputs.v_prev_pu`` (a local measurement), so the environment
    #: solves step by step even when agents do not observe their voltage
    voltage_feedback: ClassVar[bool] = False

    def __init__(self, config: StrictConfig, env, *, seed: int = 0):
        self.config = config
        self.env = env
        self.seed = seed

    @abc.abstractmethod
    def act(self, fleet_index: int, t: int, obs: torch.Tensor, state: torch.Tensor, inputs: StepInputs) -> torch.Tensor:
        """``u`` ``[B, N, d]`` of fleet ``fleet_index``'s agents at step ``t``."""

    def train(self, trainer) -> None:
        """Train with the run's trainer (budget, validation, checkpoints); no-op by default."""

    def prepare(self, exogenous) -> None:
        """Called with the :class:`~gridflex.learning.environment.Exogenous` of the days about to be rolled out.

        Decentralised learners must ignore it; it exists for the centralised perfect-foresight
        reference, which plans each day with full knowledge of it. No-op by default.
        """


class FeederReader(Component):
    """Reads a feeder file into a :class:`gridflex.network.feeder.Feeder`. ``suffixes`` lists file suffixes."""

    kind = "feeder_reader"
    suffixes: ClassVar[tuple[str, ...]] = ()
