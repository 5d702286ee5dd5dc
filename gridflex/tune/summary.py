"""A finished (or interrupted) study, as files a user can act on, beside the study.

``<out>/`` (default ``runs/studies/<study>/``):

* ``tuned.yaml``: the best trial's learner params as a ``--params`` overlay (:mod:`.overlay`);
  in the multi-objective mode the Pareto trial with the smallest time to target;
* ``summary.json``: study, storage (password-free), settings, trial counts, the consumed budget
  (every trial: complete, pruned, failed; so two learners' studies can be shown to be equal),
  best value and params, parameter importances (Optuna's default evaluator; ``null`` with a note
  when fewer than two trials completed), the optimisation history (one row per trial), and the
  Pareto front in the multi-objective mode;
* ``history.png`` (values and best so far against trial number), ``importances.png``,
  ``pareto.png`` (multi-objective).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from gridflex.tune.overlay import write_overlay
from gridflex.tune.workers import count_states

SETTINGS_ATTR = "gridflex_settings"


def consumed(study) -> dict:
    """Training budget consumed by every trial (complete, pruned, failed and running)."""
    seconds = iterations = instances = 0.0
    for trial in study.get_trials(deepcopy=False):
        seconds += float(trial.user_attrs.get("consumed_training_s", 0.0))
        iterations += int(trial.user_attrs.get("consumed_iterations", 0))
        instances += int(trial.user_attrs.get("consumed_instances", 0))
    return {"training_s": round(seconds, 3), "iterations": int(iterations), "instances": int(instances)}




def _finite(x):
    return None if x is None or not math.isfinite(float(x)) else float(x)


def history_rows(study) -> list[dict]:
    rows = []
    for t in study.get_trials(deepcopy=False):
        rows.append({"number": t.number, "state": t.state.name, "values": None if t.values is None else
                     [_finite(v) for v in t.values], "params": t.user_attrs.get("learner_params", t.params),
                     "defaults": bool(t.user_attrs.get("defaults", False)),
                     "retry_of": t.system_attrs.get("failed_trial"),
                     "consumed_training_s": t.user_attrs.get("consumed_training_s", 0.0),
                     "consumed_iterations": t.user_attrs.get("consumed_iterations", 0),
                     "instances": t.user_attrs.get("instances", [])})
    return rows


def write_summary(study, name: str, spec, settings, out: Path) -> dict:
    """Write ``summary.json``, the PNGs and ``tuned.yaml`` into ``out``; return the summary."""
    import optuna
    from optuna.trial import TrialState

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    counts = count_states(study)
    multi = len(study.directions) > 1
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    summary = {"study": name, "storage": spec.display, "settings": study.user_attrs.get(SETTINGS_ATTR),
               "cap": settings.trials, "counts": counts.__dict__ | {"finished": counts.finished},
               "consumed": consumed(study), "unit": settings.budget.unit,
               "best": None, "importances": None, "importances_note": "", "pareto_front": None,
               "history": history_rows(study)}
    best = None
    if complete:
        if multi:
            front = sorted(study.best_trials, key=lambda t: t.values[0])
            summary["pareto_front"] = [{"number": t.number, "values": [_finite(v) for v in t.values],
                                        "params": t.user_attrs.get("learner_params", t.params)} for t in front]
            best = front[0]
        else:
            best = study.best_trial
        summary["best"] = {"number": best.number, "values": [_finite(v) for v in best.values],
                           "params": best.user_attrs.get("learner_params", best.params)}
    if len(complete) >= 2:
        try:
            target = (lambda t: t.values[0]) if multi else None
            import warnings

            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # e.g. "importances will be equal" on tiny studies
                summary["importances"] = optuna.importance.get_param_importances(study, target=target)
        except (RuntimeError, ValueError, ZeroDivisionError) as exc:
            summary["importances_note"] = f"not computed: {exc}"
    else:
        summary["importances_note"] = "not computed: fewer than two completed trials"
    files = [out / "summary.json"]
    if best is not None:
        overlay = write_overlay(out / "tuned.yaml", settings.learner, summary["best"]["params"], [
            f"gridflex tune: best trial {best.number} of study {name} ({spec.display})",
            f"value {best.values[0]:.6g} {settings.budget.unit} (censored time to target, mean over "
            f"{len(settings.seeds)} seed(s) x {len(summary['settings']['scenarios'])} scenario(s))",
            "use: gridflex run SCENARIO --params THIS_FILE  |  gridflex compare SCENARIO ... --params THIS_FILE"])
        files.append(overlay)
    files += _plots(summary, out, settings.budget.unit)
    summary["files"] = [str(p) for p in files]
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    return summary


def _plots(summary: dict, out: Path, unit: str) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    rows = [r for r in summary["history"] if r["state"] == "COMPLETE" and r["values"]]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    if rows:
        xs = [r["number"] for r in rows]
        ys = [r["values"][0] for r in rows]
        best = [min(ys[: i + 1]) for i in range(len(ys))]
        ax.plot(xs, ys, "o", label="trial value")
        ax.step(xs, best, where="post", label="best so far")
        ax.legend()
    ax.set_xlabel("trial number")
    ax.set_ylabel(f"censored time to target ({unit})")
    ax.set_title(f"{summary['study']}: optimisation history")
    fig.tight_layout()
    fig.savefig(out / "history.png", dpi=90)
    plt.close(fig)
    written.append(out / "history.png")
    if summary["importances"]:
        names = list(summary["importances"])[::-1]
        fig, ax = plt.subplots(figsize=(6, 0.4 * len(names) + 1.2))
        ax.barh(names, [summary["importances"][n] for n in names])
        ax.set_xlabel("importance (Optuna's default evaluator, normalised)")
        ax.set_title("parameter importances")
        fig.tight_layout()
        fig.savefig(out / "importances.png", dpi=90)
        plt.close(fig)
        written.append(out / "importances.png")
    if summary["pareto_front"] is not None:
        fig, ax = plt.subplots(figsize=(5, 4))
        pts = [r["values"] for r in rows if len(r["values"]) == 2]
        ax.plot([p[0] for p in pts], [p[1] for p in pts], "o", alpha=0.4, label="trials")
        front = [r["values"] for r in summary["pareto_front"]]
        ax.plot([p[0] for p in front], [p[1] for p in front], "o-", label="Pareto front")
        ax.set_xlabel(f"censored time to target ({unit})")
        ax.set_ylabel("validation cost (EUR/day)")
        ax.legend()
        fig.tight_layout()
        fig.savefig(out / "pareto.png", dpi=90)
        plt.close(fig)
        written.append(out / "pareto.png")
    return written
