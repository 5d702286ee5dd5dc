"""One execution of a scenario: build everything it names, then (with a learner) train and evaluate."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
import yaml

from gridflex.errors import UserError
from gridflex.learning.targets import read_target, violation_only_line
from gridflex.learning.training import CHECKPOINT, RunInfo, Trainer, TrainingResult, read_checkpoint
from gridflex.progress import Progress
from gridflex.runs.evaluate import evaluate, held_out_days, metrics_document, write_run_outputs
from gridflex.runs.launch import shard_world
from gridflex.runs.torch_device import resolve_device
from gridflex.runs.world import World, build_world
from gridflex.scenario import LoadedScenario


# ------------------------------------------------------------------------------------------------
# Run folders: what a run writes, when --out may be (re)used, --resume and --force
# ------------------------------------------------------------------------------------------------

RESOLVED = "scenario.resolved.yaml"
#: Files and folders a ``gridflex run`` writes into its --out folder (``--force`` removes these).
RUN_FILES = ("metrics.json", "history.csv", "history.csv.tmp", "checkpoint.pt", "checkpoint.pt.tmp",
             "policy.pt", "policy.pt.tmp", "schedules.npz", "monitored_nodes.txt",
             "learner_extras.json", RESOLVED, "plan.txt")
RUN_DIRS = ("baselines", "plots")
#: Keys of the resolved scenario that may change when a run is resumed: the budget only.
RESUME_FREE_KEYS = ("learner.params.budget_seconds", "learner.params.budget_iterations")
RESUME_RULE = ("on --resume only learner.params.budget_seconds and learner.params.budget_iterations "
               "may differ from the run folder's scenario.resolved.yaml (to extend or shorten the "
               "budget); every other key shapes what is trained and must match")


def _flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for key, item in value.items():
            out.update(_flatten(item, f"{prefix}.{key}" if prefix else str(key)))
        return out or {prefix: {}}
    if isinstance(value, list) and value and any(isinstance(v, (dict, list)) for v in value):
        out = {}
        for i, item in enumerate(value):
            out.update(_flatten(item, f"{prefix}[{i}]"))
        return out
    return {prefix: value}


def scenario_differences(old: dict, new: dict, free: tuple[str, ...] = RESUME_FREE_KEYS) -> list[str]:
    """Dotted keys (``devices[0].count``) whose values differ between two resolved scenarios,
    except ``free`` ones, each as ``key (run folder: X, now: Y)``."""
    a, b = _flatten(old), _flatten(new)
    missing = object()
    diffs = []
    for key in sorted(set(a) | set(b)):
        if key in free:
            continue
        x, y = a.get(key, missing), b.get(key, missing)
        if x != y:
            show = lambda v: "absent" if v is missing else json.dumps(v)  # noqa: E731
            diffs.append(f"{key} (run folder: {show(x)}, now: {show(y)})")
    return diffs


def _resolved_dict(loaded: LoadedScenario) -> dict:
    """The resolved scenario exactly as :meth:`RunPlan.write` stores it (after a YAML round trip)."""
    return yaml.safe_load(yaml.safe_dump(loaded.config.model_dump(mode="json"), sort_keys=False))


def check_resume(loaded: LoadedScenario, out_dir: Path) -> dict:
    """Refuse (:class:`UserError`) to resume ``out_dir`` unless it holds a readable checkpoint of
    the same training configuration (:data:`RESUME_RULE`); returns the checkpoint. Reads only."""
    if not out_dir.is_dir():
        raise UserError(f"--resume: run folder {out_dir} does not exist"
                        + (" (it is a file)" if out_dir.exists() else "")
                        + "; --out must name the folder of an earlier `gridflex run --out` to continue")
    if not (out_dir / CHECKPOINT).is_file():
        raise UserError(f"--resume: {out_dir} holds no {CHECKPOINT}, so there is nothing to continue; "
                        "give --out the folder of a run that trained (it writes a checkpoint at every "
                        "validation point), or drop --resume to start a new run")
    resolved = out_dir / RESOLVED
    if not resolved.is_file():
        raise UserError(f"--resume: {out_dir} has {CHECKPOINT} but no {RESOLVED}, so gridflex cannot "
                        "check that the scenario is the one it was trained with; restore the file or "
                        "start over with --force")
    try:
        old = yaml.safe_load(resolved.read_text())
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise UserError(f"--resume: {resolved} is not readable YAML ({exc.__class__.__name__}); "
                        "restore it or start over with --force") from None
    diffs = scenario_differences(old if isinstance(old, dict) else {}, _resolved_dict(loaded))
    if diffs:
        raise UserError(f"--resume: the scenario differs from the one {out_dir} was trained with in "
                        f"{len(diffs)} training-relevant key(s): {'; '.join(diffs)}. Rule: {RESUME_RULE}. "
                        "Nothing was changed; use the same scenario and overrides, or another --out "
                        "(or --force to replace this run)")
    return read_checkpoint(out_dir / CHECKPOINT, map_location="cpu")


def existing_run_outputs(out_dir: Path) -> list[str]:
    """Names of the run outputs that ``out_dir`` already holds (see :data:`RUN_FILES`)."""
    if not out_dir.is_dir():
        return []
    return [name for name in RUN_FILES + RUN_DIRS if (out_dir / name).exists()]


def clear_run_outputs(out_dir: Path) -> list[str]:
    """Remove a previous run's outputs from ``out_dir`` (only the names a run writes); returns them."""
    import shutil

    removed = existing_run_outputs(out_dir)
    for name in removed:
        path = out_dir / name
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()
    return removed


@dataclass
class RunPlan:
    """A scenario's world, built once, with its base case and a human-readable description."""

    world: World
    device: torch.device
    base_case: Any  # PowerFlowResult of every load at feeder.load_mult, no devices (evaluation solver)
    lines: list[str] = field(default_factory=list)

    @property
    def loaded(self) -> LoadedScenario:
        return self.world.loaded

    def describe(self) -> str:
        return "\n".join(self.lines)

    def write(self, out_dir: Path) -> list[Path]:
        """Write the resolved scenario and the plan into ``out_dir`` (created if needed)."""
        out_dir.mkdir(parents=True, exist_ok=True)
        resolved = out_dir / RESOLVED
        resolved.write_text(
            yaml.safe_dump(self.loaded.config.model_dump(mode="json"), sort_keys=False)
        )
        plan = out_dir / "plan.txt"
        plan.write_text(self.describe() + "\n")
        return [resolved, plan]


def plan_run(loaded: LoadedScenario, registry: Any, pm: Any = None, device: torch.device | None = None,
             progress: Callable[[str], None] | None = None) -> RunPlan:
    """Build the scenario's world (once: feeder, grid, fleet, solvers, environment) and solve its
    base case with the evaluation solver."""
    cfg = loaded.config
    device = device or resolve_device(cfg.device)
    t0 = time.perf_counter()
    world = build_world(loaded, registry, pm, device, progress=progress)
    env = world.eval_env
    load_scale = torch.full((len(env.grid.load_elements),), cfg.feeder.load_mult, dtype=env.dtype,
                            device=device)
    with torch.no_grad(), env.counters.paused():
        base = env.solver.solve(load_scale=load_scale)
    elapsed = time.perf_counter() - t0
    grid = env.grid
    solvers = f"{cfg.solver.type} {loaded.component_config('solver').model_dump()}"
    if world.eval_env is not world.env:
        solvers += (f"; judged by {cfg.evaluation_solver.type} "
                    f"{loaded.component_config('evaluation_solver').model_dump()}")
    lines = [
        f"scenario   {cfg.name}  ({loaded.source})",
        f"sha256     {loaded.sha256()}",
        f"device     {device}, {cfg.dtype}",
        f"feeder     {loaded.feeder_path()}  (base taps: {cfg.feeder.taps}, tap treatment: "
        f"{cfg.feeder.tap_treatment}, "
        f"loads: {cfg.feeder.load_model}, load_mult {cfg.feeder.load_mult})",
        f"grid       {grid.n_nodes} nodes, {len(grid.branches)} branches, "
        f"{len(grid.load_elements)} loads",
        f"solver     {solvers}",
        "base case  converged={} iterations={} source {:.1f} kW {:.1f} kvar, losses {:.2f} kW, "
        "|V| {:.4f}-{:.4f} pu  ({:.2f} s incl. build)".format(
            bool(base.converged.all()),
            int(base.iterations.max()),
            float(base.source_power_kw),
            float(base.source_power_kvar),
            float(base.losses_kw),
            float(base.vm_pu.min()),
            float(base.vm_pu.max()),
            elapsed,
        ),
    ]
    for i, group in enumerate(cfg.devices):
        lines.append(f"devices[{i}] {group.count} x {group.type} {group.params}")
    if not cfg.devices:
        lines.append("devices    none")
    if cfg.learner is None:
        lines.append("learner    none configured: stopping after the plan")
    else:
        lines.append(f"learner    {cfg.learner.type} {cfg.learner.params}")
    return RunPlan(world, device, base, lines)


def default_out_dir(name: str) -> Path:
    """``runs/<scenario name>/<UTC stamp>`` under the current folder."""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    return Path("runs") / name / stamp


@dataclass
class RunResult:
    """What one run produced, in memory (the same as its files).

    ``documents``: ``metrics.json`` per controller, the scenario's learner first, then the
    baselines evaluated beside it; ``training``: the learner's
    :class:`~gridflex.learning.training.TrainingResult` (history rows in memory) or ``None`` for a
    controller that does not train.
    """

    out_dir: Path
    learner: str
    documents: dict[str, dict]
    training: TrainingResult | None = None

    @property
    def metrics(self) -> dict:
        """The learner's ``metrics.json``."""
        return self.documents[self.learner]

    @property
    def history(self) -> list[dict]:
        """The validation rows of ``history.csv`` (empty for a controller that does not train)."""
        return [] if self.training is None else self.training.history


def execute_run(loaded: LoadedScenario, registry: Any, pm: Any, out_dir: Path, device=None, *,
                learner_seed: int | None = None, references: bool = True, progress: bool = True,
                resume: bool = False, world: World | None = None, ranks=None) -> RunResult:
    """Build the world (unless ``world``, fresh from :func:`plan_run`, is given), run the
    scenario's learner (training if it ``trains``, with :class:`~gridflex.learning.training.Trainer`),
    evaluate it on the test days beside every ``baseline`` learner (unless ``references=False``),
    write ``out_dir`` and return the :class:`RunResult`. ``learner_seed`` (default: the scenario
    seed) seeds the learner only, so runs with different learner seeds share one world
    (``gridflex compare``). ``ranks`` (:class:`~gridflex.learning.distributed.Ranks`, under
    torchrun): every rank calls this with the same world, steps its own agents
    (:func:`~gridflex.runs.launch.shard_world`) and returns the same result; rank 0 writes."""
    cfg = loaded.config
    seed = cfg.seed if learner_seed is None else learner_seed
    say = (lambda line: print(line, file=sys.stderr, flush=True)) if progress else None
    if world is None:
        world = build_world(loaded, registry, pm, device, progress=say)
    elif any(world.env.counters.as_dict().values()):
        raise ValueError("execute_run needs a fresh world: this one has already counted training work")
    writes = ranks is None or ranks.is_main
    if ranks is not None:
        world, progress = shard_world(world, ranks), progress and ranks.is_main
    days = held_out_days(world)
    regulated = cfg.environment.regulated_evaluation
    learner_cls = registry.get("learner", cfg.learner.type)
    learner = learner_cls(loaded.component_config("learner"), world.env, seed=seed)
    train_seconds, result, target = 0.0, None, None
    if learner_cls.trains:
        target = read_target(loaded)
        line = violation_only_line(target, loaded)
        if line:
            print(line, file=sys.stderr, flush=True)
        trainer = Trainer(world, out_dir=out_dir, pm=pm, target=target, seed=seed, progress=progress,
                          resume=resume, run_info=RunInfo(cfg.name, cfg.learner.type, seed, out_dir))
        result = learner.train(trainer)
        train_seconds = result.train_seconds if result is not None else 0.0
    evaluation = _evaluate_with_progress(world, cfg.learner.type, learner, days, regulated, progress)
    document = metrics_document(world, cfg.learner.type, evaluation, seeds=[seed],
                                train_seconds=train_seconds, counters=world.env.counters)
    if result is not None:
        document["time_to_target_s"] = result.time_to_target_s
        document["target"] = target.as_dict()
        document["validation_eval_seconds"] = result.eval_seconds
        document["training_iterations"] = result.iterations
        document["training_clock"] = learner.config.training_clock
        document["validation"] = result.history[-1] if result.best_index is None else result.history[result.best_index]
    if ranks is not None:  # provenance: one process's run has no such keys
        document["processes"], document["process_backend"] = ranks.world_size, ranks.backend
    if writes:
        write_run_outputs(out_dir, world, document, evaluation)
    extras = learner.report()
    if extras and writes:  # e.g. a planner's per-day report (iterations, solve seconds, AC metrics per day)
        (out_dir / "learner_extras.json").write_text(json.dumps(extras, indent=2, default=_json_scalar))
    documents = {cfg.learner.type: document}
    for name in baseline_names(registry) if references else ():
        if name == cfg.learner.type:
            continue
        ref_cls = registry.get("learner", name)
        if ranks is not None and not ref_cls.shards_agents:
            if progress:
                print(f"baseline {name!r} skipped: it cannot act on agents sharded over processes "
                      "(shards_agents is false)", file=sys.stderr, flush=True)
            continue
        reference = ref_cls(ref_cls.Config(), world.env, seed=cfg.seed)
        ref_eval = _evaluate_with_progress(world, name, reference, days, regulated, progress)
        ref_doc = metrics_document(world, name, ref_eval, seeds=[cfg.seed])
        if writes:
            write_run_outputs(out_dir / "baselines" / name, world, ref_doc, ref_eval)
        documents[name] = ref_doc
    return RunResult(Path(out_dir), cfg.learner.type, documents, result)


def baseline_names(registry: Any) -> list[str]:
    """Installed learners whose ``role`` is ``"baseline"`` (evaluated beside every run), in the
    order no_control, rule_based, droop first, then any others by name."""
    names = [n for n in registry.names("learner") if registry.get("learner", n).role == "baseline"]
    first = [n for n in ("no_control", "rule_based", "droop") if n in names]
    return first + sorted(set(names) - set(first))


def _evaluate_with_progress(world, name: str, learner, days, regulated: bool, progress: bool):
    """:func:`gridflex.runs.evaluate.evaluate` on the scenario's test days, saying what it does."""
    cfg = world.loaded.config
    n_days = min(cfg.data.n_test_days, len(days))
    extra = " and with the tap controller" if regulated and world.env.tap_treatment != "regulated" else ""
    step = Progress(f"evaluating {name} on {n_days} test days ({world.env.tap_treatment} taps{extra})",
                    enabled=progress)
    step.step()
    def on_day(b: int, line: str) -> None:  # planners that take minutes per day say where they are
        print(f"{name} day {b + 1}: {line}", file=sys.stderr, flush=True)

    evaluation = evaluate(world, learner, days, cfg.data.n_test_days, regulated,
                          on_day=on_day if progress else None)
    metrics = evaluation.metrics
    step.close(f"{metrics['voltage_violation_rate']:.2%} violations, {metrics['cost_per_day']:.1f} EUR/day")
    return evaluation


def _json_scalar(value):
    """numpy scalars and arrays in a learner's extras, as JSON."""
    return value.tolist() if hasattr(value, "tolist") else str(value)


TABLE_METRICS = (
    ("cost_per_day", "cost/day", "{:.1f}"),
    ("voltage_violation_rate", "V viol.", "{:.2%}"),
    ("undervoltage_rate", "under", "{:.2%}"),
    ("overvoltage_rate", "over", "{:.2%}"),
    ("voltage_violation_pu_h", "V pu.h/day", "{:.3f}"),
    ("line_overload_rate", "I overl.", "{:.2%}"),
    ("discomfort_degC_h", "degC.h/HP", "{:.2f}"),
    ("losses_kwh_per_day", "losses kWh", "{:.0f}"),
    ("peak_import_kw", "peak kW", "{:.0f}"),
    ("pf_nonconverged", "PF fail", "{:d}"),
)


def results_table(documents: dict[str, dict]) -> str:
    """Test metrics of each controller: under the scenario's tap treatment, then with the tap
    controller active (``regulated``; one row when that is the treatment)."""
    header = ["controller", "taps"] + [label for _, label, _ in TABLE_METRICS]
    rows = []
    for name, doc in documents.items():
        treatment = doc.get("tap_treatment", "frozen")
        for taps, key in ((treatment, "test"), ("regulated", "test_regulated")):
            metrics = doc.get(key) or {}
            if not metrics or (key == "test_regulated" and treatment == "regulated"):
                continue
            rows.append([name, taps] + [fmt.format(metrics[m]) for m, _, fmt in TABLE_METRICS])
    widths = [max(len(str(r[i])) for r in [header] + rows) for i in range(len(header))]
    lines = ["  ".join(str(c).rjust(w) if i > 1 else str(c).ljust(w) for i, (c, w) in enumerate(zip(row, widths)))
             for row in [header] + rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)
