"""Plugin discovery and the component registry.

:func:`get_plugin_manager` builds a *fresh* :class:`pluggy.PluginManager` each call (no global
state, nothing at import time) loading every entry point of group ``gridflex``. Plugins can be
blocked by name with the environment variable ``GRIDFLEX_BLOCK_PLUGINS`` (comma-separated entry-point
names, e.g. ``GRIDFLEX_BLOCK_PLUGINS=ippo,droop``).

:class:`Registry` collects the components plugins register. Each class is checked when it is
registered (:func:`check_component`: right base class, ``name``, ``Config``, nothing left abstract)
and duplicates are rejected, naming both plugins.
"""

from __future__ import annotations

import importlib.metadata as importlib_metadata
import os
import types
from dataclasses import dataclass, field

import pluggy

from gridflex.plugins import hookspecs
from gridflex.plugins.contracts import (Component, DeviceModel, FeederReader, Learner,
                                         NetworkSolver, StrictConfig)
from gridflex.errors import PluginError, UserError, did_you_mean

ENTRY_POINT_GROUP = "gridflex"
BLOCK_ENV_VAR = "GRIDFLEX_BLOCK_PLUGINS"
KINDS = ("device", "solver", "learner", "feeder_reader")
_REGISTER_HOOKS = {
    "device": "gridflex_register_devices",
    "solver": "gridflex_register_solvers",
    "learner": "gridflex_register_learners",
    "feeder_reader": "gridflex_register_feeder_readers",
}


def blocked_plugin_names() -> set[str]:
    """Entry-point names listed in ``GRIDFLEX_BLOCK_PLUGINS``."""
    raw = os.environ.get(BLOCK_ENV_VAR, "")
    return {name.strip() for name in raw.split(",") if name.strip()}


def blocked_note() -> str:
    """``"; plugins blocked by GRIDFLEX_BLOCK_PLUGINS: a, b (their components are unavailable)"``,
    or ``""`` when none is blocked: said wherever an unknown component is reported."""
    blocked = sorted(blocked_plugin_names())
    if not blocked:
        return ""
    return (f"; plugins blocked by {BLOCK_ENV_VAR}: {', '.join(blocked)} (their components are "
            f"unavailable; unset {BLOCK_ENV_VAR} to use them)")


#: the base class every component of a kind must subclass
BASES: dict[str, type] = {
    "device": DeviceModel,
    "solver": NetworkSolver,
    "learner": Learner,
    "feeder_reader": FeederReader,
}

#: kinds whose ``params`` a scenario sets, so their classes must declare ``Config``
CONFIGURED_KINDS = ("device", "solver", "learner")


def _qualname(obj: object) -> str:
    return f"{getattr(obj, '__module__', '?')}.{getattr(obj, '__qualname__', repr(obj))}"


def describe_plugin(name: str, plugin: object, dist: str = "", version: str = "") -> str:
    """``plugin 'acme' (module acme_gridflex, distribution acme-gridflex 1.2.3)``: how error
    messages name a plugin (entry-point or registration name, module, distribution)."""
    module = getattr(plugin, "__name__", None) if isinstance(plugin, types.ModuleType) else None
    module = module or getattr(type(plugin), "__module__", None)
    parts = [f"module {module}"] if module else []
    if dist:
        parts.append(f"distribution {dist} {version}".rstrip())
    return f"plugin {name!r}" + (f" ({', '.join(parts)})" if parts else "")


def component_problems(kind: str, component: object) -> list[str]:
    """What keeps ``component`` from being a valid ``kind`` component (empty: nothing).

    Checked: it is a class; it subclasses :data:`BASES` ``[kind]``; it has a non-empty string
    ``name``; it declares a ``Config`` subclassing :class:`StrictConfig` (the one inherited from
    :class:`Component` does not count; feeder readers, which scenarios do not configure, may
    omit it); its ``kind`` matches; no abstract method is left.
    """
    base = BASES[kind]
    if not isinstance(component, type):
        return [f"it is {type(component).__name__} {component!r}, not a class; register the class "
                f"itself, a subclass of gridflex.plugins.contracts.{base.__name__}"]
    problems = []
    if not issubclass(component, base):
        bases = ", ".join(_qualname(b) for b in component.__bases__)
        problems.append(f"it does not subclass gridflex.plugins.contracts.{base.__name__} (its bases: "
                        f"{bases}); every {kind} must, so that gridflex can rely on its methods")
    name = getattr(component, "name", None)
    if not isinstance(name, str) or not name:
        problems.append(f"it has no string `name` class attribute (got {name!r}); set e.g. "
                        f"`name = \"my_{kind}\"`, the `type` scenarios will use")
    config = next((vars(k)["Config"] for k in component.__mro__
                   if k is not Component and "Config" in vars(k)), None)
    if config is None and kind in CONFIGURED_KINDS:
        problems.append("it declares no nested `Config` class; add `class Config(StrictConfig): ...` "
                        "(gridflex.plugins.contracts.StrictConfig; an empty body for no parameters)")
    elif config is not None and not (isinstance(config, type) and issubclass(config, StrictConfig)):
        problems.append(f"its `Config` ({config!r}) does not subclass "
                        "gridflex.plugins.contracts.StrictConfig")
    declared = getattr(component, "kind", kind)
    if declared != kind:
        problems.append(f"it declares kind {declared!r} but was registered as a {kind}")
    abstract = sorted(getattr(component, "__abstractmethods__", ()) or ())
    if abstract:
        problems.append(f"it is still abstract: it does not implement {', '.join(abstract)} "
                        f"(abstract in {base.__name__}; shapes and units are in each method's docstring)")
    return problems


def check_component(kind: str, component: object, where: str = "a plugin", plugin: str | None = None) -> None:
    """Raise :class:`PluginError` (one paragraph: who, which class, what is missing) unless
    ``component`` is a valid ``kind`` component (:func:`component_problems`)."""
    problems = component_problems(kind, component)
    if problems:
        what = f"class {_qualname(component)}" if isinstance(component, type) else repr(component)
        raise PluginError(
            f"{where} registered as a {kind} {what}, which gridflex cannot use: "
            + "; ".join(problems)
            + ". Fix the class (docs/plugins.md walks through a complete device and learner) and "
            "run the contract tests of gridflex.testing on it, or block the plugin with "
            f"{BLOCK_ENV_VAR}={plugin or '<plugin name>'}."
        )


class GridflexPluginManager(pluggy.PluginManager):
    """A pluggy manager that remembers which distribution provided each entry-point plugin."""

    def __init__(self) -> None:
        super().__init__(hookspecs.PROJECT)
        self.distributions: dict[str, importlib_metadata.Distribution] = {}

    def load_entry_points(self, group: str = ENTRY_POINT_GROUP) -> None:
        """Import and register every entry point of ``group`` not blocked by name."""
        for ep in importlib_metadata.entry_points(group=group):
            if self.is_blocked(ep.name) or self.get_plugin(ep.name) is not None:
                continue
            try:
                plugin = ep.load()
            except Exception as exc:  # a broken third-party plugin must be named, not crash
                dist = ep.dist.metadata["name"] if ep.dist is not None else "unknown distribution"
                raise PluginError(
                    f"gridflex plugin {ep.name!r} ({ep.value}, from {dist}) failed to import: "
                    f"{exc!r}. Fix or uninstall it, or block it with {BLOCK_ENV_VAR}={ep.name}"
                ) from exc
            self.register(plugin, name=ep.name)
            if ep.dist is not None:
                self.distributions[ep.name] = ep.dist


def get_plugin_manager(extra_plugins: tuple = ()) -> GridflexPluginManager:
    """A fresh plugin manager with every installed ``gridflex`` entry point loaded.

    ``extra_plugins`` (modules or objects) are registered on top, e.g. by tests. A hook
    implementation whose name matches no hookspec raises :class:`PluginError` naming the plugin.
    """
    pm = GridflexPluginManager()
    pm.add_hookspecs(hookspecs)
    for name in blocked_plugin_names():
        pm.set_blocked(name)
    pm.load_entry_points()
    for plugin in extra_plugins:
        pm.register(plugin)
    try:
        pm.check_pending()
    except pluggy.PluginValidationError as exc:
        raise PluginError(
            f"plugin {pm.get_name(exc.plugin) or exc.plugin!r} implements a hook that gridflex does "
            f"not define: {exc}. Hooks are listed in docs/plugins.md."
        ) from exc
    return pm


@dataclass(frozen=True)
class ComponentInfo:
    """A registered component and where it came from."""

    kind: str
    name: str
    cls: type
    plugin: str  # entry-point / registration name of the plugin
    distribution: str  # distribution that provides the plugin ("" if none)
    version: str


@dataclass
class Registry:
    """All components registered by the plugins of one plugin manager, by kind and name."""

    components: dict[str, dict[str, ComponentInfo]] = field(
        default_factory=lambda: {kind: {} for kind in KINDS}
    )

    @classmethod
    def from_plugin_manager(cls, pm: pluggy.PluginManager) -> Registry:
        """Call every ``gridflex_register_*`` hook and collect what plugins register.

        Each ``register(cls)`` call is checked at once (:func:`check_component`); the first bad
        class raises :class:`PluginError` naming the plugin, its module and distribution.
        """
        registry = cls()
        dists = getattr(pm, "distributions", {})
        for kind, hook_name in _REGISTER_HOOKS.items():
            hook = getattr(pm.hook, hook_name)
            for impl in hook.get_hookimpls():
                plugin_name = pm.get_name(impl.plugin) or repr(impl.plugin)
                dist = dists.get(plugin_name)
                dist_name = dist.metadata["name"] if dist is not None else ""
                version = dist.version if dist is not None else ""
                where = describe_plugin(plugin_name, impl.plugin, dist_name, version)

                def register(component: type, _p=plugin_name, _d=dist_name, _v=version, _k=kind,
                             _w=where):
                    registry._add(_k, component, _p, _d, _v, where=_w)

                impl.function(register=register)
        return registry

    def _add(self, kind: str, component: type, plugin: str, dist: str, version: str, *,
             where: str | None = None) -> None:
        where = where or f"plugin {plugin!r}"
        check_component(kind, component, where, plugin)
        name = component.name
        existing = self.components[kind].get(name)
        if existing is not None:
            raise PluginError(
                f"duplicate {kind} name {name!r}: registered by plugin {existing.plugin!r} "
                f"({_qualname(existing.cls)}) and by {where} ({_qualname(component)}); rename one "
                f"or block one with {BLOCK_ENV_VAR}={plugin}"
            )
        self.components[kind][name] = ComponentInfo(kind, name, component, plugin, dist, version)

    def names(self, kind: str) -> list[str]:
        return sorted(self.components[kind])

    def get(self, kind: str, name: str) -> type:
        """The class registered as ``name``; a :class:`UserError` with a suggestion otherwise."""
        try:
            return self.components[kind][name].cls
        except KeyError:
            allowed = self.names(kind)
            raise UserError(
                f"unknown {kind} {name!r}{did_you_mean(name, allowed)}; installed: "
                f"{', '.join(allowed) or 'none'}{blocked_note()}"
            ) from None


def load_registry(extra_plugins: tuple = ()) -> tuple[GridflexPluginManager, Registry]:
    """Plugin manager and registry in one call."""
    pm = get_plugin_manager(extra_plugins)
    return pm, Registry.from_plugin_manager(pm)

