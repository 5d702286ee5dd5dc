"""Packaging: a built wheel works outside the source tree (package data, entry points)."""

from __future__ import annotations

import subprocess
import sys
import sysconfig
import tomllib
import venv
from pathlib import Path

import pytest

from conftest import REPO_ROOT


def test_every_package_folder_is_listed_in_pyproject():
    config = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(config["packages"])
    mapping = config["package-dir"]
    found = set()
    for package, folder in mapping.items():
        root = REPO_ROOT / folder
        for init in root.rglob("__init__.py"):
            rel = init.parent.relative_to(root)
            found.add(".".join((package, *rel.parts)) if rel.parts else package)
    assert found == listed


@pytest.mark.slow
def test_wheel_installs_and_runs_the_embedded_default(tmp_path):
    dist = tmp_path / "dist"
    subprocess.run(
        [sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(dist), str(REPO_ROOT)],
        check=True, capture_output=True, timeout=300,
    )
    wheel = next(dist.glob("gridflex-*.whl"))
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=True).create(env_dir)
    python = env_dir / "bin" / "python"
    # Reuse the already-installed torch & co. instead of downloading them again.
    purelib = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True, capture_output=True, text=True,
    ).stdout.strip()
    Path(purelib, "_reuse_parent_env.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run(
        [str(python), "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheel)],
        check=True, capture_output=True, timeout=300,
    )
    where = subprocess.run(
        [str(python), "-c", "import gridflex, gridflex.scenarios as s; print(gridflex.__file__); print(s.__file__)"],
        check=True, capture_output=True, text=True, cwd=tmp_path,
    ).stdout
    assert str(env_dir) in where and str(REPO_ROOT) not in where

    gridflex = env_dir / "bin" / "gridflex"
    default = Path(where.splitlines()[1]).parent / "ieee13_small.yaml"
    validated = subprocess.run(
        [str(gridflex), "validate", str(default)], capture_output=True, text=True, cwd=tmp_path, timeout=300
    )
    assert validated.returncode == 0, validated.stderr
    # the IEEE 8500 scenario: its feeder ships (upstream files, gridflex's masters, caches) and
    # loads from the committed caches on a machine without the engine and without a user cache
    big = Path(where.splitlines()[1]).parent / "ieee8500_10000.yaml"
    validated = subprocess.run(
        [str(gridflex), "validate", str(big)], capture_output=True, text=True, cwd=tmp_path, timeout=300
    )
    assert validated.returncode == 0, validated.stderr
    blocked = ("import sys; sys.modules['dss'] = None\n"
               "from gridflex.runs.feeder_cache import load_feeder\n"
               "from gridflex.scenario import load_scenario\n"
               "from gridflex.shipped import builtin_feeder_path\n"
               f"print(len(load_feeder(load_scenario({str(big)!r}).feeder_path(), 'file').loads),\n"
               "      len(load_feeder(builtin_feeder_path('ieee8500'), 'opendss').loads))")
    loaded = subprocess.run([str(python), "-c", blocked], capture_output=True, text=True, cwd=tmp_path,
                            timeout=300, env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)})
    assert loaded.returncode == 0, loaded.stderr
    assert loaded.stdout.split() == ["1177", "1177"]
    plugins = subprocess.run([str(gridflex), "plugins"], capture_output=True, text=True, cwd=tmp_path)
    assert "ac3ph" in plugins.stdout
    # the embedded default, shortened: one training iteration, one test day, no references
    quick = ["-o", "learner.params.budget_iterations=1", "-o", "learner.params.warm_start_epochs=1",
             "-o", "data.n_test_days=1", "-o", "data.n_validation_days=1",
             "-o", "environment.regulated_evaluation=false", "--no-references"]
    ran = subprocess.run(
        [str(gridflex), "run", *quick, "--out", str(tmp_path / "run")], capture_output=True,
        text=True, cwd=tmp_path, timeout=300, env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)},
    )
    assert ran.returncode == 0, ran.stderr
    assert "converged=True" in ran.stdout
    assert (tmp_path / "run" / "metrics.json").is_file()
