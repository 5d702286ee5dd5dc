"""Evaluate a controller on held-out days with the exact AC solver: the scenario's tap treatment,
and with the tap controller active (``test_regulated``)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from gridflex import __version__
from gridflex.learning.counters import WorkCounters
from gridflex.learning.environment import Rollout
from gridflex.learning.metrics import evaluation_metrics, monitored_nodes_table
from gridflex.fleet.profiles import DaySet, load_test_days
from gridflex.runs.world import World


@dataclass
class Evaluation:
    """Metrics of one controller on one set of days: ``metrics`` under the scenario's tap
    treatment (``test`` in metrics.json), ``metrics_regulated`` with the tap controller."""

    metrics: dict
    metrics_regulated: dict | None
    rollout: Rollout
    rollout_regulated: Rollout | None


def held_out_days(world: World) -> DaySet:
    """Evaluation only: the held-out test split (``evaluate`` spreads ``data.n_test_days`` over it)."""
    cfg = world.loaded.config
    pop_seed = cfg.seed if cfg.population.seed is None else cfg.population.seed
    days = load_test_days(dt_h=cfg.data.dt_h, n_agents=len(world.env.households), seed=pop_seed)
    return days


def evaluate(
    world: World, learner, days: DaySet, n_days: int, regulated: bool, *, on_day=None
) -> Evaluation:
    """Roll out ``learner`` (its :meth:`act`) on ``n_days`` days spread over ``days`` under the
    scenario's tap treatment (``metrics``), and with the tap controller active when ``regulated``
    (``metrics_regulated``; the same rollout when the treatment is ``regulated``), in the
    evaluation environment (the scenario's ``evaluation_solver``). Judging is not training work:
    no counter moves. ``on_day`` goes to a planner's :meth:`prepare`."""
    env = world.eval_env
    cfg = world.loaded.config
    positions = np.linspace(0, len(days) - 1, num=min(n_days, len(days))).round().astype(int)
    exo = env.exogenous(days.get(np.unique(positions)))
    limits = tuple(cfg.limits.v_limits_pu)
    act, voltage_feedback = learner.act, type(learner).voltage_feedback
    learner.prepare(exo, on_day=on_day)
    with torch.no_grad(), env.counters.paused():
        rollout = env.rollout(exo, act, voltage_feedback=voltage_feedback)  # the scenario's tap treatment
        metrics = evaluation_metrics(env, rollout, limits, cfg.limits.line_limits)
        regulated_rollout, regulated_metrics = None, None
        if regulated and env.tap_treatment == "regulated":
            regulated_rollout, regulated_metrics = rollout, metrics
        elif regulated and world.feeder.regcontrols:
            regulated_rollout = env.rollout(exo, act, regulate=True, voltage_feedback=voltage_feedback)
            regulated_metrics = evaluation_metrics(env, regulated_rollout, limits, cfg.limits.line_limits)
    return Evaluation(metrics, regulated_metrics, rollout, regulated_rollout)


def metrics_document(
    world: World,
    learner_name: str,
    evaluation: Evaluation,
    *,
    seeds: list[int],
    train_seconds: float = 0.0,
    counters: WorkCounters | None = None,
) -> dict:
    """The ``metrics.json`` contract of one (learner, seed) run; ``counters``: its training work
    (none for a controller that does not train)."""
    cfg = world.loaded.config
    work = (counters or WorkCounters()).as_dict()
    return {
        "scenario": cfg.name,
        "scenario_sha256": world.loaded.sha256(),
        "learner": learner_name,
        "seeds": seeds,
        "device": str(world.env.device),
        "dtype": cfg.dtype,
        "tap_treatment": world.env.tap_treatment,
        "base_taps": world.env.base_taps,
        "gridflex_version": __version__,
        "n_test_days": evaluation.metrics["n_days"],
        "train_seconds": train_seconds,
        **work,
        "solver": cfg.solver.type,
        "evaluation_solver": cfg.evaluation_solver.type,
        "test": evaluation.metrics,
        "test_regulated": evaluation.metrics_regulated or {},
    }


def write_run_outputs(out_dir: Path, world: World, document: dict, evaluation: Evaluation) -> list[Path]:
    """metrics.json, the monitored-node list and the test-day schedules (for ``gridflex verify``)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    metrics_path = out_dir / "metrics.json"
    metrics_path.write_text(json.dumps(document, indent=2))
    nodes_path = out_dir / "monitored_nodes.txt"
    nodes_path.write_text(monitored_nodes_table(world.eval_env))
    schedule_path = out_dir / "schedules.npz"
    save_schedules(schedule_path, world, evaluation)
    return [metrics_path, nodes_path, schedule_path]


def save_schedules(path: Path, world: World, evaluation: Evaluation) -> None:
    """Test-day injections under the scenario's tap treatment: everything needed to replay the
    days in another engine.

    ``load_scale[B, T, L]`` (per spot load), ``p_kw/q_kvar[B, T, n_inj]`` net consumption at
    ``injection_nodes``, the fixed ``taps`` (frozen or settled; ``taps_per_step [B, T, n_reg]``
    under the regulated treatment), and the evaluation solver's ``vm_pu[B, T, n]``.

    For the feeder map of ``gridflex report`` (:func:`feeder_map_arrays`): ``bus_names[n_bus]``
    with ``bus_xy[n_bus, 2]`` (the feeder's coordinates in its own units, NaN where it gives none),
    ``branch_names/branch_kind/branch_bus_a/branch_bus_b[n_br]`` (a branch's first conductor's bus
    at terminal 1 and at terminal 2) and ``branch_max_loading[n_br]``, the largest ``|I| / I_rated``
    of its rated phase conductors over the test days and steps (NaN: not rated). Files written
    before these keys existed lack them; readers must cope.
    """
    env = world.eval_env
    rollout = evaluation.rollout
    arrays = {
        "load_scale": rollout.exogenous.load_scale.cpu().numpy(),
        "p_kw": rollout.p_injection_kw.detach().cpu().numpy(),
        "q_kvar": rollout.q_injection_kvar.detach().cpu().numpy(),
        "injection_nodes": np.array([env.grid.node_names[n] for n in env.injection_nodes]),
        "load_elements": np.array(env.grid.load_elements),
        "node_names": np.array(env.grid.node_names),
        "v_base_v": env.grid.v_base_ln_v,
        "monitor_node_a": np.array([env.grid.node_names[k] for k in env.voltage_monitor.node_a]),
        "monitor_node_b": np.array([env.grid.node_names[k] if k >= 0 else "" for k in env.voltage_monitor.node_b]),
        "v_limits_pu": np.array(world.loaded.config.limits.v_limits_pu),
        "source_power_kw": rollout.flow.source_power_kw.cpu().numpy(),
        "vm_pu": rollout.flow.vm_pu.cpu().numpy(),
        "dt_h": np.array(rollout.exogenous.dt_h),
        "price_per_kwh": rollout.exogenous.price_per_kwh.cpu().numpy(),
        "taps_names": np.array(list(env.base_taps)),
        "taps": np.array(list(env.base_taps.values()), dtype=np.int64),
        "tap_treatment": np.array(env.tap_treatment),
        "feeder_file": np.array(str(world.loaded.feeder_path())),
        "taps_mode": np.array(world.loaded.config.feeder.taps),
        "load_model": np.array(world.loaded.config.feeder.load_model),
    }
    if rollout.taps is not None:  # regulated treatment: the taps of every day-step [B, T, n_reg]
        arrays["taps_per_step"] = rollout.taps
    arrays.update(feeder_map_arrays(env, rollout))
    np.savez_compressed(path, **arrays)


def feeder_map_arrays(env, rollout: Rollout) -> dict[str, np.ndarray]:
    """What a feeder map needs (see :func:`save_schedules`): bus coordinates, branch endpoints
    and each branch's largest loading ``|I| / I_rated`` on the rolled-out days (NaN: unrated, or
    no converged step)."""
    grid = env.grid
    buses = sorted({name.rsplit(".", 1)[0] for name in grid.node_names})
    xy = np.array([grid.bus_coords.get(b, (np.nan, np.nan)) for b in buses], dtype=float).reshape(-1, 2)
    bus_of = [name.rsplit(".", 1)[0] for name in grid.node_names]

    def terminal_bus(branch, terminal: int) -> str:
        m = len(branch.terminal_nodes) // max(branch.n_terminals, 1)
        nodes = [int(k) for k in branch.terminal_nodes[terminal * m:(terminal + 1) * m] if k >= 0]
        return bus_of[nodes[0]] if nodes else ""

    names = [b.name for b in grid.branches]
    loading = np.full(len(names), np.nan)
    monitor = env.current_monitor
    if len(monitor):
        with torch.no_grad():
            per_conductor = monitor.loading(rollout.flow.branch_currents_a).real.cpu().numpy()  # [B, T, R]
        # NaN-ignoring maximum over days and steps (NaN only where no step gave a finite current)
        worst = np.fmax.reduce(per_conductor.reshape(-1, per_conductor.shape[-1]), axis=0)
        index = {name: k for k, name in enumerate(names)}
        for label, value in zip(monitor.names, worst):
            k = index[label.rsplit(".", 1)[0]]
            loading[k] = np.fmax(loading[k], value)
    return {
        "bus_names": np.array(buses),
        "bus_xy": xy,
        "branch_names": np.array(names),
        "branch_kind": np.array([b.kind for b in grid.branches]),
        "branch_bus_a": np.array([terminal_bus(b, 0) for b in grid.branches]),
        "branch_bus_b": np.array([terminal_bus(b, 1) if b.n_terminals > 1 else "" for b in grid.branches]),
        "branch_max_loading": loading,
    }


def validation_days(world: World):
    """The validation split (training-side data: never test days)."""
    return world.data.split("validation")
