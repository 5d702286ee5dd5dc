"""Meta-tests that keep hooks, docs and the committed schema in step (datasette style)."""

from __future__ import annotations

import json

from gridflex.plugins import hookspecs
from gridflex.plugins.registry import load_registry
from gridflex.scenario import scenario_json_schema

from conftest import REPO_ROOT

HOOKS = sorted(name for name in dir(hookspecs) if name.startswith("gridflex_"))


def test_every_hook_is_documented_in_plugins_md():
    text = (REPO_ROOT / "docs" / "plugins.md").read_text()
    missing = [hook for hook in HOOKS if f"`{hook}`" not in text and f"{hook}(" not in text]
    assert not missing, f"hooks missing from docs/plugins.md: {missing}"


def test_committed_schema_is_current():
    committed = json.loads((REPO_ROOT / "docs" / "scenario.schema.json").read_text())
    current = json.loads(json.dumps(scenario_json_schema(load_registry()[1])))
    assert committed == current, "run: gridflex schema > docs/scenario.schema.json"


def test_scenario_reference_mentions_every_top_level_key():
    from gridflex.scenario import Scenario

    text = (REPO_ROOT / "docs" / "scenarios.md").read_text()
    missing = [key for key in Scenario.model_fields if f"`{key}`" not in text]
    assert not missing, f"top-level keys missing from docs/scenarios.md: {missing}"


def test_design_references_resolve():
    """Every "docs/design.md §N" cited in code, docs and scenarios has its section (issue #18)."""
    import re

    design = (REPO_ROOT / "docs" / "design.md").read_text()
    sections = set(re.findall(r"^## §(\d)", design, re.M))
    assert sections >= {"1", "2", "3"}
    cited = set()
    for pattern in ("gridflex/**/*.py", "plugins/**/*.py", "bench/*.py", "tests/*.py", "docs/*.md",
                    "scenarios/*.yaml", "README.md"):
        for path in REPO_ROOT.glob(pattern):
            cited |= set(re.findall(r"docs/design\.md §(\d)", path.read_text(encoding="utf-8")))
    assert cited and cited <= sections, f"cited sections without a heading: {cited - sections}"


def test_python_m_gridflex():
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-m", "gridflex", "--version"], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.startswith("gridflex ")
