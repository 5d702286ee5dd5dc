"""Read the folders ``gridflex report`` is given into :class:`Section` objects (numbers only; no
aggregation, no drawing).

Two kinds of folder are understood:

* a **comparison folder** of ``gridflex compare``: ``comparison.json`` plus run folders
  ``<learner>/seed<k>/`` (``metrics.json``, ``history.csv`` for a learner that trains,
  ``schedules.npz``). A run entry with ``"reused_from"`` (a deterministic controller's metrics
  reused from elsewhere) has no run folder: its numbers are reported, its pictures are not;
* a **run folder** of ``gridflex run``: ``metrics.json``, ``history.csv``, ``schedules.npz`` and
  ``baselines/<name>/`` (``metrics.json``, ``schedules.npz``).

Times to target of a comparison are comparison.json's (the comparison's protocol); those of a run
folder are recomputed from its ``history.csv`` with the target recorded in its ``metrics.json``.
"""

from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from gridflex.errors import UserError

KINDS_ALLOWED = ("a comparison folder (holding comparison.json, written by `gridflex compare`) or a "
                 "run folder (holding metrics.json, written by `gridflex run`)")


@dataclass
class RunRecord:
    """One (learner, seed) run: its ``metrics.json`` document and what lies beside it.

    ``history``: validation rows of ``history.csv`` as floats (empty: no history);
    ``time_to_target_s`` / ``gradients_to_target``: training-clock seconds / environment gradients
    at the first validation point meeting the target (None: never met, or no training);
    ``folder``: the run folder (None for a reused run); ``schedules``: its ``schedules.npz`` or None.
    """

    learner: str
    seed: int | None
    metrics: dict
    history: list[dict] = field(default_factory=list)
    time_to_target_s: float | None = None
    gradients_to_target: float | None = None
    folder: Path | None = None
    schedules: Path | None = None
    reused_from: str | None = None

    @property
    def trains(self) -> bool:
        """Whether the run trained (it spent environment gradients or policy updates)."""
        return bool(self.history) or bool(self.metrics.get("env_gradient_evaluations")) or bool(
            self.metrics.get("policy_updates"))


@dataclass
class Section:
    """One folder given to ``gridflex report``: one scenario, its target and every learner's runs
    (``learners``: name -> runs in seed order, the comparison's learner order)."""

    source: Path
    kind: str  # "comparison" | "run"
    scenario: str
    target: dict
    learners: dict[str, list[RunRecord]]
    machine: str | None = None
    notes: list[str] = field(default_factory=list)


def read_history(path: Path) -> list[dict]:
    """The rows of a ``history.csv`` as floats (an empty cell is None); [] without the file."""
    if not path.is_file():
        return []
    with path.open() as handle:
        return [{k: _float_or_none(v) for k, v in row.items()} for row in csv.DictReader(handle)]


def _float_or_none(text: str | None) -> float | None:
    try:
        return None if text in ("", None) else float(text)
    except ValueError:
        return None


def _read_json(path: Path, what: str) -> dict:
    try:
        doc = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UserError(f"{path}: cannot read the {what} ({exc}); `gridflex report` reads {KINDS_ALLOWED}. "
                        "Re-run the command that wrote it, or give another folder.") from None
    if not isinstance(doc, dict):
        raise UserError(f"{path}: the {what} is not a JSON object; `gridflex report` reads {KINDS_ALLOWED}.")
    return doc


def read_folder(folder: Path) -> Section:
    """A :class:`Section` from a comparison folder or a run folder; :class:`UserError` otherwise."""
    folder = Path(folder)
    if not folder.exists():
        raise UserError(f"{folder}: no such folder; `gridflex report` reads {KINDS_ALLOWED}.")
    if not folder.is_dir():
        raise UserError(f"{folder} is a file, not a folder; `gridflex report` reads {KINDS_ALLOWED}.")
    if (folder / "comparison.json").is_file():
        return read_comparison(folder)
    if (folder / "metrics.json").is_file():
        return read_run_folder(folder)
    raise UserError(f"{folder} holds neither comparison.json nor metrics.json; `gridflex report` reads "
                    f"{KINDS_ALLOWED}.")


def read_comparison(folder: Path) -> Section:
    """The runs of ``folder/comparison.json`` (see the module docstring)."""
    path = folder / "comparison.json"
    doc = _read_json(path, "comparison file")
    try:
        learners_doc = doc["learners"]
        target = doc["target"]
        seeds = list(doc["seeds"])
        if not isinstance(learners_doc, dict) or not learners_doc or not isinstance(target, dict):
            raise TypeError("'learners' must be a non-empty object and 'target' an object")
        learners: dict[str, list[RunRecord]] = {}
        for name, summary in learners_doc.items():
            runs = summary["runs"]
            times = summary.get("time_to_target_s") or [None] * len(runs)
            grads = summary.get("gradients_to_target") or [None] * len(runs)
            if not runs or len(times) != len(runs) or len(grads) != len(runs):
                raise TypeError(f"learner {name!r}: 'runs' is empty or its time lists have another length")
            records = []
            for k, metrics in enumerate(runs):
                if not isinstance(metrics, dict) or not isinstance(metrics.get("test"), dict):
                    raise TypeError(f"learner {name!r} run {k}: no 'test' metrics")
                seed = (metrics.get("seeds") or seeds[k: k + 1] or [None])[0]
                records.append(_comparison_run(folder, name, seed, metrics, times[k], grads[k]))
            learners[name] = records
    except (KeyError, TypeError, IndexError) as exc:
        raise UserError(f"{path}: damaged comparison file ({type(exc).__name__}: {exc}); expected the keys "
                        "target, seeds and learners{name: {runs, time_to_target_s, gradients_to_target}} that "
                        "`gridflex compare` writes. Re-run the comparison, or give a run folder instead.") from None
    return Section(source=folder, kind="comparison", scenario=str(doc.get("scenario", folder.name)),
                   target=target, learners=learners, machine=doc.get("machine"))


def _comparison_run(folder: Path, name: str, seed, metrics: dict, time_s, grads) -> RunRecord:
    reused = metrics.get("reused_from")
    run_dir = folder / name / f"seed{seed}"
    has_folder = reused is None and (run_dir / "metrics.json").is_file()
    schedules = run_dir / "schedules.npz" if has_folder and (run_dir / "schedules.npz").is_file() else None
    return RunRecord(
        learner=name, seed=None if seed is None else int(seed), metrics=metrics,
        history=read_history(run_dir / "history.csv") if has_folder else [],
        time_to_target_s=_finite(time_s), gradients_to_target=_finite(grads),
        folder=run_dir if has_folder else None, schedules=schedules,
        reused_from=None if reused is None else str(reused))


def _finite(value) -> float | None:
    return None if value is None or not math.isfinite(float(value)) else float(value)


def read_run_folder(folder: Path) -> Section:
    """The run's learner and its ``baselines/<name>/`` controllers (see the module docstring)."""
    from gridflex.learning.targets import Target, time_to_target

    metrics = _read_json(folder / "metrics.json", "run metrics file")
    if "learner" not in metrics or not isinstance(metrics.get("test"), dict):
        raise UserError(f"{folder / 'metrics.json'}: damaged run metrics (no 'learner' or 'test' metrics); "
                        f"`gridflex report` reads {KINDS_ALLOWED}.")
    target = metrics.get("target") or {}
    history = read_history(folder / "history.csv")
    gradients = None
    if history and target.get("max_violation_rate") is not None:
        rule = Target(max_violation_rate=float(target["max_violation_rate"]),
                      max_cost_per_day=target.get("max_cost_per_day"), cost_share_x=0.0, c_ref=None,
                      c_no_control=None)
        gradients = time_to_target(history, rule, "env_gradient_evaluations")
    seed = (metrics.get("seeds") or [None])[0]
    main = RunRecord(learner=str(metrics["learner"]), seed=seed, metrics=metrics, history=history,
                     time_to_target_s=_finite(metrics.get("time_to_target_s")), gradients_to_target=gradients,
                     folder=folder, schedules=_if_file(folder / "schedules.npz"))
    learners = {main.learner: [main]}
    for sub in sorted((folder / "baselines").glob("*")):
        if (sub / "metrics.json").is_file():
            doc = _read_json(sub / "metrics.json", "baseline metrics file")
            name = str(doc.get("learner", sub.name))
            learners[name] = [RunRecord(learner=name, seed=(doc.get("seeds") or [None])[0], metrics=doc,
                                        folder=sub, schedules=_if_file(sub / "schedules.npz"))]
    return Section(source=folder, kind="run", scenario=str(metrics.get("scenario", folder.name)),
                   target={k: target.get(k) for k in ("max_violation_rate", "max_cost_per_day", "note")},
                   learners=learners)


def _if_file(path: Path) -> Path | None:
    return path if path.is_file() else None
