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
