"""`gridflex tune` on the embedded journal storage, the objective, the learners' search spaces and
the `--params` overlay in `gridflex run` and `gridflex compare` (issue #15 items 1-3 and 5).

Everything trains the tiny IEEE 13 scenario of tune_helpers for 1-2 iterations; the PostgreSQL
and killed-worker tests are in tests/test_tune_storage.py.
"""

from __future__ import annotations

import json
import math
import stat
from pathlib import Path

import pytest
import yaml

from tune_helpers import tune_argv, write_tiny

LEARNERS = ("gradmap", "gradmap_e1", "ssl_penalty", "ssl_pd", "ippo")
ONE_ITERATION = ["-o", "learner.params.budget_iterations=1", "-o", "learner.params.budget_seconds=null",
                 "-o", "learner.params.validation_interval_iterations=1"]


@pytest.fixture(scope="module")
def registry():
    from gridflex.plugins.registry import load_registry

    return load_registry()[1]


# ---------------------------------------------------------------------------------- objective
def test_censored_value_is_the_time_to_target_or_the_budget_plus_the_distance():
    from gridflex.learning.targets import Target
    from gridflex.tune.objective import Budget, censored_value

    target = Target(max_violation_rate=0.01, max_cost_per_day=105.0, cost_share_x=0.5, c_ref=100.0,
                    c_no_control=110.0)
    row = lambda it, s, v, c: {"iteration": it, "wall_s": s, "val_violation_rate": v, "val_cost_per_day": c}  # noqa: E731
    reached = [row(0, 0.0, 0.05, 120.0), row(2, 3.5, 0.005, 104.0), row(4, 7.0, 0.0, 101.0)]
    assert censored_value(reached, target, Budget(seconds=10.0)) == (3.5, 3.5, 0.0)
    assert censored_value(reached, target, Budget(iterations=8)) == (2.0, 2.0, 0.0)
    # not reached: d = (v - v*)/v* + (c - c_max)/(C_nc - C_ref), closest approach after iteration 0
    # (the untrained point, d = 4.5, is not counted); here min(2.0, 1.1) = 1.1 -> 10 x 2.1
    missed = [row(0, 0.0, 0.04, 120.0), row(1, 4.0, 0.03, 104.0), row(2, 8.0, 0.02, 106.0)]
    value, when, distance = censored_value(missed, target, Budget(seconds=10.0))
    assert when is None and math.isclose(distance, 1.1) and math.isclose(value, 21.0)
    violation_only = Target(0.01, None, 0.5, None, None)
    assert math.isclose(censored_value(missed, violation_only, Budget(iterations=4))[0], 4 * (1 + 1.0))
    strict = Target(0.0, None, 0.5, None, None)  # v* = 0: the gap in units of 1 % (0.01)
    assert math.isclose(censored_value(missed, strict, Budget(iterations=4))[2], 2.0)


# ---------------------------------------------------------------------------------- spaces
@pytest.mark.parametrize("name", LEARNERS)
def test_each_learner_declares_a_space_whose_first_trial_is_its_defaults(registry, name):
    import optuna

    from gridflex.tune.spaces import declared_names, first_trial_params, suggest

    cls = registry.get("learner", name)
    defaults = cls.Config().model_dump()
    first = first_trial_params(cls)
    assert set(first) == set(declared_names(cls)) and len(first) >= 5
    for key, value in first.items():  # rho_<family>: None means "as rho": it starts at rho's default
        assert value == (defaults[key] if defaults[key] is not None else defaults[key.rsplit("_", 1)[0]])
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1))
    params = suggest(cls, study.ask())
    cls.Config.model_validate(params)
    assert set(params) == set(first) and params != first


def test_a_learner_without_a_space_or_that_does_not_train_is_refused(registry):
    from gridflex.errors import UserError
    from gridflex.tune.spaces import first_trial_params, require_space

    gradmap = registry.get("learner", "gradmap")

    class Untuned(gradmap):
        name = "untuned"

        @classmethod
        def search_space(cls, trial):
            return {}

    class ThirdParty(gradmap):  # a third party gets tuning by declaring its space
        name = "third_party"

        @classmethod
        def search_space(cls, trial):
            return {"eta": trial.suggest_float("eta", 0.01, 1.0, log=True)}

    with pytest.raises(UserError, match="declares no search space"):
        require_space(Untuned)
    with pytest.raises(UserError, match="does not train"):
        require_space(registry.get("learner", "droop"))
    assert require_space(ThirdParty) == ["eta"] and first_trial_params(ThirdParty) == {"eta": 0.2}


def test_the_loop_stops_at_the_cap_and_counts_the_budget_of_pruned_trials(tmp_path):
    import optuna

    from gridflex.tune.storage import CapLock, open_storage, parse_storage, retry_callback
    from gridflex.tune.summary import consumed
    from gridflex.tune.workers import work

    spec = parse_storage(f"journal:{tmp_path / 'loop.journal'}", "loop")
    study = optuna.create_study(storage=open_storage(spec), study_name="loop")

    def objective(trial):
        x = trial.suggest_float("x", 0.0, 1.0)
        trial.set_user_attr("consumed_training_s", 1.5)
        trial.set_user_attr("consumed_iterations", 3)
        if trial.number % 2:
            raise optuna.TrialPruned()
        return x

    counts = work(study, objective, cap=4, lock=CapLock(spec, "loop"), kind="journal",
                  retry=retry_callback(3), heartbeat_s=1)
    assert (counts.complete, counts.pruned, counts.failed, counts.finished) == (2, 2, 0, 4)
    assert consumed(study) == {"training_s": 6.0, "iterations": 12, "instances": 0}


# ---------------------------------------------------------------------------------- the command
def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_tune_runs_a_study_on_the_journal_with_no_server(tmp_path, cli, monkeypatch, registry):
    from gridflex.tune.overlay import read_overlay
    from gridflex.tune.spaces import first_trial_params

    monkeypatch.chdir(tmp_path)
    scenario = write_tiny(tmp_path)
    argv = tune_argv(scenario, "s1", 3, "--seeds", "0,1", "--pruner", "wilcoxon")
    code, out, err = cli(*argv)
    assert code == 0, err
    assert "3/3 trials finished (3 complete, 0 pruned, 0 failed); best " in err and "budget consumed" in err
    folder, journal = tmp_path / "runs/studies/s1", tmp_path / "runs/studies/s1.journal"
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["counts"]["finished"] == 3 and summary["consumed"]["iterations"] == 3 * 2 * 2
    assert summary["consumed"]["instances"] == 6 and summary["settings"]["seeds"] == [0, 1]
    first = summary["history"][0]
    assert first["defaults"] and first["params"] == first_trial_params(registry.get("learner", "gradmap"))
    values = [row["values"][0] for row in summary["history"]]
    assert all(v > 2 for v in values)  # the target is never met: censored above the 2-iteration budget
    assert [i["seed"] for i in first["instances"]] == [0, 1] and len(set(values)) > 1
    best = min(summary["history"], key=lambda r: r["values"][0])
    assert read_overlay(folder / "tuned.yaml", registry).params == best["params"] == summary["best"]["params"]
    assert (folder / "history.png").stat().st_size > 1000
    assert _mode(journal) == 0o600 and _mode(journal.parent) == 0o700 and _mode(folder / "summary.json") == 0o600

    # the same command again: the study is complete, nothing runs; a larger cap continues it
    code, out, err = cli(*argv)
    assert code == 0 and json.loads((folder / "summary.json").read_text())["counts"]["finished"] == 3
    # a seeded sampler and an iteration budget: a second study repeats the first one's values
    code, out, err = cli(*tune_argv(scenario, "s2", 3, "--seeds", "0,1", "--pruner", "wilcoxon"))
    again = json.loads((tmp_path / "runs/studies/s2/summary.json").read_text())
    assert code == 0 and [r["values"][0] for r in again["history"]] == values
    # other settings on the same study are refused: two studies' results never mix
    code, out, err = cli(*tune_argv(scenario, "s1", 4, "--seeds", "0"))
    assert code == 2 and "other settings" in err and "seeds" in err and "Traceback" not in err


def test_multi_objective_mode_writes_the_pareto_front(tmp_path, cli, monkeypatch):
    monkeypatch.chdir(tmp_path)
    scenario = write_tiny(tmp_path)
    code, out, err = cli(*tune_argv(scenario, "m1", 2, "--multi-objective", iterations=1))
    assert code == 0, err
    summary = json.loads((tmp_path / "runs/studies/m1/summary.json").read_text())
    assert summary["settings"]["multi_objective"] and summary["pareto_front"]
    assert all(len(p["values"]) == 2 and p["values"][1] > 1000 for p in summary["pareto_front"])  # EUR/day
    assert (tmp_path / "runs/studies/m1/pareto.png").is_file()


# ---------------------------------------------------------------------------------- --params
def test_params_overlay_in_run_and_compare(tmp_path, cli, registry):
    from gridflex.scenario import load_scenario

    scenario = write_tiny(tmp_path)
    overlay = tmp_path / "tuned.yaml"
    overlay.write_text("# tuned\nlearner:\n  type: gradmap\n  params: {epochs: 1, minibatches: 1, eta: 0.05}\n")
    code, out, err = cli("run", str(scenario), "--params", str(overlay), "-o", "learner.params.eta=0.07",
                         *ONE_ITERATION, "--out", str(tmp_path / "run"), "--no-references")
    assert code == 0, err
    resolved = yaml.safe_load((tmp_path / "run/scenario.resolved.yaml").read_text())["learner"]["params"]
    assert (resolved["epochs"], resolved["minibatches"], resolved["eta"]) == (1, 1, 0.07)  # -o wins
    assert resolved["hidden_sizes"] == [8]  # the scenario's own params stay
    run_sha = json.loads((tmp_path / "run/metrics.json").read_text())["scenario_sha256"]
    code, out, err = cli("compare", str(scenario), "--learners", "gradmap", "--seeds", "0", "--params",
                         str(overlay), "-o", "learner.params.eta=0.07", *ONE_ITERATION, "--out", str(tmp_path / "cmp"))
    assert code == 0, err
    result = json.loads((tmp_path / "cmp/comparison.json").read_text())
    assert result["learners"]["gradmap"]["runs"][0]["scenario_sha256"] == run_sha  # the overlay was applied
    plain = load_scenario(scenario, [o for o in ONE_ITERATION if o != "-o"] + ["learner.params.eta=0.07"], registry)
    assert plain.sha256() != run_sha
    assert "learner.params.epochs=1" in result["learner_params"]["gradmap"]


@pytest.mark.parametrize("content, expected", [
    (None, "file not found"),
    ("learner: [", "not a readable overlay"),
    ("learner: {type: gradmap}\nseed: 3\n", "unexpected top-level key(s) seed"),
    ("learner: {type: gradmapp, params: {}}\n", "did you mean"),
    ("learner: {type: gradmap, params: {etaa: 0.1}}\n", "etaa"),
    ("learner: {type: gradmap, params: {eta: -1}}\n", "learner.params.eta"),
])
def test_a_bad_overlay_is_one_paragraph_and_exit_2(tmp_path, cli, content, expected):
    scenario = write_tiny(tmp_path)
    overlay = tmp_path / "bad.yaml"
    if content is not None:
        overlay.write_text(content)
    code, out, err = cli("run", str(scenario), "--params", str(overlay), "--out", str(tmp_path / "r"))
    assert code == 2 and expected in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1 and not (tmp_path / "r").exists()


def test_tune_refusals_exit_2(tmp_path, cli, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("GRIDFLEX_DB_PASSWORD", raising=False)
    scenario = write_tiny(tmp_path)
    overlay = tmp_path / "ssl.yaml"
    overlay.write_text("learner: {type: ssl_pd, params: {learning_rate: 0.01}}\n")
    cases = [
        (["tune", str(scenario), "--learner", "gradmapp", "--trials", "1"], "did you mean"),
        (["tune", str(scenario), "--learner", "droop", "--trials", "1"], "does not train"),
        (tune_argv(scenario, "x", 1, "--storage", "redis://host/0"), "not a storage"),
        (tune_argv(scenario, "x", 1, "--storage", "postgresql://me@localhost/db"), "no password source"),
        (tune_argv(scenario, "x", 0), "--trials must be at least 1"),
        (["tune", str(scenario), "--learner", "gradmap", "--trials", "1", "--budget-s", "0"], "positive"),
        (tune_argv(scenario, "bad name", 1), "--study"),
        (["compare", str(scenario), "--learners", "gradmap", "--out", str(tmp_path / "c"), "--params",
          str(overlay)], "not in --learners"),
    ]
    for argv, expected in cases:
        code, out, err = cli(*argv)
        assert code == 2 and expected in err and "Traceback" not in err, (argv, err)
        assert len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "runs").exists()


def test_median_pruner_reports_checkpoints_and_counts_the_partial_instance():
    import optuna

    from gridflex.learning.targets import Target
    from gridflex.tune.objective import Budget, Problem
    from gridflex.tune.study import _checkpoint_reporter

    study = optuna.create_study(pruner=optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=1))
    for _ in range(3):  # three earlier trials that were 10 iterations (no distance) at every checkpoint
        done = study.ask()
        for j in range(3):
            done.report(10.0, j)
        study.tell(done, 10.0)
    problem = Problem(Path("x.yaml"), [], None, Target(0.01, None, 0.5, None, None))
    trial = study.ask()
    spent = {"consumed_training_s": 0.0, "consumed_iterations": 0, "consumed_instances": 0}
    report = _checkpoint_reporter(trial, problem, Budget(iterations=10), 0, [], spent)
    bad = lambda it: {"iteration": it, "wall_s": it * 0.5, "val_violation_rate": 0.05, "val_cost_per_day": 1.0}  # noqa: E731
    report(bad(0))  # step 0: warm-up, never pruned
    with pytest.raises(optuna.TrialPruned):
        report(bad(4))  # provisional 10 x (1 + 4) = 50 > the median 10
    assert trial.storage.get_trial(trial._trial_id).intermediate_values == {0: 50.0, 1: 50.0}
    assert spent == {"consumed_training_s": 2.0, "consumed_iterations": 4, "consumed_instances": 1}


def test_a_trial_whose_worker_died_before_recording_itself_is_retried(tmp_path):
    import optuna

    from gridflex.tune.storage import open_storage, parse_storage, retry_callback
    from gridflex.tune.workers import WORKER_ATTR, reap_stale, worker_id

    spec = parse_storage(f"journal:{tmp_path / 'orphan.journal'}", "orphan")
    study = optuna.create_study(storage=open_storage(spec), study_name="orphan")
    orphan = study.ask()
    orphan.suggest_float("x", 0.0, 1.0)
    alive = study.ask()
    alive.set_user_attr(WORKER_ATTR, worker_id())  # this very process: alive, never reaped
    assert reap_stale(study, "journal", retry_callback(3), grace_s=3600) == []  # young: maybe still starting
    assert reap_stale(study, "journal", retry_callback(3), grace_s=0) == [orphan.number]
    states = {t.number: t.state.name for t in study.get_trials()}
    retry = study.get_trials()[-1]
    assert states[orphan.number] == "FAIL" and states[alive.number] == "RUNNING"
    assert retry.state.name == "WAITING" and retry.system_attrs["failed_trial"] == orphan.number
    assert retry.params == study.get_trials()[orphan.number].params
