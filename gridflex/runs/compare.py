"""``gridflex compare``: several learners x seeds on one scenario, same machine, one target.

Every run shares the scenario's world (feeder, households, devices: the scenario seed); the seed
list seeds the learners only (``execute_run(learner_seed=...)``), so the absolute target of
:mod:`gridflex.learning.targets` means the same for every run. Non-learning controllers are deterministic
and run once (first seed); their time to target is null.

``DIR/comparison.json``::

    {"target": {"max_violation_rate", "max_cost_per_day", "reference", "evaluated_on", "note"},
     "scenario": ..., "scenario_sha256": ..., "seeds": [...],
     "learners": {name: {"runs": [<metrics.json>, ...], "time_to_target_s": [float|null, ...],
                         "median": {<metric>: float|null, ...}, "iqr": {<metric>: [q25, q75]}}}}

Summary keys: every numeric test metric (the scenario's tap treatment), ``train_seconds``, ``power_flow_solves``,
``env_gradient_evaluations``, ``policy_updates``, ``time_to_target_s`` and
``time_to_violation_target_s`` (the loose, violation-only kind of target: the same ``v*``, no cost
bound); a null time ranks as +infinity (a median or quartile that lands on it is null).

:func:`rescore` recomputes both times of a finished comparison from its runs' ``history.csv``
with the scenario's *current* target, e.g. once a ``gridflex targets`` sidecar exists (the target
is fixed by the scenario and the reference, never by the runs, so this is the same protocol).
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
from pathlib import Path

import numpy as np

from gridflex.errors import UserError
from gridflex.runs.run import execute_run
from gridflex.scenario import load_scenario
from gridflex.learning.targets import Target, read_target, time_to_target

RUN_KEYS = ("train_seconds", "power_flow_solves", "env_gradient_evaluations", "policy_updates")
LEARNER_PARAMS = "learner.params."


def parse_seeds(text: str) -> list[int]:
    """``"0-4"`` -> [0, 1, 2, 3, 4]; ``"0,3,7"`` -> [0, 3, 7]; ranges and lists mix."""
    seeds: list[int] = []
    try:
        for part in text.split(","):
            part = part.strip()
            if "-" in part:
                lo, hi = (int(x) for x in part.split("-", 1))
                if hi < lo:
                    raise ValueError
                seeds.extend(range(lo, hi + 1))
            elif part:
                seeds.append(int(part))
    except ValueError:
        raise UserError(f"--seeds {text!r}: expected e.g. 0-4 or 0,2,5") from None
    if not seeds:
        raise UserError("--seeds is empty")
    return seeds


def learner_overrides(name: str, trains: bool, scenario_learner: str | None, overrides: list[str],
                      own: list[str] = ()) -> list[str]:
    """The scenario overrides of one learner's runs: its type, its params (a scenario's params
    for another learner are dropped), ``own`` (this learner's ``learner.params.*`` from a
    ``--params`` overlay), then ``learner.params.*`` overrides for learners that train
    (non-learning controllers take no params)."""
    out = [o for o in overrides if not o.startswith(LEARNER_PARAMS)]
    out.append(f"learner.type={name}")
    if scenario_learner != name:
        out.append("learner.params={}")
    if trains:
        out += list(own) + [o for o in overrides if o.startswith(LEARNER_PARAMS)]
    return out


def summarise(values: list[float | None]) -> tuple[float | None, list[float | None]]:
    """Median and [q25, q75] with ``None`` as +infinity (a result at infinity is ``None``)."""
    arr = np.array([math.inf if v is None else float(v) for v in values], dtype=float)
    if arr.size == 0:
        return None, [None, None]

    def finite(x: float) -> float | None:
        return None if not math.isfinite(x) else float(x)

    quantiles = np.quantile(arr, [0.25, 0.5, 0.75], method="lower" if np.isinf(arr).any() else "linear")
    return finite(quantiles[1]), [finite(quantiles[0]), finite(quantiles[2])]


def machine_load() -> str:
    """The machine's load and thread count, printed beside wall-clock timings (a training clock
    measured on a busy machine is not comparable to one measured on a quiet one)."""
    import os

    import torch

    try:
        load = "load average {:.2f} {:.2f} {:.2f} (1/5/15 min)".format(*os.getloadavg())
    except (OSError, AttributeError):
        load = "load average unavailable"
    return (f"machine: {load}, {os.cpu_count()} CPUs, {torch.get_num_threads()} torch threads, "
            f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}")


def compare(scenario: str | Path | None, learners: list[str], seeds: list[int], out_dir: Path, *,
            overrides: list[str] = (), registry=None, pm=None, progress: bool = True,
            echo=print, learner_params: dict[str, list[str]] | None = None, jobs: int = 1,
            reuse: dict[str, Path] | None = None) -> dict:
    """Run every learner with every seed; write and return ``comparison.json``.

    ``learner_params``: per learner, its own ``learner.params.KEY=VALUE`` overrides (``--params``
    overlays), recorded in ``comparison.json`` as ``learner_params``. ``jobs`` > 1 runs the
    (learner, seed) runs in that many worker processes (:mod:`gridflex.runs.compare_workers`), each
    on its own CPU core with one thread; the results are the same as with ``jobs=1``, in the same
    order. ``reuse``: a deterministic (non-training) controller's finished ``metrics.json`` to
    take instead of running it (e.g. the reference, hours per scenario); it must be of the same
    scenario and test days and is marked ``reused_from`` (:func:`reused_run`)."""
    if registry is None:
        from gridflex.plugins.registry import load_registry

        pm, registry = load_registry()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    base = load_scenario(scenario, [o for o in overrides if not o.startswith(LEARNER_PARAMS)], registry)
    scenario_learner = base.config.learner.type if base.config.learner else None
    target = read_target(base)
    reuse = dict(reuse or {})
    result = {"target": target.summary(), "scenario": base.config.name,
              "scenario_sha256": base.sha256(), "seeds": list(seeds), "learners": {},
              "learner_params": {k: list(v) for k, v in (learner_params or {}).items()},
              "jobs": jobs}
    tasks = []  # (learner, seed, scenario overrides), in the order the summary lists them
    for name in learners:
        if name in reuse:
            continue
        cls = registry.get("learner", name)
        own = (learner_params or {}).get(name, [])
        learner_ov = learner_overrides(name, cls.trains, scenario_learner, list(overrides), own)
        load_scenario(scenario, learner_ov, registry)  # every learner's scenario is valid before any run
        tasks += [(name, seed, learner_ov) for seed in (seeds if cls.trains else seeds[:1])]
    reused = {name: reused_run(Path(path), base, registry, name) for name, path in reuse.items()}
    outputs = _run_tasks(scenario, tasks, out_dir, jobs, registry, pm, progress, echo)
    for name in learners:
        if name in reused:
            result["learners"][name] = _learner_summary([reused[name]], [(None, None)], [(None, None)])
            continue
        runs, times, loose = [], [], []
        for (task_name, _seed, _), (doc, rows) in zip(tasks, outputs):
            if task_name != name:
                continue
            runs.append(doc)
            times.append(_to_target(rows, target))  # (None, None) without a history
            loose.append(_to_target(rows, _violation_only(target)))
            _add_final_duals(doc, rows)
        result["learners"][name] = _learner_summary(runs, times, loose)
    result["machine"] = machine_load()  # at the end of the runs; each run's start is in the output
    echo(f"[compare] done; {result['machine']}")
    path = out_dir / "comparison.json"
    path.write_text(json.dumps(result, indent=2))
    return result


def _run_tasks(scenario, tasks: list[tuple], out_dir: Path, jobs: int, registry, pm, progress: bool,
               echo) -> list[tuple[dict, list[dict]]]:
    """(metrics.json document, validation rows) of every task, in task order."""
    if jobs > 1 and len(tasks) > 1:
        from gridflex.runs.compare_workers import run_in_workers

        return run_in_workers(scenario, tasks, out_dir, jobs, echo, machine_load)
    outputs = []
    for name, seed, learner_ov in tasks:
        echo(f"[compare] {name} seed {seed}; {machine_load()}")
        loaded = load_scenario(scenario, learner_ov, registry)
        run = execute_run(loaded, registry, pm, out_dir / name / f"seed{seed}", learner_seed=seed,
                          references=False, progress=progress)
        outputs.append((run.metrics, run.history))  # history in memory: the rows of history.csv
    return outputs


def reused_run(path: Path, base, registry, name: str) -> dict:
    """A finished run's ``metrics.json`` taken into a comparison instead of running it again.

    Only for a controller that does not train (its result depends on the world alone), of the
    same scenario name, tap treatment and number of test days. The scenario's sha256 may differ
    (e.g. a schema key added since): both are recorded, ``reused_from`` names the file."""
    cls = registry.get("learner", name)
    problem = None
    try:
        doc = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise UserError(f"--reuse {name}={path}: cannot read it as a metrics.json ({exc}); give the "
                        "metrics.json of a finished `gridflex run` of that controller") from None
    if cls.trains:
        problem = f"{name} trains, so its result depends on the seed and the training clock; only " \
                  "controllers that do not train can be reused"
    elif not isinstance(doc, dict) or doc.get("learner") != name:
        problem = f"it is a run of {doc.get('learner') if isinstance(doc, dict) else None!r}, not of {name!r}"
    else:
        cfg = base.config
        mismatch = [f"{key} {doc.get(key)!r} (this scenario: {want!r})" for key, want in (
            ("scenario", cfg.name), ("n_test_days", cfg.data.n_test_days),
            ("tap_treatment", cfg.feeder.tap_treatment)) if key in doc and doc.get(key) != want]
        if "test" not in doc or mismatch:
            problem = "it does not match this scenario: " + ("; ".join(mismatch) or "no test metrics")
    if problem:
        raise UserError(f"--reuse {name}={path}: {problem}.")
    doc = dict(doc)
    doc["reused_from"] = str(path)
    doc["reused_scenario_sha256"] = doc.get("scenario_sha256")
    return doc


def _violation_only(target: Target) -> Target:
    return dataclasses.replace(target, max_cost_per_day=None)


def _history_rows(run_dir: Path) -> list[dict]:
    """The validation rows of ``run_dir/history.csv`` as floats (empty without a history)."""
    path = Path(run_dir) / "history.csv"
    if not path.exists():
        return []
    with path.open() as handle:
        return [{k: (float(v) if v not in ("", None) else None) for k, v in row.items()}
                for row in csv.DictReader(handle)]


def rescore(out_dir: Path, scenario: str | Path | None, *, overrides: list[str] = (), registry=None) -> dict:
    """Recompute ``time_to_target_s`` (the scenario's current target) and
    ``time_to_violation_target_s`` of ``out_dir/comparison.json`` from the runs' histories;
    rewrite the file and return it (module docstring)."""
    if registry is None:
        from gridflex.plugins.registry import load_registry

        _, registry = load_registry()
    out_dir = Path(out_dir)
    path = out_dir / "comparison.json"
    result = json.loads(path.read_text())
    base = load_scenario(scenario, [o for o in overrides if not o.startswith(LEARNER_PARAMS)], registry)
    target = read_target(base)
    result["target"] = target.summary()
    for name, summary in result["learners"].items():
        if not registry.get("learner", name).trains:
            continue
        seeds = result["seeds"][: len(summary["runs"])]  # runs are in seed order
        histories = [_history_rows(out_dir / name / f"seed{seed}") for seed in seeds]
        times = [_to_target(rows, target) for rows in histories]
        loose = [_to_target(rows, _violation_only(target)) for rows in histories]
        for run, rows in zip(summary["runs"], histories):
            _add_final_duals(run, rows)
        result["learners"][name] = _learner_summary(summary["runs"], times, loose)
    path.write_text(json.dumps(result, indent=2))
    return result


def _to_target(rows: list[dict], target: Target) -> tuple[float | None, float | None]:
    """(training-clock seconds, environment gradients) at the first row meeting ``target``."""
    return time_to_target(rows, target), time_to_target(rows, target, "env_gradient_evaluations")


def _add_final_duals(doc: dict, rows: list[dict]) -> None:
    """Copy the last validation row's per-family dual columns (``dual_*``) into ``doc["duals"]``."""
    if rows:
        doc["duals"] = {k: v for k, v in rows[-1].items() if k.startswith("dual_") and v is not None}


def _learner_summary(runs: list[dict], times: list[tuple], loose: list[tuple]) -> dict:
    """Medians and IQRs per learner; ``times``/``loose``: (seconds, env gradients) per run."""
    keys = [k for k, v in runs[0]["test"].items() if isinstance(v, (int, float)) and not isinstance(v, bool)]
    columns = {k: [r["test"].get(k) for r in runs] for k in keys}
    columns.update({k: [r.get(k) for r in runs] for k in RUN_KEYS})
    columns["time_to_target_s"] = [t[0] for t in times]
    columns["gradients_to_target"] = [t[1] for t in times]
    columns["time_to_violation_target_s"] = [t[0] for t in loose]
    columns["gradients_to_violation_target"] = [t[1] for t in loose]
    dual_keys = sorted({k for r in runs for k in r.get("duals", {})})
    columns.update({k: [r.get("duals", {}).get(k) for r in runs] for k in dual_keys})
    median, iqr = {}, {}
    for key, values in columns.items():
        if key.startswith("dual_") and any(v is None for v in values):
            values = [v for v in values if v is not None]
        median[key], iqr[key] = summarise(values)
    return {"runs": runs, "time_to_target_s": columns["time_to_target_s"],
            "gradients_to_target": columns["gradients_to_target"],
            "time_to_violation_target_s": columns["time_to_violation_target_s"],
            "gradients_to_violation_target": columns["gradients_to_violation_target"],
            "median": median, "iqr": iqr}


def comparison_table(result: dict) -> str:
    """Medians with IQR of the headline numbers, one row per learner."""
    def cell(summary, key, fmt):
        m, (lo, hi) = summary["median"].get(key), summary["iqr"].get(key, [None, None])
        if m is None:
            return "never" if key.startswith(("time_to", "gradients_to")) else "-"
        show = lambda x: "inf" if x is None else fmt.format(x)  # noqa: E731
        return f"{fmt.format(m)} [{show(lo)}, {show(hi)}]"

    cols = (("time_to_target_s", "time to target s", "{:.1f}"), ("gradients_to_target", "env grads to target", "{:.0f}"),
            ("time_to_violation_target_s", "time to V target s", "{:.1f}"),
            ("gradients_to_violation_target", "env grads to V target", "{:.0f}"), ("cost_per_day", "cost/day", "{:.1f}"),
            ("voltage_violation_rate", "V viol.", "{:.2%}"), ("train_seconds", "train s", "{:.0f}"),
            ("env_gradient_evaluations", "env grads", "{:.0f}"))
    header = ["learner", "runs"] + [c[1] + " median [IQR]" for c in cols]
    rows = []
    for name, summary in result["learners"].items():
        rows.append([name, str(len(summary["runs"]))] + [cell(summary, k, f) for k, _, f in cols])
    widths = [max(len(r[i]) for r in [header] + rows) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths)) for row in [header] + rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    t = result["target"]
    bound = "none (violation-only)" if t["max_cost_per_day"] is None else f"{t['max_cost_per_day']:.1f}"
    lines.append(f"target: validation V viol. <= {t['max_violation_rate']:.2%}, cost/day <= {bound}"
                 + (f"  ({t['note']})" if t.get("note") else ""))
    return "\n".join(lines)
