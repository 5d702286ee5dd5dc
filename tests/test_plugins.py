"""The plugin core: discovery through entry points, registration rules, blocking."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import types

import pytest

import gridflex
from gridflex.plugins import hookspecs
from gridflex.plugins.contracts import DeviceModel, FeederReader, Learner, StrictConfig
from gridflex.errors import PluginError
from gridflex.plugins.hookspecs import hookimpl
from gridflex.plugins.registry import Registry, get_plugin_manager, load_registry
from toy_plugin import ToyLearner, ToyStore

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
    """A complete device class named ``name`` (the toy store under another name)."""
    return type(name.title(), (ToyStore,), {"name": name})


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


def test_hookimpl_is_exported_by_gridflex_itself():
    """``gridflex.hookimpl`` (what docs/plugins.md uses) is the marker the hookspecs module has."""
    assert gridflex.hookimpl is hookspecs.hookimpl
    assert gridflex.PROJECT == hookspecs.PROJECT == "gridflex"
    plugin = types.SimpleNamespace(gridflex_register_devices=gridflex.hookimpl(
        lambda register: register(_device("marked_with_gridflex_hookimpl"))))
    pm = get_plugin_manager()
    pm.register(plugin, name="marked")
    assert "marked_with_gridflex_hookimpl" in Registry.from_plugin_manager(pm).names("device")


def test_hookspecs_are_typed_and_documented():
    """Every hook documents each parameter (``:param name:``) and its result (``:return:``)."""
    import inspect

    for name in (n for n in dir(hookspecs) if n.startswith("gridflex_")):
        hook = getattr(hookspecs, name)
        doc = inspect.getdoc(hook) or ""
        params = inspect.signature(hook).parameters
        assert params and all(p.annotation is not inspect.Parameter.empty for p in params.values()), name
        assert inspect.signature(hook).return_annotation is not inspect.Signature.empty, name
        missing = [p for p in params if f":param {p}:" not in doc]
        assert not missing and ":return:" in doc, f"{name}: undocumented {missing or 'return'}"


def _register_as(kind_hook: str, component, plugin_name: str = "acme_bad") -> PluginError:
    """Register ``component`` through ``kind_hook`` from a plugin module ``acme_bad.plugin``;
    the :class:`PluginError` raised."""
    module = types.ModuleType("acme_bad.plugin")
    setattr(module, kind_hook, hookimpl(lambda register: register(component)))
    pm = get_plugin_manager()
    pm.register(module, name=plugin_name)
    with pytest.raises(PluginError) as info:
        Registry.from_plugin_manager(pm)
    message = str(info.value)
    assert "\n" not in message, "one paragraph"
    assert f"plugin {plugin_name!r}" in message and "module acme_bad.plugin" in message
    assert f"GRIDFLEX_BLOCK_PLUGINS={plugin_name}" in message
    return info.value


class NotADevice:
    """Has the right attributes but not the base class."""

    name = "impostor"
    Config = StrictConfig


class HalfDevice(DeviceModel):
    """Declares name and Config but implements only two of the nine abstract methods."""

    name = "half_device"

    class Config(StrictConfig):
        p_max_kw: float = 1.0

    def initial_state(self, batch, temp_out_c):
        raise NotImplementedError

    def observation(self, state, inputs):
        raise NotImplementedError


def test_registration_rejects_a_class_of_the_wrong_base():
    error = _register_as("gridflex_register_devices", NotADevice)
    assert "test_plugins.NotADevice" in str(error)
    assert "does not subclass gridflex.plugins.contracts.DeviceModel" in str(error)
    learner_as_device = _register_as("gridflex_register_devices", ToyLearner)
    assert "does not subclass gridflex.plugins.contracts.DeviceModel" in str(learner_as_device)
    device_as_learner = _register_as("gridflex_register_learners", ToyStore)
    assert "does not subclass gridflex.plugins.contracts.Learner" in str(device_as_learner)
    solver = _register_as("gridflex_register_solvers", type("FakeSolver", (), {"name": "fake", "Config": StrictConfig}))
    assert "does not subclass gridflex.plugins.contracts.NetworkSolver" in str(solver)
    reader = _register_as("gridflex_register_feeder_readers", type("FakeReader", (), {"name": "fake"}))
    assert "does not subclass gridflex.plugins.contracts.FeederReader" in str(reader)


def test_registration_rejects_an_abstract_class_listing_what_is_missing():
    message = str(_register_as("gridflex_register_devices", HalfDevice))
    assert "test_plugins.HalfDevice" in message and "still abstract" in message
    missing = ("action_bounds", "baseline_u", "cost", "demand", "residuals", "step", "terminal_residuals")
    assert all(method in message for method in missing), message
    assert "initial_state" not in message and "observation," not in message
    learner = str(_register_as("gridflex_register_learners",
                               type("Lazy", (Learner,), {"name": "lazy", "Config": StrictConfig})))
    assert "does not implement act" in learner


def test_registration_rejects_missing_name_or_config():
    complete = {m: (lambda self, *a: None) for m in DeviceModel.__abstractmethods__}
    configless = type("Configless", (DeviceModel,), {"name": "configless", **complete})
    message = str(_register_as("gridflex_register_devices", configless))
    assert "declares no nested `Config` class" in message and "still abstract" not in message
    unnamed = type("Unnamed", (ToyStore,), {"name": ""})
    assert "no string `name`" in str(_register_as("gridflex_register_devices", unnamed))
    bad_config = type("BadConfig", (ToyStore,), {"name": "bad_config", "Config": dict})
    assert "does not subclass gridflex.plugins.contracts.StrictConfig" in str(
        _register_as("gridflex_register_devices", bad_config))
    instance = ToyStore.__new__(ToyStore)
    assert "not a class" in str(_register_as("gridflex_register_devices", instance))


def test_complete_subclasses_and_configless_feeder_readers_register():
    """A subclass inheriting its parent's Config is complete; feeder readers need no Config."""
    registry = Registry()
    inherits = type("Inherits", (ToyStore,), {"name": "inherits"})
    registry._add("device", inherits, "ok", "", "")
    reader = type("Reader", (FeederReader,), {"name": "reader", "suffixes": (".x",)})
    registry._add("feeder_reader", reader, "ok", "", "")
    assert registry.get("device", "inherits") is inherits
    assert registry.get("feeder_reader", "reader") is reader


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
import gridflex
from toy_plugin import ToyStore  # a complete device (tests/toy_plugin.py)


class Dehumidifier(ToyStore):
    """A third party's device."""

    name = "dehumidifier"


@gridflex.hookimpl
def gridflex_register_devices(register):
    register(Dehumidifier)
'''

BROKEN_THIRD_PARTY_MODULE = '''
import gridflex
from gridflex.plugins.contracts import DeviceModel, StrictConfig


class Humidifier(DeviceModel):
    """Declares itself but implements nothing (the old README example)."""

    name = "humidifier"

    class Config(StrictConfig):
        p_max_kw: float = 1.0


@gridflex.hookimpl
def gridflex_register_devices(register):
    register(Humidifier)
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
    tests_dir = os.path.dirname(os.path.abspath(__file__))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), tests_dir, os.environ.get("PYTHONPATH", "")])}

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

    # a broken distribution stops `gridflex plugins` with one paragraph naming it and what is missing
    (site / "broken_gridflex").mkdir()
    (site / "broken_gridflex" / "__init__.py").write_text(BROKEN_THIRD_PARTY_MODULE)
    broken_info = site / "broken_gridflex-0.1.dist-info"
    broken_info.mkdir()
    (broken_info / "METADATA").write_text("Metadata-Version: 2.1\nName: broken-gridflex\nVersion: 0.1\n")
    (broken_info / "entry_points.txt").write_text("[gridflex]\nbroken = broken_gridflex\n")
    failed = gridflex("plugins")
    assert failed.returncode == 2 and "Traceback" not in failed.stderr
    for needle in ("plugin 'broken'", "broken_gridflex", "broken-gridflex", "Humidifier", "still abstract",
                   "baseline_u", "GRIDFLEX_BLOCK_PLUGINS=broken"):
        assert needle in failed.stderr, (needle, failed.stderr)
    # docs/plugins.md quotes this very message
    from conftest import REPO_ROOT

    doc = (REPO_ROOT / "docs" / "plugins.md").read_text()
    quoted = doc[doc.index("gridflex: error: plugin 'broken'"):]
    quoted = quoted[:quoted.index("```")]
    message = failed.stderr[failed.stderr.index("gridflex: error:"):]
    assert " ".join(quoted.split()) == " ".join(message.split())
