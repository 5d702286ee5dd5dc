"""What is exported: a ``gridflex run`` folder's scenario, world and trained deterministic policies.

:func:`load_trained_run` checks the folder (one paragraph, exit 2, for anything missing), rebuilds
the world from its ``scenario.resolved.yaml`` (the scenario's sha256 must match ``metrics.json``),
builds the learner and loads ``policy.pt`` with ``torch.load(..., weights_only=True)``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from gridflex.deploy.contract import read_json
from gridflex.errors import UserError
from gridflex.learning.policies import DeployablePolicy
from gridflex.learning.crash_safety import read_policy
from gridflex.learning.training import POLICY
from gridflex.plugins.contracts import Learner
from gridflex.scenario import LoadedScenario, read_yaml_mapping, resolve_feeder_file, validate_mapping

RESOLVED = "scenario.resolved.yaml"
METRICS = "metrics.json"


@dataclass
class TrainedRun:
    """A run folder, rebuilt: the world, the learner in its final (selected) state, its
    per-fleet :class:`DeployablePolicy` and the run's ``metrics.json``."""

    run_dir: Path
    loaded: LoadedScenario
    world: Any
    learner: Any
    policies: list[DeployablePolicy]
    metrics: dict


def load_run_scenario(run_dir: Path, registry) -> LoadedScenario:
    """The run's resolved scenario. Relative paths in it resolve against the folder of the scenario
    the run was started from (named in ``plan.txt``) when that still exists, else the run folder."""
    path = run_dir / RESOLVED
    if not path.is_file():
        raise UserError(f"{run_dir} holds no {RESOLVED}: RUN_DIR must be the output folder of a "
                        "finished `gridflex run` (it writes scenario.resolved.yaml, policy.pt and "
                        "metrics.json there)")
    data = read_yaml_mapping(path)
    source = path
    feeder = (data.get("feeder") or {}).get("file") if isinstance(data.get("feeder"), dict) else None
    plan = run_dir / "plan.txt"
    if isinstance(feeder, str) and not resolve_feeder_file(feeder, run_dir).exists() and plan.is_file():
        first = plan.read_text(errors="replace").splitlines()[:1]
        if first and "(" in first[0] and first[0].rstrip().endswith(")"):
            original = Path(first[0].rsplit("(", 1)[1].rstrip()[:-1])
            if original.parent.is_dir():  # relative paths resolve against the original's folder
                source = original.parent / RESOLVED
    return validate_mapping(data, source, registry)


def load_trained_run(run_dir: Path, *, progress=None) -> TrainedRun:
    """Rebuild ``run_dir``'s world and trained learner (see module docstring)."""
    from gridflex.plugins.registry import load_registry
    from gridflex.runs.world import build_world

    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise UserError(f"run folder {run_dir} does not exist" + (" (it is a file)" if run_dir.exists() else "")
                        + "; give the output folder of a finished `gridflex run --out DIR`")
    missing = [n for n in (RESOLVED, POLICY, METRICS) if not (run_dir / n).is_file()]
    if missing:
        raise UserError(f"{run_dir} is not a finished run of a learner that trains: it lacks "
                        f"{', '.join(missing)}; export needs scenario.resolved.yaml, policy.pt and "
                        "metrics.json (written when `gridflex run` ends; an interrupted run can be "
                        "finished with --resume)")
    metrics = read_json(run_dir / METRICS, "re-run or --resume the run to rewrite it")
    pm, registry = load_registry()
    loaded = load_run_scenario(run_dir, registry)
    if loaded.config.learner is None:
        raise UserError(f"{run_dir / RESOLVED} names no learner, so there is no policy to export")
    if metrics.get("scenario_sha256") not in (None, loaded.sha256()):
        raise UserError(f"{run_dir}: the scenario's sha256 ({loaded.sha256()[:12]}) differs from the one "
                        f"in metrics.json ({str(metrics.get('scenario_sha256'))[:12]}): the run was "
                        "written by another gridflex version (whose scenario defaults differ) or the "
                        "folder mixes two runs; re-run it with this version")
    learner_cls = registry.get("learner", loaded.config.learner.type)
    state = read_policy(run_dir / POLICY, map_location="cpu")  # before the (slower) world build
    world = build_world(loaded, registry, pm, torch.device("cpu"), progress=progress)
    learner = learner_cls(loaded.component_config("learner"), world.env, seed=_learner_seed(metrics, loaded))
    if type(learner).deployable_policies is Learner.deployable_policies:  # the capability is declared
        raise UserError(f"learner {loaded.config.learner.type!r} has no neural policies to export "
                        "(only learners that expose deployable_policies(), e.g. gradmap, gradmap_e1, "
                        "ssl_penalty, ssl_pd and ippo, can be exported)")
    try:
        learner.load_state_dict(state["learner"])
    except (KeyError, RuntimeError, ValueError, TypeError) as exc:
        raise UserError(f"{run_dir / POLICY} does not fit the run's scenario and learner "
                        f"({type(exc).__name__}: {str(exc).splitlines()[0][:200]}); it belongs to "
                        "another run; re-run this one") from None
    return TrainedRun(run_dir, loaded, world, learner, list(learner.deployable_policies()), metrics)


def _learner_seed(metrics: dict, loaded: LoadedScenario) -> int:
    seeds = metrics.get("seeds") or [loaded.config.seed]
    return int(seeds[0])
