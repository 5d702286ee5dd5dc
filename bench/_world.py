"""Shared set-up of the bench scripts: a scenario's world, optionally with fewer validation days."""

from __future__ import annotations


def scenario_world(scenario: str, validation_days: int | None = None):
    """``(registry, loaded, world)`` of ``scenario`` built through the plugin registry;
    ``validation_days`` overrides ``data.n_validation_days``."""
    from gridflex.plugins.registry import load_registry
    from gridflex.runs.world import build_world
    from gridflex.scenario import load_scenario

    pm, registry = load_registry()
    overrides = [] if validation_days is None else [f"data.n_validation_days={validation_days}"]
    loaded = load_scenario(scenario, overrides, registry)
    return registry, loaded, build_world(loaded, registry, pm)
