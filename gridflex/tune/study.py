"""``gridflex tune``: the study's settings, its opening (or refusal to mix), and one worker's run.

A study is identified by its name in its storage. Its **settings** (learner, each scenario's name
and sha256 after the study's ``-o`` overrides, learner and budget, the seeds, the budget, the
mode, the pruner, the objective's version and the declared search space) are stored on it when it
is created; a later command on the same study with other settings is refused (exit 2, the
differing keys named), so two studies' results never mix. Only the trial cap (``--trials``) may
change: a larger cap continues the study, the same cap after a crash resumes it.

Modes: single objective (the mean censored time to target, :mod:`.objective`), seeded TPE
sampler, Wilcoxon pruner on the per-(scenario, seed) values (``--pruner wilcoxon``, default; see
docs/tuning.md for the measurement behind the choice) or none; multi-objective
(``--multi-objective``: time to target and validation cost, never pruned, Pareto front written).
The learner's defaults are enqueued as the first trial of a new study.
"""

from __future__ import annotations

import math
import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from gridflex.errors import UserError
from gridflex.tune.objective import Budget, Problem, prepare_problems, run_instance
from gridflex.tune.spaces import first_trial_params, require_space, suggest
from gridflex.tune.summary import SETTINGS_ATTR, consumed, write_summary
from gridflex.tune.storage import STUDIES_DIR, CapLock, StorageSpec, open_storage, parse_storage, retry_callback
from gridflex.tune.workers import Counts, count_states, work

OBJECTIVE_VERSION = "censored-time-to-target/1"
PRUNERS = ("wilcoxon", "median", "none")
_NAME = re.compile(r"^[A-Za-z0-9_.+-]{1,120}$")


@dataclass
class TuneSettings:
    """Everything ``gridflex tune`` was asked to do."""

    scenarios: list[str]
    learner: str
    trials: int
    budget: Budget
    seeds: list[int] = field(default_factory=lambda: [0])
    storage: str | None = None
    study: str | None = None
    jobs: int = 1
    overrides: list[str] = field(default_factory=list)
    multi_objective: bool = False
    pruner: str = "wilcoxon"
    sampler_seed: int = 0
    startup_trials: int = 10  # TPE's random start-up trials (Optuna's default)
    heartbeat_s: int = 60
    max_retry: int = 3
    password_file: Path | None = None
    out: Path | None = None
    worker_index: int = 0
    summary: bool = True


def default_study_name(learner: str, problems: list[Problem]) -> str:
    return re.sub(r"[^A-Za-z0-9_.+-]", "_", f"{learner}-" + "+".join(p.loaded.config.name for p in problems))


def study_settings(settings: TuneSettings, problems: list[Problem], space: list[str]) -> dict:
    """The stored, comparable settings of a study (module docstring)."""
    return {"learner": settings.learner, "objective": OBJECTIVE_VERSION,
            "scenarios": [{"name": p.loaded.config.name, "sha256": p.loaded.sha256()} for p in problems],
            "seeds": list(settings.seeds), "budget": settings.budget.as_dict(),
            "multi_objective": settings.multi_objective,
            "pruner": "none" if settings.multi_objective else settings.pruner, "search_space": space}


def settings_differences(stored: dict, now: dict) -> list[str]:
    keys = sorted(set(stored) | set(now))
    return [f"{k} (study: {stored.get(k)!r}, now: {now.get(k)!r})" for k in keys if stored.get(k) != now.get(k)]


def _check(settings: TuneSettings) -> None:
    if settings.trials < 1:
        raise UserError("--trials must be at least 1 (the study's total of finished trials)")
    if settings.jobs < 1:
        raise UserError("--jobs must be at least 1")
    if settings.pruner not in PRUNERS:
        raise UserError(f"--pruner {settings.pruner!r}: choose one of {', '.join(PRUNERS)}")
    if settings.study is not None and not _NAME.match(settings.study):
        raise UserError(f"--study {settings.study!r}: use letters, digits and . _ + - only (it names files)")
    if settings.startup_trials < 1:
        raise UserError("--startup-trials must be at least 1 (TPE needs some trials before it models the space)")
    if settings.heartbeat_s < 1:
        raise UserError("--heartbeat-s must be at least 1 second")


def open_study(settings: TuneSettings, spec: StorageSpec, name: str, stored: dict, learner_cls, lock):
    """Create or load the study; store or compare its settings; enqueue the defaults once."""
    import optuna

    sampler = optuna.samplers.TPESampler(seed=settings.sampler_seed + settings.worker_index, constant_liar=True,
                                         n_startup_trials=settings.startup_trials)
    if settings.multi_objective or settings.pruner == "none":
        pruner = optuna.pruners.NopPruner()
    else:
        pruner = optuna.pruners.WilcoxonPruner(p_threshold=0.1, n_startup_steps=2)
    if settings.pruner == "median" and not settings.multi_objective:
        pruner = optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=1)
    storage = open_storage(spec, heartbeat_s=settings.heartbeat_s, max_retry=settings.max_retry)
    directions = ["minimize", "minimize"] if settings.multi_objective else ["minimize"]
    with lock:
        try:
            study = optuna.create_study(storage=storage, study_name=name, sampler=sampler, pruner=pruner,
                                        directions=directions, load_if_exists=True)
        except ValueError as exc:
            raise UserError(f"study {name!r} in {spec.display} cannot be opened with these settings "
                            f"({spec.scrub(str(exc))}); use another --study") from None
        old = study.user_attrs.get(SETTINGS_ATTR)
        if old is None and study.trials:
            raise UserError(f"study {name!r} in {spec.display} was not created by gridflex tune (it has "
                            "trials but no gridflex settings); use another --study")
        if old is None:
            study.set_user_attr(SETTINGS_ATTR, stored)
            study.enqueue_trial(first_trial_params(learner_cls), user_attrs={"defaults": True})
        elif old != stored:
            diffs = settings_differences(old, stored)
            raise UserError(f"study {name!r} in {spec.display} was created with other settings, and gridflex "
                            f"never mixes two studies' results: {'; '.join(diffs)}. Give the same scenarios, "
                            "-o overrides, learner, seeds, budget and mode to continue it, or another --study "
                            "to start a new one")
    return study, storage


def make_objective(settings: TuneSettings, problems: list[Problem], learner_cls, registry, pm):
    """The function a worker calls with each trial (values per :mod:`.objective`)."""
    import optuna

    pairs = [(p, s) for p in problems for s in settings.seeds]

    def objective(trial):
        params = suggest(learner_cls, trial)
        trial.set_user_attr("learner_params", params)
        spent = {"consumed_training_s": 0.0, "consumed_iterations": 0, "consumed_instances": 0}
        for key, value in spent.items():
            trial.set_user_attr(key, value)  # a retry starts from zero, not from its failed copy
        results = []
        for step, (problem, seed) in enumerate(pairs):
            hook = None
            if settings.pruner == "median" and not settings.multi_objective:
                hook = _checkpoint_reporter(trial, problem, settings.budget, step, results, spent)
            result = run_instance(problem, seed, params, settings.budget, registry, pm, hook=hook)
            results.append(result)
            spent["consumed_training_s"] += result.train_seconds
            spent["consumed_iterations"] += result.iterations
            spent["consumed_instances"] += 1
            for key, value in spent.items():
                trial.set_user_attr(key, value)
            trial.set_user_attr("instances", [r.as_dict() for r in results])
            if settings.pruner != "median" and not settings.multi_objective:
                trial.report(result.value, step)
                if step + 1 < len(pairs) and trial.should_prune():
                    raise optuna.TrialPruned(f"pruned after {step + 1} of {len(pairs)} instances")
        value = sum(r.value for r in results) / len(results)
        if not settings.multi_objective:
            return value
        costs = [r.val_cost_per_day for r in results]
        cost = sum(costs) / len(costs) if all(c is not None and math.isfinite(c) for c in costs) else 1e12
        return value, cost

    return objective


def _checkpoint_reporter(trial, problem: Problem, budget: Budget, step: int, done: list, spent: dict):
    """``--pruner median``: at each validation point of instance ``step``, report the mean over
    the instances so far of their values, the running one's provisional (censored as if its
    budget ended here), at step ``1000 step + checkpoint``; prune when the median rule says so
    (the partial instance's training counted as consumed)."""
    import optuna

    from gridflex.tune.objective import censored_value

    rows: list[dict] = []

    def on_row(record: dict) -> None:
        rows.append(record)
        provisional = censored_value(rows, problem.target, budget)[0]
        trial.report((sum(r.value for r in done) + provisional) / (len(done) + 1), 1000 * step + len(rows) - 1)
        if trial.should_prune():
            spent["consumed_training_s"] += float(record["wall_s"])
            spent["consumed_iterations"] += int(record["iteration"])
            spent["consumed_instances"] += 1
            for key, value in spent.items():
                trial.set_user_attr(key, value)
            raise optuna.TrialPruned(f"pruned at validation point {len(rows) - 1} of instance {step}")

    return on_row


def progress_line(name: str, study, cap: int, budget: Budget, frozen=None) -> str:
    """Trials done, best value and the budget consumed, in one line."""
    counts = count_states(study)
    done = f"{counts.finished}/{cap} trials finished ({counts.complete} complete, {counts.pruned} pruned, " \
           f"{counts.failed} failed)"
    best = "best: none yet"
    if counts.complete:
        if len(study.directions) == 1:
            b = study.best_trial
            best = f"best {b.value:.4g} {budget.unit} (trial {b.number})"
        else:
            best = f"Pareto front: {len(study.best_trials)} trial(s)"
    use = consumed(study)
    spent = f"budget consumed {use['training_s']:.1f} s of training clock, {use['iterations']} iterations, " \
            f"{use['instances']} instances (all trials)"
    head = f"[tune] {name}: "
    if frozen is not None:
        value = "" if frozen.values is None else " value " + ", ".join(f"{v:.4g}" for v in frozen.values)
        head += f"trial {frozen.number} {frozen.state.name.lower()}{value}; "
    return head + "; ".join((done, best, spent))


def worker_command(settings: TuneSettings, index: int) -> list[str]:
    """The command line of extra worker ``index`` (``--jobs``): the same study, no summary."""
    cmd = [sys.executable, "-m", "gridflex", "tune", *settings.scenarios, "--learner", settings.learner,
           "--trials", str(settings.trials), "--seeds", ",".join(map(str, settings.seeds)),
           "--sampler-seed", str(settings.sampler_seed), "--startup-trials", str(settings.startup_trials),
           "--heartbeat-s", str(settings.heartbeat_s),
           "--pruner", settings.pruner, "--jobs", "1", "--worker-index", str(index), "--no-summary"]
    cmd += ["--budget-s", repr(settings.budget.seconds)] if settings.budget.seconds is not None else \
        ["--budget-iterations", str(settings.budget.iterations)]
    for override in settings.overrides:
        cmd += ["-o", override]
    for flag, value in (("--storage", settings.storage), ("--study", settings.study),
                        ("--db-password-file", settings.password_file)):
        if value is not None:
            cmd += [flag, str(value)]
    if settings.multi_objective:
        cmd.append("--multi-objective")
    return cmd


def run_tune(settings: TuneSettings, registry, pm, say=print) -> dict:
    """Run (or continue) a study as one worker, plus ``jobs - 1`` worker processes; write the
    summary and overlay (:mod:`.summary`). Returns ``{"study", "counts", "summary"}``."""
    import warnings

    _check(settings)
    try:
        import optuna
    except ImportError:
        raise UserError("gridflex tune needs Optuna: pip install 'gridflex[tune]'") from None
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    learner_cls = registry.get("learner", settings.learner)
    space = require_space(learner_cls)
    problems = prepare_problems(settings.scenarios, settings.overrides, settings.learner, settings.budget, registry)
    name = settings.study or default_study_name(learner_cls.name, problems)
    spec = parse_storage(settings.storage, name, settings.password_file)
    old_umask = os.umask(0o077)  # everything a study writes is readable by its owner only
    extra: list[subprocess.Popen] = []
    try:
        if spec.kind == "journal":
            spec.path.parent.mkdir(parents=True, exist_ok=True)
        lock = CapLock(spec, name)
        study, storage = open_study(settings, spec, name, study_settings(settings, problems, space), learner_cls, lock)
        if settings.worker_index == 0:
            say(f"[tune] study {name} in {spec.display}: learner {learner_cls.name}, "
                f"{len(problems)} scenario(s) x {len(settings.seeds)} seed(s), budget "
                f"{settings.budget.amount:g} {settings.budget.unit} each, cap {settings.trials} finished trials, "
                f"{settings.jobs} worker(s)")
            if settings.pruner == "wilcoxon" and not settings.multi_objective and \
                    len(problems) * len(settings.seeds) < 5:
                say(f"[tune] note: {len(problems) * len(settings.seeds)} (scenario, seed) instances per trial: "
                    "the Wilcoxon pruner (p < 0.1) needs 5 or more to prune (its exact test cannot reach p < 0.1 "
                    "on 3 paired values; docs/tuning.md)")
            say(progress_line(name, study, settings.trials, settings.budget))
            env = dict(os.environ)
            extra = [subprocess.Popen(worker_command(settings, i), env=env, stdout=subprocess.DEVNULL)
                     for i in range(1, settings.jobs)]
        t0 = time.perf_counter()
        objective = make_objective(settings, problems, learner_cls, registry, pm)
        counts: Counts = work(study, objective, cap=settings.trials, lock=lock, kind=spec.kind,
                              retry=retry_callback(settings.max_retry), heartbeat_s=settings.heartbeat_s,
                              on_trial=lambda s, t: say(progress_line(name, s, settings.trials, settings.budget, t)))
        for proc in extra:
            proc.wait()
        result = {"study": name, "counts": counts, "summary": None, "wall_s": time.perf_counter() - t0}
        if settings.summary and settings.worker_index == 0:
            out = settings.out if settings.out is not None else STUDIES_DIR / name
            result["summary"] = write_summary(study, name, spec, settings, out)
        lock.close()
        return result
    except Exception as exc:
        if type(exc).__module__.split(".")[0] in ("sqlalchemy", "psycopg"):  # the database went away
            text = spec.scrub(str(exc).strip().splitlines()[0][:300] if str(exc).strip() else "")
            raise UserError(f"study {name!r} in {spec.display}: the database failed during the study "
                            f"({type(exc).__name__}: {text}); its finished trials are kept, run the same "
                            "command again to resume") from None
        raise
    finally:
        for proc in extra:
            if proc.poll() is None:
                proc.terminate()
        os.umask(old_umask)
