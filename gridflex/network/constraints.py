"""Which quantities the network metrics watch, and their limits (docs/design.md §1).

* **Monitored nodes** (the denominators of every voltage metric): all nodes except the source
  bus's, dummy buses (``*_open``: the "normally open" switches Sw7/Sw8 of IEEE 123 tied to
  dangling buses) and the far side (bus 2) of closed zero-impedance switches. At ungrounded
  buses (IEEE 123's 610, behind a delta-delta transformer) the line-to-line voltage / sqrt(3) is
  monitored, since the line-to-ground voltage there is held only by an anti-float shunt.
* **Line ratings**: per-line-code ampacity from ``scenarios/feeders/line_ampacity.yaml`` (the
  feeders' 400 A default is not a rating); checked on series lines, not on switches. Transformers
  are checked against their rated winding current (kVA / kV).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import yaml

from gridflex.network.feeder import Feeder
from gridflex.network.grid import Grid
from gridflex.shipped import line_ampacity_path


def line_ampacity_table() -> dict[str, float]:
    """Linecode name (lower case) -> ampacity of its phase conductor (A)."""
    raw = yaml.safe_load(line_ampacity_path().read_text())
    conductors = raw["conductors_a"]
    return {str(code).lower(): float(conductors[name]) for code, name in raw["linecodes"].items()}


def ungrounded_buses(feeder: Feeder) -> set[str]:
    """Buses of galvanic islands with no ground reference (no source, no wye winding).

    Lines connect buses galvanically; transformers separate islands. An island is grounded if it
    holds the source bus, a wye-connected transformer winding, or a wye capacitor or load.
    """
    parent = {bus.name: bus.name for bus in feeder.buses}

    def find(bus: str) -> str:
        while parent[bus] != bus:
            parent[bus] = parent[parent[bus]]
            bus = parent[bus]
        return bus

    for line in [*feeder.lines, *(r for r in feeder.reactors if r.bus2)]:  # series reactors too
        parent[find(line.bus1)] = find(line.bus2)
    grounded = {find(source.bus1) for source in feeder.vsources}
    for transformer in feeder.transformers:
        grounded |= {find(w.bus) for w in transformer.windings if w.conn == "wye"}
    grounded |= {find(c.bus1) for c in feeder.capacitors if c.conn == "wye"}
    grounded |= {find(load.bus) for load in feeder.loads if load.conn == "wye"}
    return {bus.name for bus in feeder.buses if find(bus.name) not in grounded}


def _bus_of(node: str) -> str:
    return node.rsplit(".", 1)[0]


@dataclass
class VoltageMonitor:
    """Monitored voltage magnitudes from node voltages.

    ``node_a``/``node_b`` index the grid's nodes; ``node_b = -1`` means line-to-ground
    ``|v_a|``, otherwise the line-to-line ``|v_a - v_b| / sqrt(3)`` (ungrounded buses).
    """

    names: list[str]
    node_a: np.ndarray
    node_b: np.ndarray

    def __len__(self) -> int:
        return len(self.names)

    def _indices(self, device: torch.device) -> tuple[torch.Tensor, ...]:
        """(all monitored, line-to-line positions, their nodes a and b) on ``device``, cached."""
        cache = self.__dict__.setdefault("_index_cache", {})
        if device not in cache:
            ll = np.flatnonzero(self.node_b >= 0)
            cache[device] = tuple(
                torch.as_tensor(x, device=device)
                for x in (self.node_a, ll, self.node_a[ll], self.node_b[ll])
            )
        return cache[device]

    def magnitudes_pu(self, v_pu: torch.Tensor) -> torch.Tensor:
        """``[..., n_nodes]`` complex pu -> ``[..., n_monitored]`` magnitudes (pu)."""
        a, ll, ll_a, ll_b = self._indices(v_pu.device)
        vm = v_pu[..., a].abs()
        if ll.numel() == 0:
            return vm
        return vm.index_copy(-1, ll, (v_pu[..., ll_a] - v_pu[..., ll_b]).abs() / math.sqrt(3.0))


def voltage_monitor(feeder: Feeder, grid: Grid) -> VoltageMonitor:
    """The monitored nodes of a feeder (see module docstring)."""
    source_buses = {source.bus1 for source in feeder.vsources}
    far_side = {line.bus2 for line in feeder.lines if line.is_switch}
    ungrounded = ungrounded_buses(feeder)
    index = {name: i for i, name in enumerate(grid.node_names)}
    names, node_a, node_b = [], [], []
    for name in grid.node_names:
        bus = _bus_of(name)
        if bus in source_buses or bus in far_side or bus.endswith("_open"):
            continue
        partner = -1
        if bus in ungrounded:
            phases = sorted(n for n in grid.node_names if _bus_of(n) == bus)
            k = phases.index(name)
            partner = index[phases[(k + 1) % len(phases)]]
        names.append(name)
        node_a.append(index[name])
        node_b.append(partner)
    return VoltageMonitor(names, np.array(node_a), np.array(node_b))


@dataclass
class CurrentMonitor:
    """Rated branch currents: phase conductors at terminal 1 of each rated branch.

    ``columns`` index the last dim of :attr:`PowerFlowResult.branch_currents_a`; ``rating_a``
    is the ampacity of each (A); ``names`` are ``"line.l115.1"``-style labels.
    """

    names: list[str]
    columns: np.ndarray
    rating_a: np.ndarray

    def __len__(self) -> int:
        return len(self.names)

    def loading(self, branch_currents_a: torch.Tensor) -> torch.Tensor:
        """``|I| / I_max`` per rated conductor ``[..., n_rated]``."""
        device, dtype = branch_currents_a.device, branch_currents_a.real.dtype
        cache = self.__dict__.setdefault("_index_cache", {})
        if (device, dtype) not in cache:
            cache[(device, dtype)] = (torch.as_tensor(self.columns, device=device),
                                      torch.as_tensor(self.rating_a, device=device, dtype=dtype))
        cols, rating = cache[(device, dtype)]
        return branch_currents_a[..., cols].abs() / rating


def current_monitor(
    feeder: Feeder, grid: Grid, branch_slices: dict[str, slice], scale: float = 1.0
) -> CurrentMonitor:
    """Series lines rated by their linecode's conductor; transformers by kVA / kV."""
    ampacity = line_ampacity_table()
    transformers = {f"transformer.{t.name}": t for t in feeder.transformers}
    names, columns, ratings = [], [], []
    for branch in grid.branches:
        if branch.kind in ("switch", "reactor"):  # not rated here (a reactor: issue #19)
            continue
        if branch.kind == "line":
            rating = ampacity.get((branch.line_code or "").lower())
        else:
            winding = transformers[branch.name].windings[0]
            kv_phase = winding.kv / math.sqrt(3.0) if branch.n_phases == 3 else winding.kv
            rating = winding.kva / branch.n_phases / kv_phase
        if rating is None:
            continue
        start = branch_slices[branch.name].start
        for k in range(branch.n_phases):
            names.append(f"{branch.name}.{k + 1}")
            columns.append(start + k)
            ratings.append(rating * scale)
    return CurrentMonitor(names, np.array(columns, dtype=int), np.array(ratings))
