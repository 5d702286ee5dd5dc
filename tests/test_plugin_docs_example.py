"""The two example plugins of docs/plugins.md, installed and used exactly as written there.

Every fenced block of docs/plugins.md titled with a path (```python title="acme-.../model.py")
is written into a scratch folder; the two distributions are installed with pip into a separate
``--target`` folder (never into this environment) and found through their entry points via
PYTHONPATH, as an installed third-party plugin would be. Then, in subprocesses: ``gridflex
plugins`` lists them, the water-heater scenario trains (the documented smoke run) and writes its
metrics, the price-threshold scenario runs on the water heaters, and the documented test files
run the gridflex.testing suites on the example classes.
"""

from __future__ import annotations

import csv
import json
import os
import re
import shlex
import subprocess
import sys

import pytest
import yaml

from conftest import REPO_ROOT

DOC = REPO_ROOT / "docs" / "plugins.md"
README = REPO_ROOT / "README.md"
#: ```lang title="path"  ...  ``` (a titled block: one file of an example distribution)
TITLED_BLOCK = re.compile(r'^```(\w+) title="([^"]+)"\n(.*?)^```$', re.M | re.S)
DISTRIBUTIONS = ("acme-water-heater", "acme-price-threshold")


def documented_files(text: str) -> dict[str, str]:
    """``{relative path: contents}`` of every titled block of ``text``."""
    files = {path: body for _, path, body in TITLED_BLOCK.findall(text)}
    assert len(files) == len(TITLED_BLOCK.findall(text)), "two blocks claim the same path"
    return files


def shell_commands(script: str) -> list[list[str]]:
    """The commands of a documented shell block: comments dropped, ``\\`` continuations joined."""
    joined = re.sub(r"\\\n", " ", script)
    return [shlex.split(line) for line in joined.splitlines() if line.strip() and not line.lstrip().startswith("#")]


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """The documented distributions written out and pip-installed into ``<tmp>/site``;
    returns ``(folder, environment for subprocesses)``."""
    root = tmp_path_factory.mktemp("docs_example")
    files = documented_files(DOC.read_text())
    for rel, body in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(body)
    for dist in DISTRIBUTIONS:
        assert (root / dist / "pyproject.toml").is_file(), f"docs/plugins.md has no {dist}/pyproject.toml"
    site = root / "site"
    pip = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
         "--no-index", "--target", str(site), *(str(root / d) for d in DISTRIBUTIONS)],
        capture_output=True, text=True, timeout=240, cwd=root)
    assert pip.returncode == 0, pip.stdout + pip.stderr
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH")])),
           "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    env.pop("GRIDFLEX_BLOCK_PLUGINS", None)
    return root, env


def gridflex(env, *argv, cwd) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "gridflex", *argv], capture_output=True, text=True,
                          env=env, cwd=cwd, timeout=300)


def test_documented_files_are_complete():
    """Both distributions are complete on the page: project file, modules, tests, scenario."""
    files = documented_files(DOC.read_text())
    for needed in ("acme-water-heater/pyproject.toml", "acme-water-heater/src/acme_water_heater/__init__.py",
                   "acme-water-heater/src/acme_water_heater/model.py", "acme-water-heater/water_heaters.yaml",
                   "acme-water-heater/tests/test_water_heater.py", "acme-water-heater/smoke_run.sh",
                   "acme-price-threshold/pyproject.toml", "acme-price-threshold/src/acme_price_threshold/__init__.py",
                   "acme-price-threshold/tests/test_price_threshold.py", "acme-price-threshold/preheat.yaml"):
        assert needed in files, f"docs/plugins.md lacks a block titled {needed!r}"
    assert "Dehumidifier" not in DOC.read_text() and "WaterHeater(DeviceModel)" in DOC.read_text()


def test_readme_plugin_code_is_the_docs_code():
    """README's plugin section shows code copied exactly from docs/plugins.md, nothing else."""
    readme = README.read_text()
    section = readme[readme.index("### Writing a plugin"):]
    section = section[:section.index("\n## ")]
    doc = DOC.read_text()
    blocks = re.findall(r"^```\w*\n(.*?)^```$", section, re.M | re.S)
    assert blocks, "README's plugin section shows no code"
    for block in blocks:
        assert block in doc, f"README's plugin code differs from docs/plugins.md:\n{block}"
    assert "Dehumidifier" not in readme


def test_plugins_are_listed_from_their_distributions(installed):
    root, env = installed
    listing = gridflex(env, "plugins", cwd=root)
    assert listing.returncode == 0, listing.stderr
    rows = {line.split()[0]: line for line in listing.stdout.splitlines() if line.strip()}
    assert "acme-water-heater" in rows["water_heater"] and "water_heater" in rows["water_heater"].split()[-1]
    assert "acme-price-threshold" in rows["price_threshold"] and "learner" in rows["price_threshold"]


def test_water_heater_scenario_trains_and_writes_metrics(installed):
    """The documented smoke run: GradMAP trains policies for the water heaters (environment
    gradients through the third-party device), then evaluates them on a test day."""
    root, env = installed
    folder = root / "acme-water-heater"
    commands = shell_commands((folder / "smoke_run.sh").read_text())
    assert commands and all(c[0] == "gridflex" for c in commands)
    for command in commands:
        ran = gridflex(env, *command[1:], cwd=folder)
        assert ran.returncode == 0, ran.stderr[-3000:]
    out = folder / commands[0][commands[0].index("--out") + 1]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["learner"] == "gradmap" and metrics["scenario"] == "water_heaters"
    assert "water_heater" in metrics["test"]["cost_breakdown"], metrics["test"]["cost_breakdown"]
    assert metrics["env_gradient_evaluations"] >= 2 and metrics["policy_updates"] > 0
    with (out / "history.csv").open() as fh:
        history = list(csv.DictReader(fh))
    assert [int(r["iteration"]) for r in history] == [0, 1, 2]
    resolved = yaml.safe_load((out / "scenario.resolved.yaml").read_text())
    assert resolved["devices"][0]["type"] == "water_heater" and resolved["devices"][0]["count"] == 60


def test_price_threshold_runs_on_the_water_heaters(installed):
    """The learner's scenario (both distributions together), beside the reference controllers,
    shortened to one test day; the threshold rule acts (its demand differs from no_control's)."""
    root, env = installed
    folder = root / "acme-price-threshold"
    out = root / "runs" / "preheat"
    ran = gridflex(env, "run", "preheat.yaml", "--out", str(out), "-o", "data.n_test_days=1",
                   "-o", "environment.regulated_evaluation=false", cwd=folder)
    assert ran.returncode == 0, ran.stderr[-3000:]
    mine = json.loads((out / "metrics.json").read_text())
    baseline = json.loads((out / "baselines" / "no_control" / "metrics.json").read_text())
    assert mine["learner"] == "price_threshold" and "water_heater" in mine["test"]["cost_breakdown"]
    assert mine["train_seconds"] == 0
    assert mine["test"]["peak_import_kw"] != baseline["test"]["peak_import_kw"]


def test_documented_tests_pass_on_the_examples(installed):
    """The documented test files run the DeviceContract and LearnerContract suites on the
    example classes (with gridflex's pytest plugin for the gridflex_registry fixture)."""
    root, env = installed
    tests = [str(root / d / "tests") for d in DISTRIBUTIONS]
    # the plugin explicitly (its entry point may predate this checkout's install); no:gridflex
    # keeps an installed entry point from registering the same module a second time
    ran = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", "-p", "no:gridflex",
         "-p", "gridflex.testing.pytest_plugin", *tests],
        capture_output=True, text=True, env=env, cwd=root, timeout=300)
    assert ran.returncode == 0, ran.stdout[-4000:] + ran.stderr[-2000:]
    summary = ran.stdout.strip().splitlines()[-1]
    passed = int(re.search(r"(\d+) passed", summary).group(1))
    assert passed >= 19 and "failed" not in summary and "error" not in summary, summary
    only_contract = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "--collect-only", "-p", "no:cacheprovider", "-p", "no:gridflex",
         "-p", "gridflex.testing.pytest_plugin", "-m", "gridflex_contract", *tests],
        capture_output=True, text=True, env=env, cwd=root, timeout=300)
    collected = only_contract.stdout
    assert only_contract.returncode == 0, collected[-2000:]
    assert "test_registered_through_the_entry_point" not in collected  # not a contract test
    assert "test_gradcheck_float64" in collected and "test_decentralised" in collected
