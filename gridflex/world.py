"""Build everything a scenario names into an :class:`~gridflex.env.Environment`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from gridflex.constraints import current_monitor, ungrounded_buses, voltage_monitor
from gridflex.env import Environment, Fleet
from gridflex.feeder import Feeder
from gridflex.grid_build import GridAssembler
from gridflex.population import calibrate_household_scale, place_devices, place_households
from gridflex.profiles import ProfileData
from gridflex.scenario import LoadedScenario

DTYPES = {"float64": torch.float64, "float32": torch.float32}


@dataclass
class World:
    """A scenario, built: feeder, grid assembler, profile data and the environment."""

    loaded: LoadedScenario
    feeder: Feeder
    assembler: GridAssembler
    data: ProfileData
    env: Environment


def build_world(loaded: LoadedScenario, registry: Any, pm: Any = None, device: torch.device | None = None) -> World:
    """Feeder -> grid -> households (calibrated on training days) -> fleets -> environment."""
    from gridflex.feeder_cache import load_feeder
    from gridflex.run import resolve_device

    cfg = loaded.config
    device = device or resolve_device(cfg.device)
    dtype = DTYPES[cfg.dtype]
    feeder = load_feeder(loaded.feeder_path(), taps=cfg.feeder.taps, registry_or_pm=pm)
    assembler = GridAssembler(feeder)
    grid = assembler.grid().with_load_model(cfg.feeder.load_model)
    pop = cfg.population
    pop_seed = cfg.seed if pop.seed is None else pop.seed
    rng = np.random.default_rng([pop_seed, 0x706F70])
    households = place_households(grid, pop.households_per_kw, pop.pv_share, pop.pv_kwp, rng)
    data = ProfileData.load(dt_h=cfg.data.dt_h, n_agents=len(households), seed=pop_seed)
    train = data.split("train")
    train_kw = np.concatenate([b.household_kw for b in train.batches(64)], axis=0)
    calibrate_household_scale(households, train_kw, pop.peak_scale * cfg.feeder.load_mult)

    ungrounded = ungrounded_buses(feeder)
    fleets: list[Fleet] = []
    taken_by_type: dict[str, set[int]] = {}
    for i, group in enumerate(cfg.devices):
        path = f"devices[{i}]"
        cls = registry.get("device", group.type)
        seed = cfg.seed if group.seed is None else group.seed
        generator = torch.Generator().manual_seed(int(seed) * 1000 + i)
        model = cls(loaded.component_config(path), group.count, generator,
                    dt_h=cfg.data.dt_h, device=device, dtype=dtype)
        placement = place_devices(
            households, grid, group.count, bool(getattr(model, "three_phase", False)),
            taken_by_type.setdefault(group.type, set()), np.random.default_rng([seed, 0x646576, i]),
            group.nodes, path, ungrounded,
        )
        fleets.append(Fleet(path, model, placement))

    solver_cls = registry.get("solver", cfg.solver.type)
    solver_config = loaded.component_config("solver")

    def solver_factory(injection_nodes, taps=None):
        g = grid if taps is None else assembler.grid(taps).with_load_model(cfg.feeder.load_model)
        return solver_cls(g, solver_config, injection_nodes=injection_nodes, device=device)

    def current_monitor_factory(branch_slices):
        return current_monitor(feeder, grid, branch_slices, cfg.limits.line_ampacity_scale)

    env = Environment(
        grid, solver_factory, households, fleets, voltage_monitor(feeder, grid),
        current_monitor_factory, dt_h=cfg.data.dt_h, device=device, dtype=dtype,
        observe_voltage=cfg.environment.observe_voltage,
    )
    return World(loaded, feeder, assembler, data, env)

