"""Scenario files: YAML in, validated typed configuration out.

Validation runs in two stages and reports *every* problem in one :class:`ScenarioError`:

1. structure: the top-level schema (:class:`Scenario`), unknown keys rejected at every level;
2. components: each ``type`` is looked up in the plugin registry and its ``params`` validated by
   that component's own ``Config`` model.

Each problem names the YAML path (``devices[2].params.p_max_kw``), what was given and what is
allowed, with a did-you-mean for misspelled names. Relative paths resolve against the scenario
file. Shipped scenarios live in the package ``gridflex.scenarios`` (found with importlib.resources).
"""

from __future__ import annotations

import copy
import hashlib
import importlib.resources
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, Field, ValidationError, field_validator, model_validator

from gridflex.components import StrictConfig
from gridflex.errors import UserError, did_you_mean
from gridflex.plugins import blocked_note

DEFAULT_SCENARIO = "ieee13_small.yaml"

#: Feeders shipped with gridflex, usable by name in ``feeder.file``.
BUILTIN_FEEDERS = {
    "ieee13": "feeders/ieee13/IEEE13Nodeckt.dss",
    "ieee34mod1": "feeders/ieee34/ieee34Mod1.dss",
    "ieee34mod2": "feeders/ieee34/ieee34Mod2.dss",
    "ieee123": "feeders/ieee123/IEEE123Master.dss",
}


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
        f"file, or a shipped feeder name: {', '.join(BUILTIN_FEEDERS)}"
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
    days_per_batch: int = Field(8, ge=1, le=366, description="training days per batch")
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


class Scenario(StrictConfig):
    """A gridflex scenario: feeder, data, fleet, solver, learner, limits and target."""

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$", description="short identifier used in run paths")
    description: str = Field("", description="free text")
    seed: int = Field(0, ge=0, le=2**32 - 1, description="master seed")
    device: Literal["cpu", "cuda", "auto"] = Field(
        "cpu", description="torch device; 'auto' picks cuda when available"
    )
    dtype: Literal["float64", "float32"] = Field("float64", description="physics precision")
    feeder: FeederSpec
    data: DataSpec = Field(default_factory=DataSpec)
    solver: ComponentSpec = Field(
        default_factory=lambda: ComponentSpec(type="ac3ph"), description="network solver"
    )
    population: PopulationSpec = Field(default_factory=PopulationSpec)
    devices: list[DeviceGroupSpec] = Field(default_factory=list, description="agent groups")
    environment: EnvironmentSpec = Field(default_factory=EnvironmentSpec)
    learner: ComponentSpec | None = Field(None, description="learner or controller")
    limits: LimitsSpec = Field(default_factory=LimitsSpec)
    target: TargetSpec = Field(default_factory=TargetSpec)

    @model_validator(mode="after")
    def _train_margin_inside(self) -> Scenario:
        message = _train_margin_problem(self.limits)
        if message:
            raise ValueError(message)
        return self


def _train_margin_problem(limits: LimitsSpec) -> str | None:
    """The cross-field check of ``limits`` (also run on its own when other fields are invalid)."""
    lo, hi = limits.v_limits_pu
    tlo, thi = limits.v_limits_train_pu
    if tlo < lo or thi > hi:
        return ("limits.v_limits_train_pu must lie inside limits.v_limits_pu "
                f"(got [{tlo}, {thi}] outside [{lo}, {hi}])")
    return None


def _cross_field_problems(data: dict[str, Any]) -> list[Problem]:
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


# --------------------------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Problem:
    """One validation problem at a YAML path."""

    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path or '<top level>'}: {self.message}"


class ScenarioError(UserError):
    """Every problem found in one scenario file, in one report."""

    def __init__(self, source: str, problems: list[Problem]):
        self.source = source
        self.problems = problems
        n = len(problems)
        lines = [f"scenario {source} is invalid ({n} problem{'s' if n != 1 else ''}):"]
        lines += [f"  - {p}" for p in problems]
        super().__init__("\n".join(lines))


def yaml_path(loc: tuple[Any, ...]) -> str:
    """``('devices', 2, 'params', 'p_max_kw')`` -> ``'devices[2].params.p_max_kw'``."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


def _short(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _model_at(model: type[BaseModel], loc: tuple[Any, ...]) -> type[BaseModel] | None:
    """The pydantic model that holds the last key of ``loc`` (for listing allowed keys)."""
    current: Any = model
    for part in loc[:-1]:
        if isinstance(part, int):
            continue
        if not (isinstance(current, type) and issubclass(current, BaseModel)):
            return None
        info = current.model_fields.get(part)
        if info is None:
            return None
        current = _inner_model(info.annotation)
    return current if isinstance(current, type) and issubclass(current, BaseModel) else None


def _inner_model(annotation: Any) -> Any:
    """Unwrap ``list[X]``, ``X | None`` to the model class X, if any."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()):
        found = _inner_model(arg)
        if found is not None:
            return found
    return None


def problems_from_validation_error(
    exc: ValidationError, model: type[BaseModel], prefix: tuple[Any, ...] = ()
) -> list[Problem]:
    """Turn pydantic's errors into :class:`Problem` s with YAML paths and suggestions."""
    problems = []
    for err in exc.errors(include_url=False):
        loc = tuple(err["loc"])
        path = yaml_path(prefix + loc)
        kind = err["type"]
        if kind == "extra_forbidden":
            holder = _model_at(model, loc)
            allowed = sorted(holder.model_fields) if holder else []
            key = loc[-1]
            msg = f"unknown key {key!r}{did_you_mean(key, allowed)}"
            if allowed:
                msg += f"; allowed keys: {', '.join(allowed)}"
        elif kind == "missing":
            msg = "required key is missing"
        elif kind == "value_error":
            msg = err["msg"].removeprefix("Value error, ")
        elif kind in ("tuple_type", "too_short", "too_long") and len(loc) and not isinstance(loc[-1], int):
            # every tuple field of a scenario or component is a pair: a range [lo, hi] / [min, max]
            value = err.get("input")
            got = _short(value) if isinstance(value, (list, tuple)) else f"{_a(type(value).__name__)}, {_short(value)}"
            msg = f"expected a [lo, hi] range (a list of two numbers, e.g. [5.0, 13.5]), got {got}"
        else:
            msg = f"{err['msg']} (got {_short(err.get('input'))})"
        problems.append(Problem(path, msg))
    return problems


# --------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------
@dataclass
class LoadedScenario:
    """A validated scenario and where it came from."""

    config: Scenario
    source: Path  # the scenario file
    raw: dict[str, Any]  # the mapping after overrides, before defaults
    component_configs: dict[str, StrictConfig] = field(default_factory=dict)  # yaml path -> config

    @property
    def base_dir(self) -> Path:
        return self.source.parent

    def resolve_path(self, relative: str) -> Path:
        """A path from the scenario, resolved against the scenario file's folder."""
        return resolve_relative(relative, self.base_dir)

    def feeder_path(self) -> Path:
        return resolve_feeder_file(self.config.feeder.file, self.base_dir)

    def sha256(self) -> str:
        """sha256 of the resolved scenario (canonical JSON of the validated config)."""
        text = self.config.model_dump_json()
        return hashlib.sha256(text.encode()).hexdigest()

    def component_config(self, path: str) -> StrictConfig:
        return self.component_configs[path]


def shipped_scenarios_dir() -> Path:
    """Folder of the scenarios shipped in the package (``gridflex.scenarios``)."""
    return Path(str(importlib.resources.files("gridflex.scenarios")))


def shipped_scenarios() -> list[Path]:
    return sorted(shipped_scenarios_dir().glob("*.yaml"))


def default_scenario_path() -> Path:
    return shipped_scenarios_dir() / DEFAULT_SCENARIO


def resolve_relative(relative: str, base_dir: Path) -> Path:
    path = Path(relative).expanduser()
    return path if path.is_absolute() else (base_dir / path).resolve()


def resolve_feeder_file(file: str, base_dir: Path) -> Path:
    """``feeder.file``: a shipped feeder name, else a path relative to the scenario file."""
    if file.lower() in BUILTIN_FEEDERS:
        return shipped_scenarios_dir() / BUILTIN_FEEDERS[file.lower()]
    return resolve_relative(file, base_dir)


class _DuplicateKeyError(yaml.MarkedYAMLError):
    """A mapping that names the same key twice (``yaml.safe_load`` silently keeps the last)."""


class _StrictSafeLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that rejects duplicate keys in a mapping, naming the key and line."""

    def construct_mapping(self, node, deep=False):  # type: ignore[override]
        if isinstance(node, yaml.MappingNode):
            seen: dict[Any, Any] = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key = self.construct_object(key_node, deep=True)
                try:
                    first = seen.get(key)
                except TypeError:  # unhashable key: SafeLoader reports it
                    continue
                if first is not None:
                    raise _DuplicateKeyError(
                        problem=f"duplicate key {key!r} (first at line {first.line + 1}); "
                        "YAML would silently keep only the last one",
                        problem_mark=key_node.start_mark,
                    )
                seen[key] = key_node.start_mark
        return super().construct_mapping(node, deep=deep)


def strict_safe_load(text: str) -> Any:
    """``yaml.safe_load`` that rejects duplicate mapping keys (a :class:`yaml.YAMLError`)."""
    return yaml.load(text, Loader=_StrictSafeLoader)  # noqa: S506 (a SafeLoader subclass)


def _a(kind: str) -> str:
    """``kind`` with its indefinite article: "an int", "a list"."""
    return f"{'an' if kind[:1].lower() in 'aeiou' else 'a'} {kind}"


def read_yaml_mapping(path: Path) -> dict[str, Any]:
    """Read a YAML file that must hold a mapping; a :class:`ScenarioError` otherwise."""
    source = str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UserError(f"scenario file {source} not found") from None
    except IsADirectoryError:
        raise UserError(f"scenario path {source} is a directory, not a YAML file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"scenario file {source} cannot be read: {exc}") from None
    try:
        data = strict_safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ScenarioError(source, [Problem("", f"not valid YAML{where}: {problem}")]) from None
    if not isinstance(data, dict):
        kind = "empty" if data is None else _a(type(data).__name__)
        raise ScenarioError(source, [Problem("", f"must be a mapping of keys to values, got {kind}")])
    bad_keys = [k for k in data if not isinstance(k, str)]
    if bad_keys:
        raise ScenarioError(
            source, [Problem("", f"keys must be strings, got {_short(k)}") for k in bad_keys]
        )
    return data


def apply_overrides(data: dict[str, Any], overrides: list[str], source: str) -> dict[str, Any]:
    """Apply dotted ``key.sub[2].x=value`` (or ``key.sub.2.x=value``) overrides.

    Values are parsed as YAML scalars/flow collections (``0.05``, ``true``, ``[0.9, 1.1]``).
    """
    data = copy.deepcopy(data)
    problems = []
    for override in overrides:
        key, sep, raw_value = override.partition("=")
        if not sep or not key.strip():
            problems.append(Problem(override, "override must look like key.path=value"))
            continue
        try:
            value = strict_safe_load(raw_value)
        except yaml.YAMLError:
            value = raw_value
        parts = _split_dotted(key.strip())
        target: Any = data
        try:
            for part in parts[:-1]:
                if isinstance(target, list):
                    target = target[int(part)]
                else:
                    target = target.setdefault(part, {})
            last = parts[-1]
            if isinstance(target, list):
                target[int(last)] = value
            elif isinstance(target, dict):
                target[last] = value
            else:
                raise TypeError
        except (ValueError, IndexError, TypeError):
            problems.append(Problem(key, f"override path does not exist in {source}"))
    if problems:
        raise ScenarioError(f"{source} (command-line overrides)", problems)
    return data


def _split_dotted(key: str) -> list[str]:
    return [p for p in key.replace("[", ".").replace("]", "").split(".") if p]


def _non_finite_problems(data: Any, loc: tuple[Any, ...] = ()) -> list[Problem]:
    """NaN/inf anywhere in the file (YAML's .nan/.inf) is always a mistake."""
    if isinstance(data, float) and not math.isfinite(data):
        return [Problem(yaml_path(loc), f"must be a finite number, got {data}")]
    if isinstance(data, dict):
        return [p for k, v in data.items() for p in _non_finite_problems(v, loc + (k,))]
    if isinstance(data, list):
        return [p for i, v in enumerate(data) for p in _non_finite_problems(v, loc + (i,))]
    return []


def validate_mapping(data: dict[str, Any], source: Path, registry: Any | None) -> LoadedScenario:
    """Validate a scenario mapping (both stages); raise :class:`ScenarioError` with all problems."""
    problems = _non_finite_problems(data)
    non_finite_paths = {p.path for p in problems}
    problems += _check_paths(data, source.parent)
    component_configs: dict[str, StrictConfig] = {}
    if registry is not None:
        problems += _validate_components(data, registry, component_configs)
    try:
        config = Scenario.model_validate(data)
    except ValidationError as exc:
        structural = problems_from_validation_error(exc, Scenario)
        problems += [p for p in structural if p.path not in non_finite_paths]
        problems += _cross_field_problems(data)
        raise ScenarioError(str(source), _sorted(problems)) from None
    loaded = LoadedScenario(config, source, data, component_configs)
    if problems:
        raise ScenarioError(str(source), _sorted(problems))
    return loaded


def _sorted(problems: list[Problem]) -> list[Problem]:
    """Unique problems, in the order of the YAML paths."""
    return sorted(dict.fromkeys(problems), key=lambda p: p.path)


def _check_paths(data: dict[str, Any], base_dir: Path) -> list[Problem]:
    """Files the scenario names must exist (checked on the raw mapping, so always reported)."""
    feeder = data.get("feeder")
    if not isinstance(feeder, dict) or not isinstance(feeder.get("file"), str):
        return []
    file = feeder["file"]
    path = resolve_feeder_file(file, base_dir)
    if path.is_file():
        return []
    return [
        Problem(
            "feeder.file",
            f"file {str(path)!r} not found (relative paths resolve against the scenario's folder "
            f"{str(base_dir)!r}); shipped feeders by name: {', '.join(BUILTIN_FEEDERS)}"
            f"{did_you_mean(file, BUILTIN_FEEDERS)}",
        )
    ]


def _component_entries(data: dict[str, Any]) -> list[tuple[str, str, Any]]:
    """(kind, yaml path, raw mapping) for every component section of a raw scenario mapping."""
    entries: list[tuple[str, str, Any]] = [("solver", "solver", data.get("solver", {"type": "ac3ph"}))]
    devices = data.get("devices")
    if isinstance(devices, list):
        entries += [("device", f"devices[{i}]", spec) for i, spec in enumerate(devices)]
    if data.get("learner") is not None:
        entries.append(("learner", "learner", data["learner"]))
    return entries


def _validate_components(
    data: dict[str, Any], registry: Any, configs_out: dict[str, StrictConfig]
) -> list[Problem]:
    """Check each component's ``type`` and validate its ``params`` with the component's schema.

    Entries that are structurally broken (not a mapping, ``type`` not a string) are left to the
    structural stage, which reports them.
    """
    problems = []
    for kind, path, spec in _component_entries(data):
        if not isinstance(spec, dict) or not isinstance(spec.get("type"), str):
            continue
        name = spec["type"]
        allowed = registry.names(kind)
        if name not in allowed:
            problems.append(
                Problem(
                    f"{path}.type",
                    f"unknown {kind} {name!r}{did_you_mean(name, allowed)}; "
                    f"installed: {', '.join(allowed) or 'none'}{blocked_note()}",
                )
            )
            continue
        params = spec.get("params", {})
        if not isinstance(params, dict):
            continue
        config_model = registry.get(kind, name).Config
        try:
            configs_out[path] = config_model.model_validate(params)
        except ValidationError as exc:
            problems += problems_from_validation_error(exc, config_model, prefix=(path, "params"))
    return problems


def load_scenario(
    path: str | Path | None = None,
    overrides: list[str] | None = None,
    registry: Any | None = None,
) -> LoadedScenario:
    """Load and validate a scenario file (the embedded default when ``path`` is None).

    ``registry`` (a :class:`gridflex.plugins.Registry`) enables the component stage; without it
    only the structure is checked.
    """
    source = Path(path).expanduser().resolve() if path is not None else default_scenario_path()
    data = read_yaml_mapping(source)
    if overrides:
        data = apply_overrides(data, overrides, str(source))
    return validate_mapping(data, source, registry)


def scenario_json_schema(registry: Any | None = None) -> dict[str, Any]:
    """JSON schema of scenario files, with each registered component's ``params`` schema.

    Components appear as ``anyOf`` alternatives keyed by their ``type`` constant, so editors with
    a YAML language server can complete and check ``params``.
    """
    schema = Scenario.model_json_schema()
    if registry is None:
        return schema
    defs = schema.setdefault("$defs", {})
    variants: dict[str, list[dict[str, Any]]] = {}
    for kind in ("solver", "device", "learner"):
        variants[kind] = []
        for name in registry.names(kind):
            model = registry.get(kind, name).Config
            def_name = f"{kind}_{name}_params"
            sub = model.model_json_schema(ref_template=f"#/$defs/{def_name}__{{model}}")
            for inner_name, inner in sub.pop("$defs", {}).items():
                defs[f"{def_name}__{inner_name}"] = inner
            defs[def_name] = sub
            variants[kind].append(
                {
                    "type": "object",
                    "properties": {
                        "type": {"const": name},
                        "params": {"$ref": f"#/$defs/{def_name}"},
                    },
                    "required": ["type"],
                }
            )
    props = schema["properties"]
    if variants["solver"]:
        props["solver"] = {"allOf": [props["solver"], {"anyOf": variants["solver"]}]}
    if variants["learner"]:
        props["learner"] = {"anyOf": [{"allOf": [{"$ref": "#/$defs/ComponentSpec"}, {"anyOf": variants["learner"]}]}, {"type": "null"}]}
    if variants["device"]:
        props["devices"] = {
            "type": "array",
            "items": {"allOf": [{"$ref": "#/$defs/DeviceGroupSpec"}, {"anyOf": variants["device"]}]},
        }
    return schema
