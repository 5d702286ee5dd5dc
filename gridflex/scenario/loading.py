"""Reading a scenario file: strict YAML, dotted overrides, paths, the two validation stages."""

from __future__ import annotations

import copy
import hashlib
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from gridflex.plugins.contracts import StrictConfig
from gridflex.errors import UserError, did_you_mean
from gridflex.plugins.registry import blocked_note
from gridflex.scenario.problems import Problem, ScenarioError, problems_from_validation_error, short_repr, with_article, yaml_path
from gridflex.scenario.schema import Scenario, cross_field_problems, default_evaluation_solver
from gridflex.shipped import (BUILTIN_FEEDERS, builtin_feeder_names, builtin_feeder_path, default_scenario_path,
                              is_builtin_feeder)

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

    def feeder_path(self) -> Path:
        return resolve_feeder_file(self.config.feeder.file, self.base_dir)

    def sha256(self) -> str:
        """sha256 of the resolved scenario (canonical JSON of the validated config)."""
        text = self.config.model_dump_json()
        return hashlib.sha256(text.encode()).hexdigest()

    def component_config(self, path: str) -> StrictConfig:
        return self.component_configs[path]


def resolve_relative(relative: str, base_dir: Path) -> Path:
    path = Path(relative).expanduser()
    return path if path.is_absolute() else (base_dir / path).resolve()


def resolve_feeder_file(file: str, base_dir: Path) -> Path:
    """``feeder.file``: a shipped feeder name, else a path relative to the scenario file."""
    if is_builtin_feeder(file):
        return builtin_feeder_path(file)
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
        kind = "empty" if data is None else with_article(type(data).__name__)
        raise ScenarioError(source, [Problem("", f"must be a mapping of keys to values, got {kind}")])
    bad_keys = [k for k in data if not isinstance(k, str)]
    if bad_keys:
        raise ScenarioError(
            source, [Problem("", f"keys must be strings, got {short_repr(k)}") for k in bad_keys]
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
        problems += cross_field_problems(data)
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
            f"{str(base_dir)!r}); shipped feeders by name: {builtin_feeder_names()}"
            f"{did_you_mean(file, BUILTIN_FEEDERS)}",
        )
    ]


def _component_entries(data: dict[str, Any]) -> list[tuple[str, str, Any]]:
    """(kind, yaml path, raw mapping) for every component section of a raw scenario mapping."""
    entries: list[tuple[str, str, Any]] = [
        ("solver", "solver", data.get("solver", {"type": "ac3ph"})),
        ("solver", "evaluation_solver", data.get("evaluation_solver", default_evaluation_solver(data))),
    ]
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

    ``registry`` (a :class:`gridflex.plugins.registry.Registry`) enables the component stage; without it
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
