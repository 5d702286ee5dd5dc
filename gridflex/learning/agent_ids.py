"""Stable, readable names of an environment's agents: device type, index in its fleet and bus.

One list for every outside view of the agents (the PettingZoo adapter, exported policy files and
their contract), in the environment's order: fleet by fleet, agent by agent.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class AgentId:
    """Agent ``index`` of fleet ``fleet`` (``env.fleets[fleet]``): ``name`` like ``battery_3@671``
    (``battery1_3@671`` when several fleets share a device type), its bus and node names
    (``"bus.phase"``, one or three)."""

    name: str
    fleet: int
    index: int
    device_type: str
    bus: str
    nodes: tuple[str, ...]


def agent_ids(env) -> list[AgentId]:
    """Every agent of ``env`` (an :class:`~gridflex.learning.environment.Environment`), fleet order."""
    types = [fleet.model.name for fleet in env.fleets]
    ids = []
    for f, fleet in enumerate(env.fleets):
        prefix = types[f] if types.count(types[f]) == 1 else f"{types[f]}{f}"
        for i, nodes in enumerate(fleet.placement.nodes):
            names = tuple(env.grid.node_names[int(n)] for n in nodes)
            bus = names[0].rsplit(".", 1)[0]
            ids.append(AgentId(f"{prefix}_{i}@{bus}", f, i, types[f], bus, names))
    return ids
