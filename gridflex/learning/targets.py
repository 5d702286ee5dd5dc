"""The absolute training target of a scenario and its sidecar file (docs/design.md §3, protocol).

Target: validation ``voltage_violation_rate`` (the scenario's tap treatment, evaluation limits ``v_limits_pu``)
``<= v*`` **and** validation ``cost_per_day <= C_ref + x (C_no_control - C_ref)``, with
``v* = target.max_violation_rate`` and ``x = target.cost_share_x`` from the scenario, and
``C_ref`` (centralised reference) and ``C_no_control`` the validation costs per day, read from a
sidecar JSON next to the scenario file, ``<scenario folder>/<scenario name>.targets.json``::

    {
      "scenario_sha256": "<targets_key(loaded)>",
      "c_ref": 8012.3,            # EUR/day on the validation days, or null (not computed yet)
      "c_no_control": 8164.7,     # EUR/day on the validation days
      "n_validation_days": 14,    # optional provenance fields, free form:
      "reference": "reference",   #   which controller gave c_ref
      "created": "2026-11-27T09:00:00Z"
    }

**Key.** ``scenario_sha256`` is :func:`targets_key`: the sha256 of the validated scenario with its
``learner`` section removed (canonical JSON), because the reference costs do not depend on which
learner a run trains, and ``gridflex compare`` swaps the learner while keeping the world. Execution
switches that change how, not what, is computed are left out too: ``environment.compile`` and the
solvers' ``sync_free`` (same answers, tested). A sidecar whose key does not match is ignored
(stale), and the run says so.

**Lookup** (:func:`read_target`; the rule is in docs/gradmap.md, "Target sidecar"): first the
sidecar beside the scenario; when it is missing or its key does not match, every shipped
scenario's sidecar (``gridflex.shipped.shipped_scenarios_dir()``) whose key matches, so a copy of
a shipped scenario in another folder (or under another file name) finds its target. The key, not
the file name, decides.

When ``c_ref`` is missing (null, no sidecar, or only stale ones) the target is **violation-only**
(``max_cost_per_day`` is ``None``), :attr:`Target.note` says why, and :func:`violation_only_line`
is the one line a run prints about it (with the command that computes the cost target).
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from gridflex.scenario import LoadedScenario

SIDECAR_SUFFIX = ".targets.json"


@dataclass(frozen=True)
class Target:
    """An absolute validation target (rates are shares, costs EUR/day)."""

    max_violation_rate: float
    max_cost_per_day: float | None  # None: violation-only target
    cost_share_x: float
    c_ref: float | None
    c_no_control: float | None
    note: str = ""
    reference: str = "reference"
    evaluated_on: str = "validation"

    def met(self, violation_rate: float | None, cost_per_day: float | None) -> bool:
        """Whether a validation point meets the target (missing values never do)."""
        if violation_rate is None or violation_rate > self.max_violation_rate:
            return False
        if self.max_cost_per_day is None:
            return True
        return cost_per_day is not None and cost_per_day <= self.max_cost_per_day

    def as_dict(self) -> dict:
        return asdict(self)

    def summary(self) -> dict:
        """The ``target`` object of ``comparison.json``."""
        return {"max_violation_rate": self.max_violation_rate,
                "max_cost_per_day": self.max_cost_per_day,
                "reference": self.reference, "evaluated_on": self.evaluated_on,
                "note": self.note}


#: left out of the key: which learner trains, and how the same functions are executed
KEY_EXCLUDE = {"learner": True, "environment": {"compile"},
               "solver": {"params": {"sync_free"}}, "evaluation_solver": {"params": {"sync_free"}}}


def targets_key(loaded: LoadedScenario) -> str:
    """sha256 of the validated scenario without its ``learner`` section and its execution switches
    ``environment.compile`` and the solvers' ``sync_free`` (see module docstring)."""
    text = loaded.config.model_dump_json(exclude=KEY_EXCLUDE)
    return hashlib.sha256(text.encode()).hexdigest()


def sidecar_path(loaded: LoadedScenario) -> Path:
    """``<scenario folder>/<scenario name>.targets.json``."""
    return loaded.source.parent / f"{loaded.config.name}{SIDECAR_SUFFIX}"


def _read_sidecar(path: Path) -> dict | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def find_sidecar(loaded: LoadedScenario) -> tuple[Path | None, dict | None, str]:
    """``(path, document, why)``: the sidecar whose key is :func:`targets_key` of ``loaded``,
    beside the scenario first, then among the shipped scenarios' sidecars; ``(None, None, why)``
    when none matches, ``why`` saying what was looked at."""
    from gridflex.shipped import shipped_scenarios_dir

    key = targets_key(loaded)
    own = sidecar_path(loaded)
    data = _read_sidecar(own) if own.exists() else None
    if data is not None and data.get("scenario_sha256") == key:
        return own, data, ""
    try:
        shipped = sorted(shipped_scenarios_dir().glob(f"*{SIDECAR_SUFFIX}"))
    except OSError:
        shipped = []
    for path in shipped:
        if path.resolve() == own.resolve():
            continue
        other = _read_sidecar(path)
        if other is not None and other.get("scenario_sha256") == key:
            return path, other, ""
    if own.exists():
        why = (f"sidecar {own.name} is for another version of the scenario (key mismatch: the scenario "
               "outside `learner`, overrides included, changed since it was computed)")
    else:
        why = f"no sidecar {own.name} beside the scenario"
    return None, None, why + " and no shipped scenario's sidecar has this scenario's key"


def read_target(loaded: LoadedScenario, path: Path | None = None) -> Target:
    """The scenario's :class:`Target`, its cost bound from the matching sidecar (see
    :func:`find_sidecar`; ``path`` reads that file only)."""
    spec = loaded.config.target
    c_ref = c_nc = None
    if path is not None:
        path = Path(path)
        data = _read_sidecar(path) if path.exists() else None
        if data is None:
            data, note = None, f"no sidecar {path.name}"
        elif data.get("scenario_sha256") != targets_key(loaded):
            data, note = None, f"sidecar {path.name} is for another scenario version (sha256 mismatch)"
        else:
            note = ""
    else:
        path, data, note = find_sidecar(loaded)
    if data is not None:
        c_ref, c_nc = data.get("c_ref"), data.get("c_no_control")
        if c_ref is None or c_nc is None:
            note = f"sidecar {path.name} has no c_ref yet"
    bound = None
    if c_ref is not None and c_nc is not None:
        bound = float(c_ref) + spec.cost_share_x * (float(c_nc) - float(c_ref))
    if bound is None:
        note = f"{note}: violation-only target"
    return Target(spec.max_violation_rate, bound, spec.cost_share_x,
                  None if c_ref is None else float(c_ref), None if c_nc is None else float(c_nc), note)


def violation_only_line(target: Target, loaded: LoadedScenario) -> str | None:
    """The one line a run prints when its target has no cost bound (else ``None``)."""
    if target.max_cost_per_day is not None:
        return None
    return (f"gridflex: this run's target is violation-only (validation violation rate <= "
            f"{target.max_violation_rate:.2%}, no cost bound): {target.note.removesuffix(': violation-only target')}; "
            f"compute the cost target with `gridflex targets {loaded.source}` (overrides outside "
            "`learner`: write them into a copy of the scenario and run it on the copy)")


def write_target_sidecar(loaded: LoadedScenario, c_no_control: float, c_ref: float | None,
                         path: Path | None = None, **extra) -> Path:
    """Write (atomically) the sidecar of ``loaded``; ``extra`` adds provenance fields."""
    path = sidecar_path(loaded) if path is None else Path(path)
    doc = {"scenario_sha256": targets_key(loaded), "c_ref": c_ref, "c_no_control": c_no_control,
           "n_validation_days": loaded.config.data.n_validation_days,
           "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **extra}
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(doc, indent=2) + "\n")
    os.replace(tmp, path)
    return path


def time_to_target(rows: list[dict], target: Target, column: str = "wall_s") -> float | None:
    """Training-clock seconds (``wall_s``) of the first history row meeting ``target``; with
    ``column="env_gradient_evaluations"``, the environment gradients spent by then (the
    hardware-free measure of docs/design.md §3)."""
    for row in rows:
        if target.met(row.get("val_violation_rate"), row.get("val_cost_per_day")):
            return None if row.get(column) is None else float(row[column])
    return None
