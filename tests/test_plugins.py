"""The plugin core: discovery through entry points, registration rules, blocking."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import types

import pytest

from gridflex.plugins.contracts import DeviceModel, StrictConfig
from gridflex.errors import PluginError
from gridflex.plugins.hookspecs import hookimpl
from gridflex.plugins.registry import Registry, get_plugin_manager, load_registry

BUILTIN_COMPONENTS = {("solver", "ac3ph"), ("feeder_reader", "dss")}


def test_builtins_are_registered_through_entry_points():
    pm, registry = load_registry()
    found = {(kind, name) for kind, comps in registry.components.items() for name in comps}
    assert BUILTIN_COMPONENTS <= found
    for kind, name in BUILTIN_COMPONENTS:
        info = registry.components[kind][name]
        assert info.distribution == "gridflex"  # registered via gridflex's own entry points
        assert info.plugin in pm.distributions


def test_fresh_manager_each_call():
    assert get_plugin_manager() is not get_plugin_manager()


def _device(name: str) -> type:
    return type(name.title(), (DeviceModel,), {"name": name, "Config": StrictConfig})


def test_duplicate_component_name_names_both_plugins():
    first = types.SimpleNamespace(
        gridflex_register_devices=hookimpl(lambda register: register(_device("twin")))
    )
    second = types.SimpleNamespace(
        gridflex_register_devices=hookimpl(lambda register: register(_device("twin")))
    )
    pm = get_plugin_manager()
    pm.register(first, name="first_plugin")
    pm.register(second, name="second_plugin")
    with pytest.raises(PluginError) as info:
        Registry.from_plugin_manager(pm)
    assert "first_plugin" in str(info.value) and "second_plugin" in str(info.value)
    assert "'twin'" in str(info.value)


def test_unknown_hook_is_an_error_naming_the_plugin():
    typo = types.ModuleType("typo_plugin")
    typo.gridflex_register_device = hookimpl(lambda register: None)  # missing "s"
    with pytest.raises(PluginError, match="typo_plugin"):
        get_plugin_manager(extra_plugins=(typo,))


def test_component_without_name_is_rejected():
    bad = types.SimpleNamespace(
        gridflex_register_devices=hookimpl(lambda register: register(type("X", (DeviceModel,), {})))
    )
    pm = get_plugin_manager()
    pm.register(bad, name="nameless")
    with pytest.raises(PluginError, match="nameless"):
        Registry.from_plugin_manager(pm)


def test_block_plugin_by_environment_variable(monkeypatch):
    monkeypatch.setenv("GRIDFLEX_BLOCK_PLUGINS", "ac3ph")
    _, registry = load_registry()
    assert "ac3ph" not in registry.names("solver")
    assert "dss" in registry.names("feeder_reader")


def test_cli_plugins_lists_builtins(cli):
    code, out, _ = cli("plugins")
    assert code == 0
    assert "ac3ph" in out and "dss" in out and "gridflex" in out


THIRD_PARTY_MODULE = '''
from pydantic import Field
from gridflex.plugins.contracts import DeviceModel, StrictConfig
from gridflex.plugins.hookspecs import hookimpl


class Dehumidifier(DeviceModel):
    """A third party's device."""

    name = "dehumidifier"

    class Config(StrictConfig):
        p_max_kw: float = Field(0.5, gt=0, description="rated power (kW)")


@hookimpl
def gridflex_register_devices(register):
    register(Dehumidifier)
'''


def test_third_party_distribution_is_discovered_and_used(tmp_path):
    """A separate distribution (real dist-info with an entry point) on sys.path, in a subprocess."""
    site = tmp_path / "site"
    (site / "acme_gridflex").mkdir(parents=True)
    (site / "acme_gridflex" / "__init__.py").write_text(THIRD_PARTY_MODULE)
    dist_info = site / "acme_gridflex-1.2.3.dist-info"
    dist_info.mkdir()
    (dist_info / "METADATA").write_text("Metadata-Version: 2.1\nName: acme-gridflex\nVersion: 1.2.3\n")
    (dist_info / "entry_points.txt").write_text("[gridflex]\nacme = acme_gridflex\n")
    scenario = tmp_path / "s.yaml"
    scenario.write_text(textwrap.dedent("""
        name: third_party
        feeder: {file: ieee13}
        devices:
          - {type: dehumidifier, count: 3, params: {p_max_kw: 0.8}}
    """))
    bad = tmp_path / "bad.yaml"
    bad.write_text(scenario.read_text().replace("p_max_kw: 0.8", "p_max_kw: -2"))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")])}

    def gridflex(*argv):
        return subprocess.run(
            [sys.executable, "-m", "gridflex.cli.main", *argv], capture_output=True, text=True, env=env,
            timeout=120,
        )

    listing = gridflex("plugins")
    assert listing.returncode == 0, listing.stderr
    row = next(line for line in listing.stdout.splitlines() if line.startswith("acme"))
    assert "acme-gridflex" in row and "1.2.3" in row and "dehumidifier" in row and "device" in row

    ok = gridflex("validate", str(scenario))
    assert ok.returncode == 0, ok.stderr
    rejected = gridflex("validate", str(bad))
    assert rejected.returncode == 2
    assert "devices[0].params.p_max_kw" in rejected.stderr

    blocked = subprocess.run(
        [sys.executable, "-m", "gridflex.cli.main", "validate", str(scenario)],
        capture_output=True, text=True, env={**env, "GRIDFLEX_BLOCK_PLUGINS": "acme"}, timeout=120,
    )
    assert blocked.returncode == 2 and "unknown device 'dehumidifier'" in blocked.stderr
