"""Crash safety (issue #17 item 3): a run killed at any point of training (SIGKILL) and resumed
with --resume ends with exactly the metrics of an uninterrupted run of the same seed on CPU; Ctrl-C
(SIGINT) writes a checkpoint, says how to resume and exits 130; tampered checkpoint and policy
files (a pickle that runs code) are refused as user errors (exit 2)."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import TIMING, without_timing

# the default scenario (ieee13_small, 160 agents), with a short iteration budget and no
# reference controllers
SHORT = ["-o", "learner.params.budget_iterations=12", "-o", "learner.params.validation_interval_iterations=4",
         "--no-references"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def gridflex(*argv: str) -> list[str]:
    return [sys.executable, "-m", "gridflex", *argv]



def history_iterations(out: Path) -> list[int]:
    path = out / "history.csv"
    if not path.is_file():
        return []
    with path.open() as fh:
        return [int(row["iteration"]) for row in csv.DictReader(fh)]


def checkpoint_iteration(out: Path) -> int:
    """The iteration of ``out``'s checkpoint (-1 while there is none; it is replaced atomically)."""
    try:
        return int(torch.load(out / "checkpoint.pt", weights_only=True)["iteration"])
    except (FileNotFoundError, RuntimeError, EOFError):
        return -1


def start_and_wait(out: Path, min_iteration: int, timeout_s: float = 240.0) -> subprocess.Popen:
    """Start a short run in ``out`` and return once its history has a validation row at
    ``min_iteration`` or later (training is then under way: a checkpoint exists)."""
    proc = subprocess.Popen(gridflex("run", *SHORT, "--out", str(out)), env=ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        rows = history_iterations(out)
        if rows and rows[-1] >= min_iteration and checkpoint_iteration(out) >= min_iteration:
            return proc
        if proc.poll() is not None:
            raise AssertionError(f"the run ended early (exit {proc.returncode}): {proc.stderr.read()[-2000:]}")
        time.sleep(0.02)
    proc.kill()
    raise AssertionError("training did not reach the wanted validation point in time")


def metrics_and_history(out: Path) -> tuple[dict, list[dict]]:
    metrics = json.loads((out / "metrics.json").read_text())
    with (out / "history.csv").open() as fh:
        history = [{k: v for k, v in row.items() if k not in TIMING} for row in csv.DictReader(fh)]
    return without_timing(metrics), history


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> tuple[dict, list[dict]]:
    out = tmp_path_factory.mktemp("crash") / "reference"
    done = subprocess.run(gridflex("run", *SHORT, "--out", str(out)), env=ENV, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return metrics_and_history(out)


def test_sigkill_then_resume_equals_an_uninterrupted_run(uninterrupted, tmp_path):
    out = tmp_path / "killed"
    proc = start_and_wait(out, 4)
    time.sleep(0.15)  # somewhere inside the training iterations after the second validation point
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    assert not (out / "metrics.json").exists()  # killed before the end
    state = torch.load(out / "checkpoint.pt", weights_only=True)
    assert 4 <= state["iteration"] < 12 and "rng" in state and "best" in state

    resumed = subprocess.run(gridflex("run", *SHORT, "--out", str(out), "--resume"), env=ENV,
                             capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resumed from iteration {state['iteration']}" in resumed.stderr
    metrics, history = metrics_and_history(out)
    ref_metrics, ref_history = uninterrupted
    assert history == ref_history
    assert metrics == ref_metrics  # test metrics, validation point, counters: all identical


def test_sigint_writes_a_checkpoint_says_how_to_resume_and_exits_130(uninterrupted, tmp_path):
    out = tmp_path / "interrupted"
    proc = start_and_wait(out, 4)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err[-3000:]
    assert "Traceback" not in err
    state = torch.load(out / "checkpoint.pt", weights_only=True)
    assert 4 <= state["iteration"] < 12
    assert f"checkpoint at iteration {state['iteration']}" in err
    assert f"--out {out} --resume" in err and "gridflex run" in err
    assert not (out / "metrics.json").exists()

    resumed = subprocess.run(gridflex("run", *SHORT, "--out", str(out), "--resume"), env=ENV,
                             capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert metrics_and_history(out) == uninterrupted


class _Exploit:
    """Unpickling this runs code (what a tampered file would do)."""

    def __reduce__(self):
        return (os.system, ("echo pwned > /dev/null",))


def _tamper(path: Path) -> None:
    """Rewrite a torch file with an object whose unpickling runs code (the real content kept)."""
    state = torch.load(path, weights_only=True)
    state["payload"] = _Exploit()
    torch.save(state, path)


def test_tampered_checkpoint_and_policy_are_refused_with_exit_2(cli, tmp_path):
    out = tmp_path / "run"
    tiny = ["-o", "devices[0].count=4", "-o", "devices[1].count=4", "-o", "devices[2].count=4",
            "-o", "data.n_validation_days=1", "-o", "data.n_test_days=1",
            "-o", "learner.params.budget_iterations=1", "-o", "learner.params.validation_interval_iterations=1",
            "-o", "learner.params.hidden_sizes=[8]", "-o", "learner.params.warm_start_epochs=1",
            "-o", "environment.regulated_evaluation=false", "--no-references"]
    code, _, err = cli("run", *tiny, "--out", str(out))
    assert code == 0, err
    _tamper(out / "checkpoint.pt")
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    code, _, err = cli("run", *tiny, "--out", str(out), "--resume")
    assert code == 2
    assert "checkpoint.pt" in err and "weights_only=True" in err and "Traceback" not in err
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before  # nothing changed

    _tamper(out / "policy.pt")
    code, _, err = cli("export", str(out), "--format", "npz")
    assert code == 2
    assert "policy.pt" in err and "refused" in err and "Traceback" not in err
    assert not (out / "export_npz").exists()
