"""Which pruner for `gridflex tune`: replay a study that ran with `--pruner none` under each.

Usage::

    gridflex tune A.yaml B.yaml --learner gradmap --trials 16 --budget-iterations 20 --seeds 0-2 \
        --pruner none --study measure
    python bench/tune_pruners.py runs/studies/measure/summary.json [--json OUT]

Every trial of the recorded study has its per-(scenario, seed) values and, per instance, its
validation curve (``[clock, d]`` per validation point; :mod:`gridflex.tune.objective`). The
trials are replayed in their order into fresh in-memory Optuna studies:

* ``wilcoxon``: ``WilcoxonPruner(p_threshold=0.1, n_startup_steps=2)`` on the instance values
  (step = instance index; never after the last instance), what ``gridflex tune`` does;
* ``median``: ``MedianPruner(n_startup_trials=3, n_warmup_steps=1)`` on the validation
  checkpoints: step = instance index x checkpoints + checkpoint, value = the mean over the
  instances so far of the finished values and, for the running instance, its provisional value
  (``t*`` if met by that checkpoint, else ``B (1 + d_min so far)``);
* ``wilcoxon@0.25``: the same with ``p_threshold=0.25`` (with n paired instances the exact
  one-sided test cannot go below p = 2^-n, so p 0.1 needs 4 instances before it can prune);
* ``none``: every trial runs to the end.

Printed per pruner: trials pruned, the budget consumed (share of the training clock of the
unpruned study), the best value found, whether the study's true best trial (the best of the
unpruned study) was pruned, and the pruned trials whose full value would have beaten the median
of all trials (wrongly pruned).
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path


def _provisional(curve: list, j: int, budget: float) -> float:
    """The censored value of an instance as known at its checkpoint ``j``."""
    rows = curve[: j + 1]
    for clock, d in rows:
        if d == 0:
            return clock
    trained = [d for clock, d in rows[1:] if d is not None] or [d for _, d in rows if d is not None]
    return budget * (1 + (min(trained) if trained else 1e6))


def replay(trials: list[dict], pruner_name: str, budget: float) -> dict:
    import warnings

    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    if pruner_name.startswith("wilcoxon"):  # "wilcoxon" (p 0.1, gridflex tune's) or "wilcoxon@P"
        p = float(pruner_name.split("@")[1]) if "@" in pruner_name else 0.1
        pruner = optuna.pruners.WilcoxonPruner(p_threshold=p, n_startup_steps=2)
    elif pruner_name == "median":
        pruner = optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=1)
    else:
        pruner = optuna.pruners.NopPruner()
    study = optuna.create_study(pruner=pruner)
    consumed = 0.0
    outcome = []
    for trial_doc in trials:
        inst = trial_doc["instances"]
        trial = study.ask()
        pruned = False
        done: list[float] = []
        for k, instance in enumerate(inst):
            curve = instance["curve"]
            if pruner_name == "median":
                for j, (clock, _) in enumerate(curve):
                    value = (sum(done) + _provisional(curve, j, budget)) / (k + 1)
                    trial.report(value, k * len(curve) + j)
                    if k * len(curve) + j > 0 and trial.should_prune():
                        consumed += clock
                        pruned = True
                        break
                if pruned:
                    break
            consumed += instance["train_clock"]
            done.append(instance["value"])
            if pruner_name.startswith("wilcoxon"):
                trial.report(instance["value"], k)
                if k + 1 < len(inst) and trial.should_prune():
                    pruned = True
                    break
        full = statistics.fmean(i["value"] for i in inst)
        if pruned:
            study.tell(trial, state=optuna.trial.TrialState.PRUNED)
        else:
            study.tell(trial, full)
        outcome.append((trial_doc["number"], pruned, full))
    values = [v for _, _, v in outcome]
    true_best = min(outcome, key=lambda o: o[2])
    median = statistics.median(values)
    kept = [v for _, p, v in outcome if not p]
    return {"pruner": pruner_name, "trials": len(outcome), "pruned": sum(p for _, p, _ in outcome),
            "consumed_clock": consumed, "best_found": min(kept) if kept else None,
            "true_best": true_best[2], "true_best_pruned": true_best[1],
            "wrongly_pruned": [n for n, p, v in outcome if p and v < median]}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("summary", type=Path, nargs="+", help="summary.json of studies run with --pruner none")
    parser.add_argument("--json", type=Path, help="write the results here")
    args = parser.parse_args(argv)
    results = []
    for path in args.summary:
        summary = json.loads(path.read_text())
        budget = summary["settings"]["budget"]
        amount = float(budget["seconds"] if budget["seconds"] is not None else budget["iterations"])
        unit_col = "train_seconds" if budget["seconds"] is not None else "iterations"
        trials = [t for t in summary["history"] if t["state"] == "COMPLETE"]
        for t in trials:
            for inst in t["instances"]:
                inst["train_clock"] = float(inst[unit_col])
        full = replay(trials, "none", amount)["consumed_clock"]
        for name in ("none", "wilcoxon", "wilcoxon@0.25", "median"):
            r = replay(trials, name, amount)
            r["study"] = summary["study"]
            r["consumed_share"] = r["consumed_clock"] / full if full else None
            results.append(r)
            print(f"{summary['study']:>16} {name:>13}: pruned {r['pruned']:2d}/{r['trials']}, budget "
                  f"{r['consumed_share']:.0%} of unpruned, best found {r['best_found']:.4g} (true best "
                  f"{r['true_best']:.4g}{', PRUNED' if r['true_best_pruned'] else ''}), wrongly pruned "
                  f"(better than the median): {r['wrongly_pruned']}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
