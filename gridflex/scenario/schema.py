"""Scenario files: YAML in, validated typed configuration out.

Validation runs in two stages and reports *every* problem in one :class:`ScenarioError`:

1. structure: the top-level schema (:class:`Scenario`), unknown keys rejected at every level;
2. components: each ``type`` is looked up in the plugin registry and its ``params`` validated by
   that component's own ``Config`` model.

Each problem names the YAML path (``devices[2].params.p_max_kw``), what was given and what is
allowed, with a did-you-mean for misspelled names. Relative paths resolve against the scenario
file. Shipped scenarios and feeders are found through :mod:`gridflex.shipped`.
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import Field, ValidationError, field_validator, model_validator

from gridflex.plugins.contracts import StrictConfig
from gridflex.scenario.problems import Problem
from gridflex.shipped import builtin_feeder_names

#: A torch device name: the same rule as ``--device`` (gridflex.runs.torch_device, which also
#: checks that the device exists on the machine before a run starts).
DEVICE_PATTERN = r"^(cpu|cuda|cuda:[0-9]+|auto)$"


# --------------------------------------------------------------------------------------------
# Structural schema
# --------------------------------------------------------------------------------------------
class ComponentSpec(StrictConfig):
    """A pluggable component chosen by ``type`` with its own ``params``."""

    type: str = Field(description="registered component name (see `gridflex plugins`)")
    params: dict[str, Any] = Field(
        default_factory=dict, description="validated by the component's own config schema"
    )


class FeederSpec(StrictConfig):
    """Which feeder, and how its regulators and loads are set up."""

    file: str = Field(
        description="a .dss master file or gridflex feeder .json(.gz), relative to this scenario "
        f"file, or a shipped feeder name: {builtin_feeder_names()}"
    )
    taps: Literal["file", "opendss"] = Field(
        "opendss",
        description="base regulator taps: 'file' as written, or 'opendss' settled by one engine solve "
        "of the base case (where every day starts; what 'frozen' keeps)",
    )
    tap_treatment: Literal["frozen", "settled", "regulated"] = Field(
        "frozen",
        description="how regulator taps behave everywhere (calibration, training, validation, targets, "
        "test): 'frozen' at the base taps ('taps'), 'settled' at each regulator's median tap under the "
        "tap controller over the no-control training days, 'regulated' with the tap controller in "
        "every rollout (docs/network.md, Regulators)",
    )
    load_model: Literal["file", "constant_pq"] = Field(
        "constant_pq",
        description="'file' keeps each load's OpenDSS model (1, 2, 4, 5); 'constant_pq' makes all "
        "loads constant power (smooth gradients for learning)",
    )
    load_mult: float = Field(1.0, gt=0, le=10, description="scales every load's nominal kW and kvar")


class LimitsSpec(StrictConfig):
    """Network limits used by every metric and, with a margin, in training."""

    v_limits_pu: tuple[float, float] = Field(
        (0.95, 1.05), description="voltage limits [min, max] in pu for evaluation metrics"
    )
    v_limits_train_pu: tuple[float, float] = Field(
        (0.955, 1.045), description="tighter voltage limits [min, max] in pu used in training"
    )
    line_limits: bool = Field(True, description="check line currents against ampacity")
    line_ampacity_scale: float = Field(
        1.0, gt=0, le=100, description="multiplies every line's ampacity"
    )

    @field_validator("v_limits_pu", "v_limits_train_pu")
    @classmethod
    def _ordered(cls, value: tuple[float, float]) -> tuple[float, float]:
        lo, hi = value
        if not (0.5 <= lo < hi <= 1.5):
            raise ValueError(f"must satisfy 0.5 <= min < max <= 1.5, got [{lo}, {hi}]")
        return value


class DataSpec(StrictConfig):
    """Time resolution and which days feed training, validation and test."""

    dt_h: Literal[1.0, 0.5] = Field(1.0, description="time step in hours (one day = one episode)")
    n_validation_days: int = Field(14, ge=1, le=366, description="validation days evaluated")
    n_test_days: int = Field(14, ge=1, le=366, description="test days evaluated")


class TargetSpec(StrictConfig):
    """Absolute training target, fixed before any training (docs/design.md §3)."""

    max_violation_rate: float = Field(
        0.005, ge=0, le=1, description="v*: validation voltage_violation_rate (under the scenario's tap treatment)"
    )
    cost_share_x: float = Field(
        0.5,
        ge=0,
        le=1,
        description="x: validation cost <= C_ref + x (C_no_control - C_ref)",
    )


class DeviceGroupSpec(ComponentSpec):
    """A group of agents of one device type."""

    count: int = Field(ge=0, le=1_000_000, description="number of agents of this type")
    seed: int | None = Field(
        None, ge=0, le=2**32 - 1, description="placement/parameter seed (default: scenario seed)"
    )
    nodes: list[str] | None = Field(
        None,
        description="explicit placement: one node ('67.2') per agent, or one bus ('67') per "
        "agent for three-phase devices; default: seeded random households",
    )

    @model_validator(mode="after")
    def _nodes_match_count(self) -> DeviceGroupSpec:
        if self.nodes is not None and len(self.nodes) != self.count:
            raise ValueError(f"nodes lists {len(self.nodes)} entries but count is {self.count}")
        return self


class PopulationSpec(StrictConfig):
    """Households replacing the spot loads, and their rooftop PV (docs/design.md §1)."""

    households_per_kw: float = Field(
        0.6, gt=0, le=10, description="households behind a spot load per kW of its rating"
    )
    peak_scale: float = Field(
        1.0, gt=0, le=5, description="aggregate training-day peak of a spot load's households / its kW"
    )
    pv_share: float = Field(0.3, ge=0, le=1, description="share of households with rooftop PV")
    pv_kwp: tuple[float, float] = Field((3.0, 8.0), description="PV size range [min, max] (kWp)")
    seed: int | None = Field(
        None, ge=0, le=2**32 - 1, description="placement seed (default: scenario seed)"
    )

    @field_validator("pv_kwp")
    @classmethod
    def _range(cls, value: tuple[float, float]) -> tuple[float, float]:
        if not 0 <= value[0] <= value[1] <= 1000:
            raise ValueError(f"must satisfy 0 <= min <= max <= 1000, got [{value[0]}, {value[1]}]")
        return value


class EnvironmentSpec(StrictConfig):
    """What agents observe and how evaluation treats the regulators."""

    observe_voltage: bool = Field(
        False, description="agents also observe their own node's |V| at the previous step"
    )
    regulated_evaluation: bool = Field(
        True, description="also evaluate with a RegControl-like tap controller (metrics test_regulated)"
    )
    compile: bool = Field(
        False, description="compile each fleet's device step and the policies' acting forward with "
        "torch.compile (CUDA graphs on CUDA devices): the same function, fewer launches; tens of seconds "
        "of compilation per device type, so it pays on long runs (docs/gradmap.md, Compiled device "
        "steps; with the solver's sync_free: true a rollout never waits for the host)"
    )


class Scenario(StrictConfig):
    """A gridflex scenario: feeder, data, fleet, solver, learner, limits and target."""

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$", description="short identifier used in run paths")
    description: str = Field("", description="free text")
    seed: int = Field(0, ge=0, le=2**32 - 1, description="master seed")
    device: str = Field(
        "cpu", json_schema_extra={"pattern": DEVICE_PATTERN},
        description="torch device: cpu, cuda, cuda:N (CUDA device number N) or auto (cuda when "
        "available, else cpu)",
    )
    dtype: Literal["float64", "float32"] = Field("float64", description="physics precision")
    feeder: FeederSpec
    data: DataSpec = Field(default_factory=DataSpec)
    solver: ComponentSpec = Field(
        default_factory=lambda: ComponentSpec(type="ac3ph"), description="network solver used in training"
    )
    evaluation_solver: ComponentSpec = Field(
        default_factory=lambda: ComponentSpec(type="ac3ph"),
        description="network solver that judges: validation, targets, test metrics; omitted: the "
        "training solver when it is the exact ac3ph, else ac3ph with its defaults (exact AC whatever trains)",
    )

    @model_validator(mode="before")
    @classmethod
    def _judge_with_exact_ac(cls, data: Any) -> Any:
        if isinstance(data, dict) and "evaluation_solver" not in data:
            data = {**data, "evaluation_solver": default_evaluation_solver(data)}
        return data
    population: PopulationSpec = Field(default_factory=PopulationSpec)
    devices: list[DeviceGroupSpec] = Field(default_factory=list, description="agent groups")
    environment: EnvironmentSpec = Field(default_factory=EnvironmentSpec)
    learner: ComponentSpec | None = Field(None, description="learner or controller")
    limits: LimitsSpec = Field(default_factory=LimitsSpec)
    target: TargetSpec = Field(default_factory=TargetSpec)

    @field_validator("device")
    @classmethod
    def _device_name(cls, value: str) -> str:
        if re.fullmatch(DEVICE_PATTERN, value) is None:
            raise ValueError(f"{value!r} is not a device gridflex knows; allowed: cpu, cuda, cuda:N "
                             "(CUDA device number N, from 0) or auto (cuda when available, else cpu)")
        return value

    @model_validator(mode="after")
    def _train_margin_inside(self) -> Scenario:
        message = _train_margin_problem(self.limits)
        if message:
            raise ValueError(message)
        return self


def default_evaluation_solver(data: dict[str, Any]) -> Any:
    """The ``evaluation_solver`` a raw scenario mapping gets when it names none: its ``solver``
    when that is ``ac3ph`` (same tolerances), else ``ac3ph`` with its defaults."""
    solver = data.get("solver", {"type": "ac3ph"})
    if isinstance(solver, dict) and solver.get("type") == "ac3ph":
        return solver
    return {"type": "ac3ph"}


def _train_margin_problem(limits: LimitsSpec) -> str | None:
    """The cross-field check of ``limits`` (also run on its own when other fields are invalid)."""
    lo, hi = limits.v_limits_pu
    tlo, thi = limits.v_limits_train_pu
    if tlo < lo or thi > hi:
        return ("limits.v_limits_train_pu must lie inside limits.v_limits_pu "
                f"(got [{tlo}, {thi}] outside [{lo}, {hi}])")
    return None


def cross_field_problems(data: dict[str, Any]) -> list[Problem]:
    """Cross-field checks of sections that are valid on their own, so they are reported together
    with the field errors elsewhere (pydantic runs a model's "after" validators only when every
    field validated)."""
    limits = data.get("limits", {})
    if not isinstance(limits, dict):
        return []
    try:
        spec = LimitsSpec.model_validate(limits)
    except ValidationError:
        return []  # its field errors are reported by the structural stage
    message = _train_margin_problem(spec)
    return [Problem("", message)] if message else []


