"""Computing a scenario's target sidecar (``gridflex targets SCENARIO``): C_no_control and C_ref
on the validation days, judged like validation and test (docs/gradmap.md, "Target sidecar")."""

from __future__ import annotations

import json
import time

import torch

from gridflex.learning.metrics import evaluation_metrics
from gridflex.learning.targets import write_target_sidecar
from gridflex.learning.training import validation_days_exogenous
from gridflex.runs.world import build_world
from gridflex.scenario import LoadedScenario


def compute_targets(loaded: LoadedScenario, registry, pm=None, *, reference: bool = True,
                    command: str = "", progress=print) -> dict:
    """C_no_control and C_ref on the scenario's validation days, written to the sidecar.

    The validation days are the trainer's (:func:`gridflex.learning.training.validation_days_exogenous`:
    ``data.n_validation_days`` evenly spaced over the validation split); both controllers are
    rolled out with the scenario's solver under its tap treatment and scored by
    :func:`gridflex.learning.metrics.evaluation_metrics` with the evaluation limits ``v_limits_pu``.
    The centralised ``reference`` plans with perfect foresight (its :meth:`prepare`), with the
    scenario's voltage limits and line-limit switch. ``reference=False`` writes ``c_ref: null``.
    Returns the document written (plus ``"path"``).
    """
    cfg = loaded.config
    started = time.perf_counter()
    say = progress
    progress = lambda line: say(f"{line} (elapsed {time.perf_counter() - started:.0f} s)")  # noqa: E731
    world = build_world(loaded, registry, pm, progress=progress)
    env = world.eval_env  # targets are judged like validation and test: the evaluation solver
    exo = validation_days_exogenous(world)
    limits = tuple(cfg.limits.v_limits_pu)

    def on_day(b: int, line: str) -> None:  # a reference day of IEEE 123 x 1,000 agents takes minutes
        progress(f"reference day {b + 1}/{exo.batch}: {line}")

    def score(learner) -> tuple[dict, float]:
        t0 = time.perf_counter()
        learner.prepare(exo, on_day=on_day)
        with torch.no_grad(), env.counters.paused():
            rollout = env.rollout(exo, learner.act, voltage_feedback=type(learner).voltage_feedback)
            return evaluation_metrics(env, rollout, limits, cfg.limits.line_limits), time.perf_counter() - t0

    nc_cls = registry.get("learner", "no_control")
    nc_metrics, _ = score(nc_cls(nc_cls.Config(), env, seed=cfg.seed))
    progress(f"no_control: {nc_metrics['cost_per_day']:.2f} /day, violation rate "
             f"{nc_metrics['voltage_violation_rate']:.4f} on {exo.batch} validation days")
    extra: dict = {"tap_treatment": env.tap_treatment, "taps": env.base_taps,
                   "no_control_violation_rate": nc_metrics["voltage_violation_rate"],
                   "no_control_line_overload_rate": nc_metrics["line_overload_rate"]}
    c_ref = None
    if reference:
        ref_cls = registry.get("learner", "reference")
        ref_cfg = ref_cls.Config(v_limits_pu=limits, line_limits=cfg.limits.line_limits)
        ref = ref_cls(ref_cfg, env, seed=cfg.seed)
        ref_metrics, seconds = score(ref)
        c_ref = ref_metrics["cost_per_day"]
        extras = ref.report()
        extra.update({
            "reference_ac_violation_rate": ref_metrics["voltage_violation_rate"],
            "reference_line_overload_rate": ref_metrics["line_overload_rate"],
            "reference_discomfort_degC_h": ref_metrics["discomfort_degC_h"],
            "reference_iterations_per_day": extras["iterations_per_day"],
            "reference_solve_seconds_per_day": extras["solve_seconds_per_day"],
            "reference_seconds_total": seconds,
        })
        progress(f"reference: {c_ref:.2f} /day, violation rate {ref_metrics['voltage_violation_rate']:.4f}, "
                 f"{extras['iterations_per_day']:.1f} iterations and {extras['solve_seconds_per_day']:.1f} s "
                 f"solve per day")
    else:
        extra["reference_ac_violation_rate"] = None
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    path = write_target_sidecar(loaded, float(nc_metrics["cost_per_day"]), None if c_ref is None else float(c_ref),
                                n_validation_days=int(exo.batch), computed=stamp, command=command,
                                reference="reference", **extra)
    return {**json.loads(path.read_text()), "path": str(path)}
