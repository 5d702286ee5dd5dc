"""Build everything a scenario names into an :class:`~gridflex.learning.environment.Environment`."""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from gridflex import __version__
from gridflex.network.constraints import current_monitor, ungrounded_buses, voltage_monitor
from gridflex.learning.environment import Environment, Fleet
from gridflex.errors import UserError
from gridflex.network.feeder import Feeder
from gridflex.network.grid_build import GridAssembler
from gridflex.fleet.population import calibrate_household_scale, place_devices, place_households
from gridflex.fleet.profiles import ProfileData
from gridflex.network.regulators import median_taps
from gridflex.runs.torch_device import resolve_device
from gridflex.scenario import LoadedScenario

DTYPES = {"float64": torch.float64, "float32": torch.float32}
SETTLED_SUFFIX = ".taps.json"
SETTLED_CACHE_DIR = Path("~/.cache/gridflex/taps")


@dataclass
class World:
    """A scenario, built once: feeder, grid assembler, profile data and two views of one
    environment: ``env`` steps with the scenario's ``solver`` (training), ``eval_env`` with its
    ``evaluation_solver`` (validation, targets, test); the same object when both solvers agree."""

    loaded: LoadedScenario
    feeder: Feeder
    assembler: GridAssembler
    data: ProfileData
    env: Environment
    eval_env: Environment
    settled: dict | None = None  # the settled-taps record (tap treatment ``settled``)


def build_world(loaded: LoadedScenario, registry: Any, pm: Any = None, device: torch.device | None = None,
                progress=None) -> World:
    """Feeder -> grid -> households (calibrated on training days) -> fleets -> environment, with
    the scenario's tap treatment (``settled`` taps computed on training days once, then cached;
    ``progress(str)`` is told when that happens)."""
    from gridflex.runs.feeder_cache import load_feeder

    cfg = loaded.config
    device = device or resolve_device(cfg.device)
    dtype = DTYPES[cfg.dtype]
    feeder = load_feeder(loaded.feeder_path(), taps=cfg.feeder.taps, registry_or_pm=pm)
    assembler = GridAssembler(feeder)
    grid = assembler.grid().with_load_model(cfg.feeder.load_model)
    refuse_fixed_injections(grid, loaded)
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
            households, grid, group.count, bool(model.three_phase),
            taken_by_type.setdefault(group.type, set()), np.random.default_rng([seed, 0x646576, i]),
            group.nodes, path, ungrounded,
        )
        fleets.append(Fleet(path, model, placement))

    def current_monitor_factory(branch_slices):
        return current_monitor(feeder, grid, branch_slices, cfg.limits.line_ampacity_scale)

    def environment(base_grid, treatment: str, solver_path: str) -> Environment:
        solver_cls = registry.get("solver", getattr(cfg, solver_path).type)
        solver_config = loaded.component_config(solver_path)

        def solver_factory(injection_nodes, taps=None):
            g = base_grid if taps is None else assembler.grid(taps).with_load_model(cfg.feeder.load_model)
            return solver_cls(g, solver_config, injection_nodes=injection_nodes, device=device, dtype=dtype)

        return Environment(
            base_grid, solver_factory, households, fleets, voltage_monitor(feeder, base_grid),
            current_monitor_factory, dt_h=cfg.data.dt_h, device=device, dtype=dtype,
            observe_voltage=cfg.environment.observe_voltage, feeder=feeder, tap_treatment=treatment,
            compile_steps=cfg.environment.compile,
        )

    treatment = cfg.feeder.tap_treatment
    if treatment != "frozen" and not feeder.regcontrols:
        raise UserError(
            f"feeder.tap_treatment: {treatment!r} needs regulators with RegControls, and the feeder "
            f"{loaded.feeder_path().name} has none; use tap_treatment: frozen")
    settled = None
    if treatment == "settled":
        # taps settle under the judging physics, the same whatever trains
        settled = settled_taps(loaded, feeder, environment(grid, "frozen", "evaluation_solver"),
                               data.split("train"), progress)
        grid = assembler.grid(settled["taps"]).with_load_model(cfg.feeder.load_model)
    env = environment(grid, treatment, "solver")
    same = (cfg.solver.type == cfg.evaluation_solver.type
            and loaded.component_config("solver") == loaded.component_config("evaluation_solver"))
    eval_env = env if same else environment(grid, treatment, "evaluation_solver")
    return World(loaded, feeder, assembler, data, env, eval_env, settled)


def refuse_fixed_injections(grid, loaded: LoadedScenario) -> None:
    """A learning scenario drives every load with household profiles (and ``feeder.load_mult``);
    elements whose power the file fixes (``status=fixed`` loads, generators, PV systems, storage)
    would be scaled with them, a silently different answer, so they are refused here."""
    fixed = grid.load_fixed
    if fixed is None or not fixed.any():
        return
    names = sorted(grid.load_elements[k] for k in np.flatnonzero(fixed))  # fixed: per element
    shown = ", ".join(names[:6]) + (f" and {len(names) - 6} more" if len(names) > 6 else "")
    raise UserError(
        f"feeder {loaded.feeder_path().name} has {len(names)} element(s) whose power the file fixes "
        f"({shown}): status=fixed loads or generators, PV systems and storage read as fixed "
        "injections. A scenario drives every load with household profiles and would scale these "
        "too, so they are not supported in scenarios yet: disable them (or set status=variable) in "
        "a copy of the feeder; `gridflex pf` solves the feeder as the file defines it")


def settled_taps_key(loaded: LoadedScenario, feeder: Feeder) -> str:
    """sha256 of what settled taps depend on: the feeder's contents and the scenario's feeder,
    data, solvers, population, devices, seed and dtype (not its learner, limits or target)."""
    parts = loaded.config.model_dump(mode="json", include={"seed", "dtype", "feeder", "data", "solver",
                                                           "evaluation_solver", "population", "devices"})
    text = json.dumps({"scenario": parts, "feeder": feeder.provenance}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def settled_taps_paths(loaded: LoadedScenario, key: str) -> list[Path]:
    """Where a scenario's settled-taps record may live, in lookup order: beside the scenario
    (``<name>.taps.json``, committed with shipped scenarios; written only when absent), else the
    user cache (one file per key)."""
    return [loaded.source.parent / f"{loaded.config.name}{SETTLED_SUFFIX}",
            SETTLED_CACHE_DIR.expanduser() / f"{loaded.config.name}.{key[:16]}{SETTLED_SUFFIX}"]


def settled_taps(loaded: LoadedScenario, feeder: Feeder, env: Environment, train_days, progress=None,
                 batch_days: int = 64) -> dict:
    """The ``settled`` tap treatment's taps: each regulator's median position under the tap
    controller over ``no_control`` on **all training days** (never validation or test days),
    starting every day at the base taps. Cached with provenance (a JSON record keyed by
    :func:`settled_taps_key`, see :func:`settled_taps_paths`); returns the record
    (``{"taps": {name: position}, ...}``)."""
    key = settled_taps_key(loaded, feeder)
    for path in settled_taps_paths(loaded, key):
        if path.is_file():
            try:
                record = json.loads(path.read_text())
            except (OSError, ValueError):
                continue
            if record.get("key") == key:
                return record
    if progress is not None:
        progress(f"settling regulator taps: no_control with the tap controller on {len(train_days)} "
                 "training days (once; cached)")
    t0 = time.perf_counter()
    fleets = env.fleets
    histories = []
    with torch.no_grad():
        for batch in train_days.batches(batch_days):
            rollout = env.rollout(env.exogenous(batch), lambda f, t, o, s, i: fleets[f].model.baseline_u("no_control", s, i),
                                  regulate=True)
            histories.append(rollout.taps)
    history = np.concatenate(histories, 0)  # [days, T, n_reg]
    names = [rc.transformer for rc in feeder.regcontrols]
    taps = median_taps(history, names)
    record = {
        "key": key, "scenario": loaded.config.name, "taps": taps, "base_taps": env.base_taps,
        "rule": "median over all training days and steps of no_control with the tap controller",
        "n_training_days": int(history.shape[0]), "steps_per_day": int(history.shape[1]),
        "tap_range": {n: [int(history[..., k].min()), int(history[..., k].max())] for k, n in enumerate(names)},
        "seconds": round(time.perf_counter() - t0, 2), "gridflex_version": __version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    beside, user = settled_taps_paths(loaded, key)
    # never overwrite a record beside the scenario (a committed one, or another candidate's)
    for path in ([beside] if not beside.exists() else []) + [user]:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".tmp")
            tmp.write_text(json.dumps(record, indent=2) + "\n")
            os.replace(tmp, path)
            break
        except OSError:
            continue
    return record

