from __future__ import annotations

import sys
from pathlib import Path

import pytest

TESTS_DIR = Path(__file__).resolve().parent
REPO_ROOT = TESTS_DIR.parent
sys.path.insert(0, str(TESTS_DIR))  # test helper modules (toy_plugin, opendss_oracle)


@pytest.fixture(scope="session")
def toy_registry():
    """Registry of the installed plugins plus the test-only toy plugin."""
    import toy_plugin

    from gridflex.plugins.registry import load_registry

    return load_registry(extra_plugins=(toy_plugin,))[1]


@pytest.fixture
def cli(capsys):
    """Run the CLI in-process: returns (exit code, stdout, stderr)."""
    from gridflex.cli.main import main

    def run(*argv: str):
        code = main(list(argv))
        out, err = capsys.readouterr()
        return code, out, err

    return run


def world_from_text(directory: Path, text: str, name: str = "tiny", overrides=()):
    """Write scenario ``text`` to ``directory/<name>.yaml`` and build it: ``(path, pm, registry,
    world)`` (the tiny IEEE 13 worlds several modules share)."""
    from gridflex.plugins.registry import load_registry
    from gridflex.scenario import load_scenario
    from gridflex.runs.world import build_world

    path = Path(directory) / f"{name}.yaml"
    path.write_text(text)
    pm, registry = load_registry()
    return path, pm, registry, build_world(load_scenario(path, list(overrides), registry), registry, pm)


#: Keys of metrics.json / history.csv that are clock readings (differ between equal runs).
TIMING = {"train_seconds", "validation_eval_seconds", "time_to_target_s", "wall_s", "eval_wall_s",
          "env_s", "fit_s"}


def without_timing(value):
    """``value`` (nested dicts and lists) without its :data:`TIMING` keys."""
    if isinstance(value, dict):
        return {k: without_timing(v) for k, v in value.items() if k not in TIMING}
    if isinstance(value, list):
        return [without_timing(v) for v in value]
    return value


def tiny_gradmap_scenario(name: str, budget_iterations: int) -> str:
    """A seconds-long GradMAP scenario on IEEE 13 (4 batteries, 1 validation and 1 test day)."""
    return f"""
name: {name}
feeder: {{file: ieee13, taps: file}}
solver: {{type: ac3ph, params: {{tol_pu: 1.0e-10}}}}
population: {{households_per_kw: 0.05, pv_share: 0.4}}
devices:
  - {{type: battery, count: 4, params: {{reactive_power: true}}}}
learner: {{type: gradmap, params: {{days_per_batch: 2, hidden_sizes: [8], warm_start_epochs: 1,
          budget_iterations: {budget_iterations}, validation_interval_iterations: 1, budget_seconds: null}}}}
data: {{n_validation_days: 1, n_test_days: 1}}
environment: {{regulated_evaluation: false}}
target: {{max_violation_rate: 0.5}}
"""
