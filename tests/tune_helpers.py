"""Shared by tests/test_tune.py and tests/test_tune_storage.py: a tiny scenario, worker processes
of `gridflex tune` and a look into a study's storage from the test process."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

# IEEE 13 with 4 batteries, 1 validation day; the target (no violation at all, see write_tiny for
# the cost) is never met, so every value is censored and differs between trials.
TINY = """
name: tinytune
feeder: {file: ieee13, taps: file}
solver: {type: ac3ph, params: {tol_pu: 1.0e-10}}
population: {households_per_kw: 0.05, pv_share: 0.4}
devices:
  - {type: battery, count: 4, params: {reactive_power: true}}
learner: {type: gradmap, params: {days_per_batch: 2, hidden_sizes: [8], warm_start_epochs: 1}}
data: {n_validation_days: 1, n_test_days: 1}
environment: {regulated_evaluation: false}
target: {max_violation_rate: 0.0}
"""


def write_tiny(folder: Path) -> Path:
    """The tiny scenario and its target sidecar: C_ref 1000 and C_no_control 2000 EUR/day, so the
    cost bound (1500) is never met either and the censored values vary with the cost."""
    from gridflex.learning.targets import write_target_sidecar
    from gridflex.scenario import load_scenario

    path = Path(folder) / "tinytune.yaml"
    path.write_text(TINY)
    write_target_sidecar(load_scenario(path), c_no_control=2000.0, c_ref=1000.0)
    return path


def tune_argv(scenario: Path, study: str, trials: int, *extra: str, iterations: int = 2) -> list[str]:
    return ["tune", str(scenario), "--learner", "gradmap", "--trials", str(trials), "--study", study,
            "--budget-iterations", str(iterations), "--pruner", "none", *extra]


def start_worker(argv: list[str], cwd: Path, env: dict | None = None, log: Path | None = None) -> subprocess.Popen:
    """A `gridflex tune` worker process (one core, one thread), its output into ``log``."""
    env = dict(os.environ if env is None else env, OMP_NUM_THREADS="1")
    out = open(log, "wb") if log is not None else subprocess.DEVNULL
    return subprocess.Popen([sys.executable, "-m", "gridflex", *argv], cwd=cwd, env=env,
                            stdout=out, stderr=subprocess.STDOUT)


def trials_of(storage, study: str):
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        return optuna.load_study(study_name=study, storage=storage).get_trials(deepcopy=False)
    except KeyError:  # not created yet
        return []


def wait_for(condition, timeout_s: float, what: str, poll_s: float = 0.05):
    """Poll ``condition()`` until it returns something truthy; fail after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(poll_s)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
