"""Households behind the spot loads, rooftop PV, and which household each agent's device sits at.

docs/design.md §1: each spot load is *replaced* by the sum of the household profiles placed at its node.
Spot load ``l`` with nominal ``P_l`` kW gets ``n_l = max(1, round(households_per_kw * P_l))``
households, spread evenly over its single-phase branches (phases). The households' profiles are
scaled by one factor per spot load so that the highest daily peak of their sum over the
**training** days equals ``peak_scale * P_l`` (validation and test days are never looked at);
reactive power follows each spot load's own power factor. A seeded share of households has
rooftop PV (unity power factor, sized in ``pv_kwp``), injected at the household's node.

Agents are devices placed on distinct households (at most one device of each type per
household): randomly (seeded) among eligible households, or explicitly by node (single-phase
devices) or bus (three-phase devices). A three-phase device needs a bus with three phases; no
device is placed on an ungrounded bus.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from gridflex.errors import UserError
from gridflex.network.grid import Grid


@dataclass
class HouseholdSites:
    """Where the feeder's households (``H`` of them) are connected, and their PV.

    Not their consumption: each household's profile identity is
    :class:`gridflex.fleet.profiles.HouseholdIdentities` (household ``h`` is profile agent ``h``).

    ``load[h]`` index of the spot load (into ``grid.load_elements``), ``node[h]`` the node
    index its single-phase connection lands on (node a of its load branch), ``bus[h]`` its bus
    name, ``kw_scale[h]`` multiplier of its profile (the spot load's factor), ``pv_kwp[h]``
    installed PV (0 without PV).
    """

    load: np.ndarray
    node: np.ndarray
    bus: list[str]
    kw_scale: np.ndarray
    pv_kwp: np.ndarray
    spot_p_kw: np.ndarray  # [L] nominal kW of each spot load

    def __len__(self) -> int:
        return len(self.load)


@dataclass
class Placement:
    """Where one device group's agents are: their households and injection nodes.

    ``household[i]`` index into :class:`HouseholdSites`; ``nodes[i]`` the node indices the device
    connects to (one, or three for a three-phase device), as a list of arrays.
    """

    household: np.ndarray
    nodes: list[np.ndarray] = field(default_factory=list)


def _bus(node_name: str) -> str:
    return node_name.rsplit(".", 1)[0]


def place_households(
    grid: Grid,
    households_per_kw: float,
    pv_share: float,
    pv_kwp_range: tuple[float, float],
    rng: np.random.Generator,
) -> HouseholdSites:
    """Households behind every spot load, spread over its branches; PV drawn with ``rng``.

    ``kw_scale`` is set to 1 here; :func:`calibrate_household_scale` fixes it from training data.
    """
    n_loads = len(grid.load_elements)
    spot_p_kw = np.zeros(n_loads)
    np.add.at(spot_p_kw, grid.load_index, grid.load_p_kw)
    loads, nodes = [], []
    for l in range(n_loads):
        branches = np.flatnonzero(grid.load_index == l)
        n_l = max(1, int(round(households_per_kw * spot_p_kw[l])))
        for k in range(n_l):
            branch = branches[k % len(branches)]
            loads.append(l)
            nodes.append(grid.load_node_a[branch])
    load = np.asarray(loads, dtype=np.int64)
    node = np.asarray(nodes, dtype=np.int64)
    has_pv = rng.random(len(load)) < pv_share
    pv_kwp = np.where(has_pv, rng.uniform(*pv_kwp_range, size=len(load)), 0.0)
    return HouseholdSites(
        load=load,
        node=node,
        bus=[_bus(grid.node_names[n]) for n in node],
        kw_scale=np.ones(len(load)),
        pv_kwp=pv_kwp,
        spot_p_kw=spot_p_kw,
    )


def calibrate_household_scale(
    households: HouseholdSites, household_kw_train: np.ndarray, peak_scale: float
) -> None:
    """Set ``kw_scale`` so each spot load's aggregate peak over the training days is
    ``peak_scale * P_l``. ``household_kw_train``: ``[days, H, T]`` of the *training* split."""
    n_loads = len(households.spot_p_kw)
    aggregate = np.zeros((household_kw_train.shape[0], n_loads, household_kw_train.shape[-1]))
    np.add.at(aggregate, (slice(None), households.load), household_kw_train)
    peak = aggregate.max(axis=(0, 2))
    factor = np.where(peak > 0, peak_scale * households.spot_p_kw / np.maximum(peak, 1e-9), 0.0)
    households.kw_scale = factor[households.load]


def place_devices(
    households: HouseholdSites,
    grid: Grid,
    count: int,
    three_phase: bool,
    taken: set[int],
    rng: np.random.Generator,
    explicit: list[str] | None,
    where: str,
    ungrounded_buses: set[str],
) -> Placement:
    """Choose ``count`` households for one device group (``taken`` = households already
    holding a device of this type; updated). ``explicit`` lists nodes ("67.2") or, for
    three-phase devices, buses ("67"). Errors name ``where`` (the YAML path)."""
    bus_phases: dict[str, list[int]] = {}
    for k, name in enumerate(grid.node_names):
        bus_phases.setdefault(_bus(name), []).append(k)

    def eligible(h: int) -> bool:
        bus = households.bus[h]
        if h in taken or bus in ungrounded_buses:
            return False
        return not three_phase or len(bus_phases[bus]) >= 3

    if explicit is not None:
        chosen = _explicit_households(households, grid, explicit, three_phase, eligible, where,
                                      bus_phases, ungrounded_buses)
    else:
        pool = [h for h in range(len(households)) if eligible(h)]
        if count > len(pool):
            kind = "three-phase " if three_phase else ""
            raise UserError(
                f"{where}.count: {count} {kind}devices requested but only {len(pool)} eligible "
                f"households exist (one device of a type per household"
                f"{', on three-phase buses' if three_phase else ''}); raise "
                "population.households_per_kw or lower the count"
            )
        chosen = rng.choice(np.asarray(pool), size=count, replace=False)
    taken.update(int(h) for h in chosen)
    nodes = []
    for h in chosen:
        bus = households.bus[h]
        nodes.append(np.asarray(bus_phases[bus][:3]) if three_phase else np.asarray([households.node[h]]))
    return Placement(household=np.asarray(chosen, dtype=np.int64), nodes=nodes)


def _explicit_households(households, grid, explicit, three_phase, eligible, where, bus_phases,
                         ungrounded_buses) -> list[int]:
    chosen = []
    for k, target in enumerate(explicit):
        target = str(target).lower()
        path = f"{where}.nodes[{k}]"
        if three_phase:
            if target not in bus_phases:
                raise UserError(f"{path}: bus {target!r} does not exist in the feeder")
            if len(bus_phases[target]) < 3:
                raise UserError(
                    f"{path}: a three-phase device cannot sit on bus {target!r}, which has only "
                    f"phases {[grid.node_names[n] for n in bus_phases[target]]}"
                )
            candidates = [h for h in range(len(households)) if households.bus[h] == target]
        else:
            if target not in grid.node_names:
                raise UserError(f"{path}: node {target!r} does not exist (use 'bus.phase')")
            node = grid.node_names.index(target)
            candidates = [h for h in range(len(households)) if households.node[h] == node]
        if _bus(target) in ungrounded_buses or target in ungrounded_buses:
            raise UserError(f"{path}: {target!r} is on an ungrounded bus; no wye device can sit there")
        free = [h for h in candidates if eligible(h) and h not in chosen]
        if not free:
            raise UserError(
                f"{path}: no free household at {target!r} (households there: {len(candidates)}; "
                "one device of a type per household)"
            )
        chosen.append(free[0])
    return chosen
