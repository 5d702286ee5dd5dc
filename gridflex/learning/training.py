"""The training loop shared by every learner that trains: budget, validation, history, checkpoints.

A learner that trains subclasses :class:`TrainableLearner` (its ``Config`` subclasses
:class:`TrainingConfig`) and implements one :meth:`~TrainableLearner.train_iteration`; the
:class:`Trainer` owns everything else:

* **Clock.** The training clock starts when :meth:`Trainer.fit` starts (the learner's set-up and
  warm-up included) and excludes validation: ``wall_s`` is training time only, ``eval_wall_s``
  the cumulative validation time. ``training_clock``: ``wall`` (elapsed) or ``cpu`` (process CPU
  time, for timing on a shared machine; run one thread, as it sums the threads' time).
* **Budget.** ``budget_seconds`` of training clock and/or ``budget_iterations`` (whichever ends
  first; at least one must be set).
* **Validation** at equal training-clock intervals (``validation_interval_s``; or every
  ``validation_interval_iterations`` iterations when set, for tests), plus one before the first
  iteration and one at the end, on a fixed set of validation days (the scenario's
  ``data.n_validation_days``, evenly spaced over the validation split), the scenario's tap
  treatment (as in training and test), evaluation
  limits ``v_limits_pu``. Validation power flows are not counted as training solves.
* **history.csv**, one row per validation point: ``iteration, wall_s, eval_wall_s,
  power_flow_solves, env_gradient_evaluations, policy_updates, val_cost_per_day,
  val_violation_rate, dual_mean, dual_max``, then the learner's ``history_extras``, then
  ``meets_target``; an empty cell where a value is not meaningful.
* **Checkpoints** (``checkpoint.pt``: the learner's state dict, counters, clock, history, RNG
  states and the best validation point) saved atomically (temp file, then ``os.replace``) at every
  validation point and on Ctrl-C (:mod:`gridflex.learning.crash_safety`), loadable with
  ``torch.load(..., weights_only=True)``; ``resume=True`` continues from one exactly as if never
  stopped (CPU; its own validation point is not repeated; a damaged one is a UserError). With
  ``select_best`` the learner ends in the state of its best validation point (target met at the
  lowest cost, else the lowest violation rate), saved as ``policy.pt``.
* The ``gridflex_on_iteration(run, record)`` hook is called with each history row.
* **Several processes** (agents sharded, docs/distributed.md): every rank runs this loop in
  lockstep. The clock reading that decides validation and the end is the maximum over ranks, a
  Ctrl-C on any rank stops all at the same iteration, and checkpoints gather every agent's state
  (a collective) while rank 0 alone writes files and calls the hook; ``--resume`` reads the
  checkpoint on rank 0 and broadcasts it.

Size: the whole protocol (budget, clock, validation, history, checkpoints, resume, processes)
lives in one loop so that its invariants can be read together.
"""

from __future__ import annotations

import abc
import copy
import csv
import math
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
import torch
from pydantic import Field, model_validator

from gridflex.plugins.contracts import Learner, StrictConfig
from gridflex.errors import UserError
from gridflex.learning.environment import Exogenous
from gridflex.learning.metrics import evaluation_metrics
from gridflex.progress import Progress
from gridflex.learning.targets import Target
from gridflex.learning.crash_safety import InterruptRequest, TrainingInterrupted

BASE_COLUMNS = ("iteration", "wall_s", "eval_wall_s", "power_flow_solves",
                "env_gradient_evaluations", "policy_updates", "val_cost_per_day",
                "val_violation_rate", "dual_mean", "dual_max")
CHECKPOINT = "checkpoint.pt"
POLICY = "policy.pt"
HISTORY = "history.csv"


class TrainingConfig(StrictConfig):
    """Budget and validation settings every training learner's ``Config`` inherits."""

    budget_seconds: float | None = Field(
        240.0, gt=0, description="training-clock budget (s, validation excluded); None: no time limit")
    budget_iterations: int | None = Field(
        None, ge=1, description="outer-iteration budget; None: no iteration limit")
    validation_interval_s: float = Field(
        20.0, gt=0, description="validate every this many seconds of training clock")
    validation_interval_iterations: int | None = Field(
        None, ge=1, description="validate every this many iterations instead (tests, equal-work runs)")
    select_best: bool = Field(
        True, description="end in the best validation point's state (target met at lowest cost, else lowest violation)")
    training_clock: Literal["wall", "cpu"] = Field(
        "wall", description="training clock: elapsed time (wall) or process CPU time (cpu, one thread)")

    @model_validator(mode="after")
    def _some_budget(self):
        if self.budget_seconds is None and self.budget_iterations is None:
            raise ValueError("set budget_seconds or budget_iterations (or both)")
        return self


class TrainableLearner(Learner, abc.ABC):
    """A learner trained by :class:`Trainer` one outer iteration at a time."""

    trains = True
    history_extras: ClassVar[tuple[str, ...]] = ()  # learner-specific history.csv columns
    dual_columns: ClassVar[tuple[str, ...]] = ()  # dual_report() columns, written after dual_max

    def train(self, trainer: Trainer) -> TrainingResult:
        return trainer.fit(self)

    def setup(self, trainer: Trainer) -> None:
        """Warm-up before the first iteration (inside the training clock); default: nothing."""

    @abc.abstractmethod
    def train_iteration(self, trainer: Trainer) -> dict[str, float]:
        """One outer iteration on days from ``trainer.sample_days(n)`` (training voltage limits
        ``trainer.v_limits_train_pu``); returns the ``history_extras`` values."""

    @abc.abstractmethod
    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume: tensors, nested dicts/lists of tensors and numbers."""

    @abc.abstractmethod
    def load_state_dict(self, state: dict[str, Any]) -> None: ...

    def dual_summary(self) -> tuple[float | None, float | None]:
        """Mean and max of the dual variables (``None`` where the learner has none)."""
        return None, None

    def dual_report(self) -> dict[str, float | None]:
        """Values of the ``dual_columns`` (e.g. per constraint family); a missing or ``None`` value
        is an empty cell. Default: none."""
        return {}


@dataclass
class RunInfo:
    """What the ``gridflex_on_iteration`` hook's ``run`` argument carries."""

    scenario: str
    learner: str
    seed: int
    out_dir: Path | None


@dataclass
class TrainingResult:
    """Outcome of :meth:`Trainer.fit` (times in seconds of training clock)."""

    train_seconds: float
    eval_seconds: float
    iterations: int
    history: list[dict] = field(default_factory=list)
    time_to_target_s: float | None = None
    best_index: int | None = None
    report: list[str] = field(default_factory=list)  # the end-of-training lines (outcome_report)


def validation_days_exogenous(world) -> Exogenous:
    """The fixed validation set: ``data.n_validation_days`` days evenly spaced over the split."""
    days = world.data.split("validation")
    n = min(world.loaded.config.data.n_validation_days, len(days))
    positions = np.unique(np.linspace(0, len(days) - 1, num=n).round().astype(int))
    return world.env.exogenous(days.get(positions))


class Trainer:
    """Runs a :class:`TrainableLearner` under the budget and protocol of the module docstring."""

    _restored_rng, _restored_best = False, (None, None)  # set by _load_checkpoint
    #: the training clock's source (set by ``fit``); learners timing their own phases read it
    timer = staticmethod(time.perf_counter)

    def __init__(self, world, *, out_dir: Path | None = None, pm=None, target: Target | None = None,
                 seed: int = 0, progress: bool = True, resume: bool = False, run_info: RunInfo | None = None):
        self.world = world
        self.env = world.env
        #: validation judges with the evaluation solver (exact AC by default), as the test does
        self.judge_env = world.eval_env
        self.out_dir = None if out_dir is None else Path(out_dir)
        self.pm = pm
        self.target = target
        self.seed = seed
        self.progress = progress
        self.resume = resume
        self.run_info = run_info
        self.rng = np.random.default_rng([seed, 0x747261696E])
        shard = getattr(world.env, "shard", None)
        #: the process group when agents are sharded over processes (else None); rank 0 writes
        self.ranks = None if shard is None else shard.ranks
        self.writes = self.ranks is None or self.ranks.is_main
        self._train_days = world.data.split("train")
        self._validation = validation_days_exogenous(world)
        cfg = world.loaded.config
        self._v_limits = tuple(cfg.limits.v_limits_pu)
        self.v_limits_train_pu = tuple(cfg.limits.v_limits_train_pu)
        self.line_limits = cfg.limits.line_limits

    # ------------------------------------------------------------------ data
    def sample_days(self, n_days: int) -> Exogenous:
        """``n_days`` distinct training days drawn with the trainer's generator."""
        n = min(n_days, len(self._train_days))
        return self.env.exogenous(self._train_days.batch(n, self.rng))

    def validate(self, learner: Learner) -> dict:
        """Validation metrics of ``learner.act`` (validation solves are not training solves)."""
        env = self.judge_env
        with torch.no_grad(), env.counters.paused():
            rollout = env.rollout(self._validation, learner.act)
            metrics = evaluation_metrics(env, rollout, self._v_limits, self.line_limits)
        return metrics

    # ------------------------------------------------------------------ loop
    def fit(self, learner: TrainableLearner) -> TrainingResult:
        cfg = learner.config
        self.timer = time.process_time if cfg.training_clock == "cpu" else time.perf_counter
        columns = BASE_COLUMNS + tuple(learner.dual_columns) + tuple(learner.history_extras) + ("meets_target",)
        history: list[dict] = []
        offset_s = eval_s = eval_base = 0.0
        iteration = 0
        start = self.timer()
        with InterruptRequest(self.progress) as interrupt:
            return self._fit(learner, cfg, columns, history, offset_s, eval_s, eval_base, iteration, start,
                             interrupt)

    def _on_main(self, fn):
        """``fn()`` (rank 0's result on every rank when sharded over processes)."""
        return fn() if self.ranks is None else self.ranks.on_main(fn)

    def _fit(self, learner, cfg, columns, history, offset_s, eval_s, eval_base, iteration, start, interrupt):
        if self.resume and self.out_dir is not None and self._on_main((self.out_dir / CHECKPOINT).exists):
            iteration, offset_s, eval_base, history = self._load_checkpoint(learner)
            eval_s = eval_base
            if self.progress:
                print(f"resumed from iteration {iteration} ({offset_s:.1f} s of training clock) of "
                      f"{self.out_dir / CHECKPOINT}", file=sys.stderr, flush=True)
            if not self._restored_rng:  # a checkpoint from before RNG states were saved
                self.rng = np.random.default_rng([self.seed, 0x747261696E, iteration])
        else:
            learner.setup(self)
        local_clock = lambda: offset_s + self.timer() - start - (eval_s - eval_base)  # noqa: E731
        # what decides validation and the end: with several ranks, the latest rank's reading
        clock = local_clock if self.ranks is None else (lambda: self.ranks.max(local_clock())[0])
        best_state, best_index, best_score = None, None, None
        resumed_at = None
        if history and self.resume:  # the checkpoint's own validation point: not validated twice
            resumed_at = iteration
            best_index, best_state = self._restored_best
            best_index = len(history) - 1 if best_index is None else best_index
            best_score = _score(history[best_index], self.target)
            if cfg.select_best and best_state is None:
                best_state = copy.deepcopy(learner.state_dict())
        next_val_s = clock() if not history else float(history[-1]["wall_s"]) + cfg.validation_interval_s
        bar = self._progress_bar(cfg)
        last_extras: dict = {}
        while True:
            now = clock()
            done = (cfg.budget_seconds is not None and now >= cfg.budget_seconds) or (
                cfg.budget_iterations is not None and iteration >= cfg.budget_iterations)
            due = (iteration % cfg.validation_interval_iterations == 0
                   if cfg.validation_interval_iterations else now >= next_val_s)
            if (due or done or not history) and iteration != resumed_at:
                t_eval = self.timer()
                row = self._record(learner, iteration, now, last_extras)
                row["eval_wall_s"] = eval_s + self.timer() - t_eval
                history.append(row)
                self._write_history(history, columns)
                score = _score(row, self.target)
                if best_score is None or score < best_score:
                    best_score, best_index = score, len(history) - 1
                    if cfg.select_best:
                        best_state = copy.deepcopy(learner.state_dict())
                self._save_checkpoint(learner, iteration, now, history,
                                      (best_index, None if best_index == len(history) - 1 else best_state))
                if self.pm is not None and self.writes:  # several processes: rank 0's hook only
                    self.pm.hook.gridflex_on_iteration(run=self.run_info, record=dict(row))
                eval_s += self.timer() - t_eval  # files and hook count as validation time
                while next_val_s <= now:
                    next_val_s += cfg.validation_interval_s
                if bar is not None:
                    bar.step(self._done(cfg, iteration, now),
                             f"iteration {iteration}, validation {row['val_violation_rate']:.2%} violations, "
                             f"{row['val_cost_per_day']:.1f} EUR/day")
            if done:
                break
            requested = interrupt.requested if self.ranks is None else self.ranks.max(interrupt.requested)[0] > 0
            if requested:  # Ctrl-C: a consistent checkpoint at this iteration, then stop
                self._save_checkpoint(learner, iteration, clock(), history, (best_index, best_state))
                raise TrainingInterrupted(self.out_dir and self.out_dir / CHECKPOINT, iteration)
            last_extras = learner.train_iteration(self)
            self._flush_solver_reports()
            iteration += 1
            if bar is not None and bar._bar is not None:  # a terminal bar also moves between validations
                bar._bar.n = min(self._done(cfg, iteration, local_clock()), bar.total)
                bar._bar.refresh()
        if bar is not None:
            bar.close(f"{iteration} iterations, {local_clock():.1f} s of training clock")
        train_seconds = history[-1]["wall_s"]
        if cfg.select_best and best_state is not None:
            learner.load_state_dict(best_state)  # the work done stays counted in env.counters
        if self.out_dir is not None:
            policy = {"learner": learner.state_dict(), "history_index": best_index}  # every rank: gathers
            if self.writes:
                _atomic_save(policy, self.out_dir / POLICY)
        ttt = None
        if self.target is not None:
            from gridflex.learning.targets import time_to_target

            ttt = time_to_target(history, self.target)
        result = TrainingResult(train_seconds, eval_s, iteration, history, ttt, best_index)
        result.report = outcome_report(result, self.target, select_best=cfg.select_best)
        if self.progress:
            print("\n".join(result.report), file=sys.stderr, flush=True)
        return result

    def _flush_solver_reports(self) -> None:
        """Read what a sync-free training solver deferred (one synchronisation an iteration, after
        it): its adjoint warnings then reach the user within the iteration that caused them."""
        report = getattr(self.env.solver, "adjoint_report", None)
        if report is not None:
            report.flush()

    def _progress_bar(self, cfg) -> Progress | None:
        """A bar on a terminal (kept when done), one line per validation point in a log."""
        if not self.progress:
            return None
        if cfg.budget_iterations is not None:  # the iteration budget is the reproducible one
            return Progress("training", cfg.budget_iterations, "it")
        return Progress("training", cfg.budget_seconds, "s")

    @staticmethod
    def _done(cfg, iteration: int, clock_s: float) -> float:
        """How far the budget got: iterations under an iteration budget, else training seconds."""
        return float(iteration) if cfg.budget_iterations is not None else round(clock_s, 1)

    def _record(self, learner, iteration, wall_s, extras) -> dict:
        metrics = self.validate(learner)
        dual_mean, dual_max = learner.dual_summary()
        row = {"iteration": iteration, "wall_s": wall_s, "eval_wall_s": None, **self.env.counters.as_dict(),
               "val_cost_per_day": metrics["cost_per_day"], "val_violation_rate": metrics["voltage_violation_rate"],
               "dual_mean": dual_mean, "dual_max": dual_max}
        report = learner.dual_report()
        row.update({name: report.get(name) for name in learner.dual_columns})
        row.update({name: extras.get(name) for name in learner.history_extras})
        row["meets_target"] = None if self.target is None else int(
            self.target.met(row["val_violation_rate"], row["val_cost_per_day"]))
        return row

    # ------------------------------------------------------------------ files
    def _write_history(self, history: list[dict], columns: tuple[str, ...]) -> None:
        if self.out_dir is None or not self.writes:
            return
        self.out_dir.mkdir(parents=True, exist_ok=True)
        tmp = self.out_dir / (HISTORY + ".tmp")
        with tmp.open("w", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(columns)
            for row in history:
                writer.writerow(["" if row.get(c) is None else _fmt(row.get(c)) for c in columns])
        os.replace(tmp, self.out_dir / HISTORY)

    def _save_checkpoint(self, learner, iteration, wall_s, history, best=(None, None)) -> None:
        """``best``: (history index of the best validation point, its learner state or ``None``
        when that is the checkpoint's own state). The RNG states make a resumed run continue the
        same random streams (days drawn, minibatches, torch's global generator)."""
        if self.out_dir is None:
            return
        state = {"format": 1, "learner": learner.state_dict(), "iteration": iteration,
                 "wall_s": float(wall_s), "eval_wall_s": float(history[-1]["eval_wall_s"]),
                 **self.env.counters.as_dict(),
                 "history": [dict(r) for r in history],
                 "rng": {"trainer": self.rng.bit_generator.state, "torch": torch.get_rng_state()},
                 "best": {"index": best[0], "state": best[1]}}
        if self.writes:
            _atomic_save(state, self.out_dir / CHECKPOINT)

    def _load_checkpoint(self, learner):
        location = None if self.ranks is None else "cpu"
        state = self._on_main(lambda: read_checkpoint(self.out_dir / CHECKPOINT, map_location=location))
        learner.load_state_dict(state["learner"])
        rng = state.get("rng")
        self._restored_rng = isinstance(rng, dict) and "trainer" in rng
        if self._restored_rng:
            self.rng.bit_generator.state = rng["trainer"]
            torch.set_rng_state(rng["torch"])
        best = state.get("best") or {}
        self._restored_best = (best.get("index"), best.get("state"))
        self.env.counters.load(state)
        return state["iteration"], state["wall_s"], state["eval_wall_s"], list(state["history"])


CHECKPOINT_KEYS = ("format", "learner", "iteration", "wall_s", "eval_wall_s", "power_flow_solves",
                   "env_gradient_evaluations", "policy_updates", "history")


def read_checkpoint(path: Path, map_location=None) -> dict:
    """A ``checkpoint.pt`` loaded with ``weights_only=True`` (tensors on the devices they were saved
    from unless ``map_location``); a file that is missing, truncated, refused by the safe loader
    or not a gridflex checkpoint is a :class:`UserError` naming it."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint {path} does not exist; --resume continues a run folder that "
                        f"holds the {CHECKPOINT} written by an earlier `gridflex run --out` of it")
    remedy = ("restore the file, or start over in this folder with --force (which discards it) or "
              "in another --out folder")
    try:
        state = torch.load(path, weights_only=True, map_location=map_location)
    except Exception as exc:  # noqa: BLE001 - any failure here is a damaged file, not a bug
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(f"checkpoint {path} cannot be read: it is damaged (e.g. truncated) or not a "
                        f"checkpoint that torch.load(..., weights_only=True) accepts "
                        f"({type(exc).__name__}: {reason[:200]}); {remedy}") from None
    missing = [key for key in CHECKPOINT_KEYS if not isinstance(state, dict) or key not in state]
    if missing or state.get("format") != 1:
        what = f"lacks {', '.join(missing)}" if missing else f"has format {state.get('format')!r}"
        raise UserError(f"checkpoint {path} is not a gridflex checkpoint of format 1 (it {what}); "
                        f"{remedy}")
    return state


def outcome_report(result: TrainingResult, target: Target | None, *, select_best: bool = True) -> list[str]:
    """What happened, in words: the target, whether and when it was met (training clock and
    environment gradients) or how far the best validation point stayed from it, and which
    validation point's state the learner ends in."""
    history = result.history
    lines = []
    best = history[result.best_index] if result.best_index is not None and history else None
    if target is not None:
        viol = f"validation violation rate <= {target.max_violation_rate:.2%}"
        if target.max_cost_per_day is not None:
            lines.append(f"target: {viol} and cost <= {target.max_cost_per_day:.1f} EUR/day "
                         f"(C_ref {target.c_ref:.1f} + {target.cost_share_x:g} x (C_no_control "
                         f"{target.c_no_control:.1f} - C_ref))")
        else:
            lines.append(f"target: {viol}, violation-only ({target.note or 'no cost bound'})")
        met = next((r for r in history if target.met(r.get("val_violation_rate"), r.get("val_cost_per_day"))), None)
        if met is not None:
            lines.append(f"target met at iteration {met['iteration']}: {float(met['wall_s']):.1f} s of "
                         f"training clock, {int(met['env_gradient_evaluations'])} environment gradients")
        elif best is not None:
            gaps = []
            v = best.get("val_violation_rate")
            if v is not None and v > target.max_violation_rate:
                gaps.append(f"violation rate {v:.2%} vs <= {target.max_violation_rate:.2%} "
                            f"(+{(v - target.max_violation_rate) * 100:.2f} points)")
            c = best.get("val_cost_per_day")
            if target.max_cost_per_day is not None and c is not None and c > target.max_cost_per_day:
                gaps.append(f"cost {c:.1f} vs <= {target.max_cost_per_day:.1f} EUR/day "
                            f"(+{c - target.max_cost_per_day:.1f})")
            lines.append(f"target not met in {result.iterations} iterations "
                         f"({result.train_seconds:.1f} s of training clock); the best validation point "
                         f"(iteration {best['iteration']}) stayed at " + ("; ".join(gaps) or "the bound"))
    if best is not None and select_best:
        lines.append(f"selected checkpoint: iteration {best['iteration']} (wall_s {float(best['wall_s']):.1f} s), "
                     "the best validation point" + (" (target met at the lowest cost)" if target is not None
                                                    and target.met(best.get('val_violation_rate'),
                                                                   best.get('val_cost_per_day'))
                                                    else " (lowest violation rate)"))
    elif history:
        last = history[-1]
        lines.append(f"selected checkpoint: the final state, iteration {last['iteration']} "
                     f"(wall_s {float(last['wall_s']):.1f} s; select_best is off)")
    return lines


def _score(row: dict, target: Target | None) -> tuple:
    """Lower is better: target met first (then cost), else violation rate then cost."""
    viol, cost = row["val_violation_rate"], row["val_cost_per_day"]
    if target is not None and target.met(viol, cost):
        return (0, cost, viol)
    return (1, viol, cost)


def _fmt(value) -> str:
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.6g}"
    return str(value)


def _atomic_save(obj, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)
