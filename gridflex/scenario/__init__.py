"""Scenario files: YAML in, a validated typed configuration out.

``schema`` holds the structural models, ``problems`` the validation report (every problem at its
YAML path, in one error), ``loading`` the strict YAML reader, dotted overrides, path resolution and
the two validation stages (structure, then each component's own ``Config``).
"""

from gridflex.scenario.loading import (
    LoadedScenario,
    apply_overrides,
    load_scenario,
    read_yaml_mapping,
    resolve_feeder_file,
    resolve_relative,
    scenario_json_schema,
    strict_safe_load,
    validate_mapping,
)
from gridflex.scenario.problems import Problem, ScenarioError, yaml_path
from gridflex.scenario.schema import Scenario
# where the shipped scenarios and feeders are: re-exported from the floor-0 module gridflex.shipped
from gridflex.shipped import BUILTIN_FEEDERS, DEFAULT_SCENARIO, default_scenario_path, shipped_scenarios, shipped_scenarios_dir

__all__ = [
    "BUILTIN_FEEDERS", "DEFAULT_SCENARIO", "LoadedScenario", "Problem", "Scenario", "ScenarioError",
    "apply_overrides", "default_scenario_path", "load_scenario", "read_yaml_mapping",
    "resolve_feeder_file", "resolve_relative", "scenario_json_schema", "shipped_scenarios",
    "shipped_scenarios_dir", "strict_safe_load", "validate_mapping", "yaml_path",
]
