"""Base classes of the components plugins register.

Every component has a class attribute ``name`` (the scenario's ``type``), ``kind`` and a nested
pydantic model ``Config`` that validates its ``params`` (unknown keys rejected, units in field
names). A component class documents each config field with a one-line ``description``.

Size: every contract a plugin author implements is in this one module, its docstrings being the
specification (shapes, units, what gridflex relies on); splitting it would scatter that reading.
"""

from __future__ import annotations

import abc
import copy
import itertools
from dataclasses import dataclass
from typing import Any, Callable, ClassVar, Literal, get_args, get_origin

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
            if get_origin(annotation) is Literal:  # Literal[1.0, 0.5]: True == 1.0 would pass
                kinds = {type(v) for v in kinds}
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
    household and node: the only information a decentralised policy may use. Built by the
    environment each step; :func:`gridflex.testing.synthetic_day` makes plausible ones for tests.
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

    What gridflex relies on (checked by :class:`gridflex.testing.DeviceContract`; a complete
    example: docs/plugins.md):

    * built as ``cls(config, n_agents, generator, dt_h=..., device=..., dtype=...)``; per-agent
      parameters are drawn from ``generator`` only (never torch's global generator), so equal
      seeds give equal fleets;
    * every method returns tensors in the fleet's ``dtype`` and ``device``, finite for any ``u``
      in ``[0, 1]^d`` and any reachable state, and never writes into its arguments;
    * agent ``i``'s outputs depend on agent ``i``'s state, ``u`` and own :class:`StepInputs`
      entries only, and day ``b``'s on day ``b``'s only;
    * :meth:`action`, :meth:`step`, :meth:`cost`, :meth:`residuals` and :meth:`demand` are
      differentiable in ``u`` and the state (the learners back-propagate through them);
    * :meth:`cost` is the device's own operating cost: the energy it draws is paid at the source.
    """

    kind = "device"
    state_dim: ClassVar[int] = 1
    action_dim: ClassVar[int] = 1
    obs_dim: ClassVar[int] = 1  # local features contributed by the device (its state, scaled)
    residual_names: ClassVar[tuple[str, ...]] = ()  # per-step soft local residuals
    terminal_residual_names: ClassVar[tuple[str, ...]] = ()  # end-of-day soft residuals
    # Optional names with units (suffix _kw, _kvar, _kwh, _c, _pu, _frac, ...) for exported
    # policies and their contract (gridflex export, docs/deploy.md): the state's components, the
    # device's observation features and the action's components (the first action_dim apply),
    # each action with a one-line meaning (sign convention included).
    state_names: ClassVar[tuple[str, ...]] = ()
    observation_names: ClassVar[tuple[str, ...]] = ()
    action_names: ClassVar[tuple[str, ...]] = ()
    action_meanings: ClassVar[tuple[str, ...]] = ()
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
        """State at the start of each day ``[B, N, S]`` (``batch`` = B; ``temp_out_c``: [B] at
        step 0, degC), in the units the device documents for its state."""

    @abc.abstractmethod
    def observation(self, state: torch.Tensor, inputs: StepInputs) -> torch.Tensor:
        """Device-specific local features ``[B, N, obs_dim]`` of ``state [B, N, S]``, dimensionless
        and roughly unit-scaled (the environment adds the common features)."""

    @abc.abstractmethod
    def action_bounds(
        self, state: torch.Tensor, inputs: StepInputs
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """State-dependent limits ``lo <= hi`` of the physical action, each ``[B, N, d]``, in the
        action's units (e.g. kW)."""

    def action(self, u: torch.Tensor, state: torch.Tensor, inputs: StepInputs) -> torch.Tensor:
        """Physical action ``[B, N, d]`` from a policy output ``u`` in ``[0, 1]^d``."""
        lo, hi = self.action_bounds(state, inputs)
        return lo + (hi - lo) * u

    @abc.abstractmethod
    def step(self, state: torch.Tensor, action: torch.Tensor, inputs: StepInputs) -> torch.Tensor:
        """Next state ``[B, N, S]`` after applying ``action [B, N, d]`` (from :meth:`action`) for
        one step of ``dt_h`` hours."""

    @abc.abstractmethod
    def cost(self, state: torch.Tensor, action: torch.Tensor, inputs: StepInputs) -> torch.Tensor:
        """Operating cost of this step ``[B, N]`` (currency, EUR), excluding the energy bought
        from the grid: the environment pays ``price x source import x dt`` at the source, which
        already includes this device's demand (a device without wear or fuel returns zeros)."""

    @abc.abstractmethod
    def residuals(
        self, state: torch.Tensor, action: torch.Tensor, next_state: torch.Tensor, inputs: StepInputs
    ) -> torch.Tensor:
        """Soft local residuals of this step ``[B, N, len(residual_names)]``, >= 0, 0 if fine,
        in the units their names carry (e.g. ``discomfort_c`` in K). ``next_state`` is
        :meth:`step`'s result for ``state`` and ``action``."""

    @abc.abstractmethod
    def terminal_residuals(self, first_state: torch.Tensor, last_state: torch.Tensor) -> torch.Tensor:
        """End-of-day residuals ``[B, N, len(terminal_residual_names)]``, >= 0, 0 if fine, from
        the day's first and last states (each ``[B, N, S]``)."""

    @abc.abstractmethod
    def demand(self, action: torch.Tensor, state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Power drawn from the grid ``p_kw, q_kvar``, each ``[B, N]`` (total over its phases);
        positive = drawn (load) or absorbed, so a generator's output is negative demand."""

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

    def select_agents(self, start: int, stop: int) -> DeviceModel:
        """The fleet of agents ``start <= i < stop`` only (``stop - start`` agents, same
        parameters), for a process that steps a contiguous block of the fleet
        (docs/distributed.md). Agent ``i - start``'s outputs must equal agent ``i``'s in the
        full fleet (checked by :class:`gridflex.testing.DeviceContract`).

        Default: a shallow copy whose tensor attributes with leading dimension ``n_agents`` are
        sliced (the per-agent parameters ``[N, ...]``); everything else is shared. A device that
        keeps per-agent data in other containers, or a tensor whose leading dimension equals
        ``n_agents`` without being per agent, overrides this.
        """
        part = copy.copy(self)
        for name, value in vars(self).items():
            if isinstance(value, torch.Tensor) and value.dim() >= 1 and value.shape[0] == self.n_agents:
                setattr(part, name, value[start:stop])
        part.n_agents = stop - start
        return part


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


class NetworkSolver(Component, abc.ABC):
    """A network solver: per-sample load scales and device injections in, one
    :class:`~gridflex.network.powerflow.PowerFlowResult` out.

    Built once per environment as ``cls(grid, config, *, injection_nodes=None, device, dtype)``:

    * ``grid``: the :class:`~gridflex.network.grid.Grid` (SI, numpy); node order, load elements
      and branches (with the terminal-current layout ``grid.branch_slices``) come from it;
    * ``config``: the solver's validated ``Config`` (or a dict of its fields);
    * ``injection_nodes``: node indices or ``"bus.phase"`` names where devices inject (the last
      dim of ``p_kw``/``q_kvar``, in :attr:`injection_node_names` order); None = every load node;
    * ``device``, ``dtype``: where and in which real precision it computes (the scenario's
      ``device`` and ``dtype``; ``torch.float64`` or ``torch.float32``).

    :meth:`solve` is batched over any leading dims and differentiable with respect to
    ``load_scale``, ``p_kw`` and ``q_kvar``. A solver that can take per-sample regulator taps
    sets ``supports_taps = True`` and implements :meth:`enable_taps`.
    """

    kind = "solver"
    #: per-sample regulator ``taps`` in :meth:`solve` after :meth:`enable_taps`
    supports_taps: ClassVar[bool] = False

    def __init__(self, grid, config: StrictConfig | dict | None = None, *, injection_nodes=None,
                 device: torch.device | str = "cpu", dtype: torch.dtype = torch.float64):
        self.config = config if isinstance(config, self.Config) else self.Config(**(config or {}))
        self.grid = grid
        self.device = torch.device(device)
        self.dtype = dtype

    @property
    @abc.abstractmethod
    def node_names(self) -> list[str]:
        """Every node, ``"bus.phase"``, the order of the last dim of ``result.v_pu`` (= the grid's)."""

    @property
    @abc.abstractmethod
    def injection_node_names(self) -> list[str]:
        """Device injection nodes, the order of the last dim of ``p_kw``/``q_kvar``."""

    @property
    def load_elements(self) -> list[str]:
        """Load elements, the order of the last dim of ``load_scale`` (the grid's)."""
        return list(self.grid.load_elements)

    @abc.abstractmethod
    def solve(self, load_scale: torch.Tensor | None = None, p_kw: torch.Tensor | None = None,
              q_kvar: torch.Tensor | None = None, warm_start=None, taps: torch.Tensor | None = None):
        """One batched power flow.

        :param load_scale: ``[..., n_loads]`` multiplier of each load's nominal kW and kvar (None = 1).
        :param p_kw: ``[..., n_inj]`` device active power drawn at :attr:`injection_node_names`
            (kW, positive = consumption; None = 0).
        :param q_kvar: ``[..., n_inj]`` device reactive power drawn (kvar; None = 0).
        :param warm_start: complex node voltages ``[..., n]`` (pu) or an earlier result; a hint
            a solver may ignore.
        :param taps: ``[..., n_reg]`` regulator positions per sample (only when
            :attr:`supports_taps`, after :meth:`enable_taps`); None = the grid's own taps.
        :return: a :class:`~gridflex.network.powerflow.PowerFlowResult` over the broadcast batch:
            complex ``v_pu [..., n]``, source/load/device powers and losses (kW, kvar),
            ``converged``, ``iterations``, ``residual_pu``, lazily computed branch currents (A) in
            the ``grid.branch_slices`` layout.
        """

    def enable_taps(self, tables, base_taps) -> None:
        """Accept per-sample ``taps`` in :meth:`solve` (``tables``: each regulator's primitive at
        every position; ``base_taps``: the positions of this solver's grid)."""
        raise NotImplementedError(f"solver {self.name!r} does not take per-sample taps")


LEARNER_ROLES = ("learner", "baseline", "planner")


class Learner(Component, abc.ABC):
    """A learner or non-learning controller.

    Built as ``cls(config, env, seed=...)`` on an :class:`~gridflex.learning.environment.Environment`
    (the training environment). It exposes :meth:`act`, the decentralised controller: for fleet
    ``f`` at step ``t`` it maps the agents' own observations ``[B, N, k]`` (and their own device
    state) to ``u in [0, 1]^d``; agent i's output may depend on agent i's inputs only.

    Capabilities are declared, never patched on from outside:

    * ``trains``: the learner implements :meth:`train` (usually through
      :class:`~gridflex.learning.training.TrainableLearner`);
    * ``role``: ``"learner"`` (default); ``"baseline"``, a fixed controller every run evaluates
      beside its learner (no_control, rule_based, droop); ``"planner"``, a centralised controller
      that sees the days in :meth:`prepare` (the perfect-foresight reference);
    * ``voltage_feedback``: :meth:`act` reads ``inputs.v_prev_pu``;
    * work counters (power-flow solves, environment gradients, policy updates) live in
      ``env.counters`` (:class:`~gridflex.learning.counters.WorkCounters`), which the learner
      increments;
    * :meth:`report`: a JSON-ready dict of what the learner wants recorded beside its metrics
      (written to ``learner_extras.json``);
    * ``shards_agents``: :meth:`act` (and training) work when the environment is sharded over
      processes (docs/distributed.md): ``obs``/``state`` then hold only this process's agents
      of the fleet, whose models are ``env.acting_fleets``.
    """

    kind = "learner"
    trains: ClassVar[bool] = False
    role: ClassVar[str] = "learner"
    #: the controller reads ``inputs.v_prev_pu`` (a local measurement), so the environment
    #: solves step by step even when agents do not observe their voltage
    voltage_feedback: ClassVar[bool] = False
    #: works on an environment sharded over processes (``gridflex run`` under torchrun)
    shards_agents: ClassVar[bool] = False

    def __init__(self, config: StrictConfig, env, *, seed: int = 0):
        self.config = config
        self.env = env
        self.seed = seed

    @abc.abstractmethod
    def act(self, fleet_index: int, t: int, obs: torch.Tensor, state: torch.Tensor, inputs: StepInputs) -> torch.Tensor:
        """``u`` ``[B, N, d]`` of fleet ``fleet_index``'s agents at step ``t``.

        :param obs: ``[B, N, k]`` each agent's own observation (``env.obs_dim(fleet_index)``).
        :param state: ``[B, N, S]`` each agent's own device state.
        :param inputs: the step's :class:`StepInputs` (own household, PV, voltage).
        :return: ``[B, N, d]`` in ``[0, 1]``.
        """

    def train(self, trainer):
        """Train with the run's trainer (budget, validation, checkpoints) and return its
        :class:`~gridflex.learning.training.TrainingResult`; only called when ``trains``."""
        raise NotImplementedError(f"learner {self.name!r} does not train")

    def prepare(self, exogenous, on_day: Callable[[int, str], None] | None = None) -> None:
        """Called with the :class:`~gridflex.learning.environment.Exogenous` of the days about to
        be rolled out. Decentralised learners must ignore it (default: nothing); a ``planner``
        plans there with full knowledge of the days and may call ``on_day(day index, one line)``
        after each day it plans (progress for planners that take minutes per day)."""

    def report(self) -> dict[str, Any]:
        """What the learner wants recorded beside its metrics (JSON-ready); default: nothing."""
        return {}

    def deployable_policies(self) -> list | None:
        """The agents' own networks for ``gridflex export``: one
        :class:`~gridflex.learning.policies.DeployablePolicy` per fleet (weights, observation
        normalisation, the squashing into ``[0, 1]``); ``None`` (default): nothing to export."""
        return None

    @classmethod
    def search_space(cls, trial) -> dict[str, Any]:
        """The learner's tunable ``params`` for one Optuna trial (``gridflex tune``).

        :param trial: an ``optuna.trial.Trial``; call its ``suggest_*`` methods, one per tunable.
        :return: ``{param name: value}``, validated by ``cls.Config`` like any scenario's
            ``learner.params``; parameters not returned keep the scenario's values.
            Default: ``{}`` (nothing to tune: the learner is run as configured).
        """
        return {}


class FeederReader(Component):
    """Reads a feeder file into a :class:`gridflex.network.feeder.Feeder`.

    ``suffixes`` lists the file suffixes it reads (e.g. ``(".dss",)``, lower case). It implements
    ``read(path: Path, taps: str) -> Feeder``: ``taps`` is ``"file"`` (regulator taps as written)
    or ``"opendss"`` (settled by one engine solve); the feeder is in SI units, its element lists in
    the file's order. Scenarios do not configure readers, so ``Config`` is optional here.
    """

    kind = "feeder_reader"
    suffixes: ClassVar[tuple[str, ...]] = ()
