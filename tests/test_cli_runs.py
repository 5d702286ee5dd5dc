"""`gridflex run` output folders never lose or mix results; path and device mistakes exit 2.

Issue #18. Every refusal: exit 2, one message, no traceback, and the folder byte-identical.
One tiny run (IEEE 13, 4 batteries, 1 iteration) is trained once per module and copied per test.
"""

from __future__ import annotations

import csv
import fractions
import shutil
from pathlib import Path

import pytest
import torch

from conftest import tiny_gradmap_scenario

TINY = tiny_gradmap_scenario("tiny13runs", budget_iterations=1)


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """(scenario path, finished run folder, captured output of the run)."""
    from gridflex.cli.main import main

    base = tmp_path_factory.mktemp("runs")
    scenario = base / "tiny13runs.yaml"
    scenario.write_text(TINY)
    out = base / "run"
    import contextlib
    import io

    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        code = main(["run", str(scenario), "--out", str(out), "--no-references"])
    assert code == 0, stderr.getvalue()
    return scenario, out, stdout.getvalue() + stderr.getvalue()


@pytest.fixture
def run_dir(finished, tmp_path):
    scenario, out, _ = finished
    copy = tmp_path / "run"
    shutil.copytree(out, copy)
    return scenario, copy


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def refused(result, *needles: str) -> str:
    code, out, err = result
    text = out + err
    assert code == 2, text
    assert "Traceback" not in text
    for needle in needles:
        assert needle in text, text
    return text


def history_iterations(folder: Path) -> list[int]:
    with (folder / "history.csv").open() as fh:
        return [int(row["iteration"]) for row in csv.DictReader(fh)]


# ------------------------------------------------------------------ --resume refusals


def test_resume_without_out(cli, finished):
    refused(cli("run", str(finished[0]), "--resume"), "--resume needs --out RUN_DIR")


def test_resume_and_force_exclude_each_other(cli, run_dir):
    scenario, folder = run_dir
    before = snapshot(folder)
    refused(cli("run", str(scenario), "--out", str(folder), "--resume", "--force"), "--force")
    assert snapshot(folder) == before


def test_resume_missing_folder(cli, finished, tmp_path):
    missing = tmp_path / "nope"
    refused(cli("run", str(finished[0]), "--out", str(missing), "--resume"), "does not exist", str(missing))
    assert not missing.exists()


def test_resume_folder_without_checkpoint(cli, run_dir):
    scenario, folder = run_dir
    (folder / "checkpoint.pt").unlink()
    before = snapshot(folder)
    refused(cli("run", str(scenario), "--out", str(folder), "--resume"), "no checkpoint.pt")
    assert snapshot(folder) == before


def test_resume_with_different_training_config(cli, run_dir):
    scenario, folder = run_dir
    before = snapshot(folder)
    text = refused(cli("run", str(scenario), "--out", str(folder), "--resume",
                       "-o", "learner.params.hidden_sizes=[4]", "-o", "devices[0].count=5",
                       "-o", "learner.params.budget_iterations=3"),
                   "learner.params.hidden_sizes", "devices[0].count", "budget_iterations may differ")
    assert "learner.params.budget_iterations (" not in text  # the budget is free to change
    assert snapshot(folder) == before


def test_resume_truncated_checkpoint(cli, run_dir):
    scenario, folder = run_dir
    ckpt = folder / "checkpoint.pt"
    ckpt.write_bytes(ckpt.read_bytes()[: ckpt.stat().st_size // 2])
    before = snapshot(folder)
    refused(cli("run", str(scenario), "--out", str(folder), "--resume"), str(ckpt), "damaged")
    assert snapshot(folder) == before


def test_resume_checkpoint_refused_by_weights_only(cli, run_dir):
    scenario, folder = run_dir
    ckpt = folder / "checkpoint.pt"
    torch.save({"format": 1, "learner": fractions.Fraction(1, 3)}, ckpt)  # not on the safe list
    before = snapshot(folder)
    refused(cli("run", str(scenario), "--out", str(folder), "--resume"), str(ckpt), "weights_only=True")
    assert snapshot(folder) == before


def test_resume_continues_and_says_from_where(cli, run_dir):
    scenario, folder = run_dir
    code, out, err = cli("run", str(scenario), "--out", str(folder), "--resume", "--no-references",
                         "-o", "learner.params.budget_iterations=2")
    assert code == 0, err
    assert "resumed from iteration 1 (" in err and "s of training clock)" in err
    assert history_iterations(folder) == [0, 1, 2]  # the checkpoint's row is not validated twice


# ------------------------------------------------------------------ finished runs and --force


def test_finished_run_is_not_overwritten(cli, run_dir):
    scenario, folder = run_dir
    before = snapshot(folder)
    refused(cli("run", str(scenario), "--out", str(folder), "--no-references"),
            "already holds a finished run", "--force", "--resume")
    assert snapshot(folder) == before


def test_force_clears_the_previous_run_first(cli, run_dir):
    scenario, folder = run_dir
    (folder / "baselines" / "droop").mkdir(parents=True)
    (folder / "baselines" / "droop" / "metrics.json").write_text("{}")
    (folder / "plots" / "stale.png").write_bytes(b"old")
    (folder / "notes.txt").write_text("mine")  # not a run output: kept
    code, out, err = cli("run", str(scenario), "--out", str(folder), "--no-references", "--force")
    assert code == 0, err
    assert not (folder / "baselines").exists()
    assert not (folder / "plots" / "stale.png").exists()
    assert (folder / "notes.txt").read_text() == "mine"
    assert (folder / "metrics.json").exists() and history_iterations(folder) == [0, 1]


# ------------------------------------------------------------------ end-of-training report


def test_end_of_training_report_is_printed(finished):
    text = finished[2]
    assert "target: validation violation rate <= 50.00%, violation-only (no sidecar" in text
    assert "target met at iteration 0: " in text and " s of training clock, 0 environment gradients" in text
    assert "selected checkpoint: iteration" in text and "wall_s" in text


def test_outcome_report_cost_bound_and_not_met():
    from gridflex.learning.targets import Target
    from gridflex.learning.training import TrainingResult, outcome_report

    target = Target(0.01, 8100.0, 0.5, 8000.0, 8200.0)
    rows = [{"iteration": 0, "wall_s": 0.0, "env_gradient_evaluations": 0,
             "val_violation_rate": 0.05, "val_cost_per_day": 8300.0},
            {"iteration": 6, "wall_s": 56.3, "env_gradient_evaluations": 12,
             "val_violation_rate": 0.02, "val_cost_per_day": 8150.0}]
    lines = outcome_report(TrainingResult(60.0, 3.0, 7, rows, None, 1), target)
    assert lines[0].startswith("target: validation violation rate <= 1.00% and cost <= 8100.0 EUR/day")
    assert "target not met in 7 iterations" in lines[1] and "iteration 6" in lines[1]
    assert "+1.00 points" in lines[1] and "+50.0" in lines[1]
    assert lines[2].startswith("selected checkpoint: iteration 6 (wall_s 56.3 s)")
    rows[1]["val_violation_rate"], rows[1]["val_cost_per_day"] = 0.0, 8050.0
    lines = outcome_report(TrainingResult(60.0, 3.0, 7, rows, 56.3, 1), target)
    assert lines[1] == "target met at iteration 6: 56.3 s of training clock, 12 environment gradients"


# ------------------------------------------------------------------ output paths


@pytest.fixture
def a_file(tmp_path):
    path = tmp_path / "file.txt"
    path.write_text("x")
    return path


def test_run_out_is_a_file(cli, finished, a_file):
    refused(cli("run", str(finished[0]), "--out", str(a_file)), "is an existing file")
    assert a_file.read_text() == "x"


def test_run_out_under_a_file(cli, finished, a_file):
    refused(cli("run", str(finished[0]), "--out", str(a_file / "run")), "is a file, not a folder")


def test_compare_out_paths(cli, finished, a_file):
    refused(cli("compare", str(finished[0]), "--learners", "gradmap", "--out", str(a_file)),
            "is an existing file")
    refused(cli("compare", str(finished[0]), "--learners", "gradmap", "--out", str(a_file / "c")),
            "is a file, not a folder")


def test_pf_json_paths(cli, a_file, tmp_path):
    refused(cli("pf", "ieee13", "--json", str(tmp_path)), "is an existing folder")
    refused(cli("pf", "ieee13", "--json", str(a_file / "pf.json")), "is a file, not a folder")


def test_verify_json_paths(cli, a_file, tmp_path):
    refused(cli("verify", str(tmp_path), "--json", str(tmp_path)), "is an existing folder")
    refused(cli("verify", str(tmp_path), "--json", str(a_file / "v.json")), "is a file, not a folder")


# (device mistakes of run, pf, compare and targets: tests/test_cli_fuzz.py)


def test_default_out_folder_unusable(cli, finished, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs").write_text("a file where runs/ would go")
    refused(cli("run", str(finished[0])), "default output folder", "is a file, not a folder")


# ---------------------------------------------------------------- remaining rough edges (issue 18 item 8)
def test_world_build_mistake_leaves_no_half_written_folder(tmp_path, cli):
    from gridflex.scenario import default_scenario_path

    out = tmp_path / "run"
    code, _, err = cli("run", str(default_scenario_path()), "-o", "devices[0].count=5000", "--out", str(out))
    assert code == 2 and "Traceback" not in err and "eligible households" in err
    assert not out.exists()


def test_unknown_shipped_feeder_lists_the_shipped_ones(cli):
    code, _, err = cli("pf", "ieee124")
    assert code == 2 and "shipped feeder by name: ieee13, ieee34mod1, ieee34mod2, ieee123, ieee8500" in err


def test_blocked_plugin_is_named_where_its_component_is_missing(cli, monkeypatch):
    from gridflex.scenario import default_scenario_path

    monkeypatch.setenv("GRIDFLEX_BLOCK_PLUGINS", "gradmap")
    code, _, err = cli("validate", str(default_scenario_path()))
    assert code == 2 and "unknown learner 'gradmap'" in err
    assert "blocked by GRIDFLEX_BLOCK_PLUGINS: gradmap" in err


def test_verify_on_a_compare_folder_points_at_its_runs(tmp_path, cli):
    (tmp_path / "comparison.json").write_text("{}")
    (tmp_path / "gradmap" / "seed0").mkdir(parents=True)
    (tmp_path / "gradmap" / "seed0" / "schedules.npz").write_bytes(b"")
    code, _, err = cli("verify", str(tmp_path))
    assert code == 2 and "gridflex compare" in err and str(tmp_path / "gradmap" / "seed0") in err
