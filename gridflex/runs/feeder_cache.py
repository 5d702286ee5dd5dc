"""Load a feeder from an OpenDSS file or a gridflex feeder JSON, through a sha256-checked cache.

Reading a .dss file needs the OpenDSS engine; loading a cached or JSON feeder does not. The cache
of ``DIR/NAME.dss`` read with taps mode ``T`` is ``DIR/NAME.taps-T.feeder.json.gz`` (or, when DIR is
not writable, the same name under ``~/.cache/gridflex/feeders/``). A cache is used only while the
sha256 of every source file it records (the master file, the files it redirects to, the coordinate
file) still matches; otherwise the feeder is read again and the cache rewritten. No engine is
imported here.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

from gridflex.errors import UserError
from gridflex.network.feeder import TAPS_MODES, Feeder, warn
from gridflex.plugins.registry import Registry, load_registry
from gridflex.shipped import builtin_feeder_names

FEEDER_JSON_SUFFIXES = (".feeder.json", ".feeder.json.gz")
USER_CACHE_DIR = Path("~/.cache/gridflex/feeders")


def load_feeder(path: str | Path, taps: str = "opendss", registry_or_pm: Any = None) -> Feeder:
    """The engineering model of the feeder file ``path``.

    ``path`` is a gridflex feeder JSON (``*.feeder.json[.gz]``, returned as stored; ``taps`` is
    ignored) or a file a feeder reader understands (``.dss``). For the latter a valid cache is
    returned without any engine; otherwise the feeder is read (hook ``gridflex_read_feeder``
    first, then the registered reader for the suffix) and cached. ``registry_or_pm`` is a
    :class:`pluggy.PluginManager`, a ``(pm, registry)`` pair from
    :func:`gridflex.plugins.registry.load_registry`, or ``None`` for the built-in OpenDSS reader.
    """
    path = Path(path).expanduser().resolve()
    if not path.is_file():
        raise UserError(f"feeder file {path} does not exist; give a path to a .dss master file or a "
                        f"gridflex feeder .json(.gz), or a shipped feeder by name: {builtin_feeder_names()}")
    if path.name.lower().endswith(FEEDER_JSON_SUFFIXES):
        return _read_feeder_json(path)
    if taps not in TAPS_MODES:
        raise UserError(f"unknown taps mode {taps!r}; use one of {', '.join(TAPS_MODES)}")
    for cache in cache_paths(path, taps):
        cached = _valid_cache(cache, path)
        if cached is not None:
            for note in cached.notes:  # what the reader said when it read the file, said again
                warn(f"{path.name}: {note}")
            return cached
    try:
        feeder = _read_with_plugins(path, taps, registry_or_pm)
    except UserError as exc:
        searched = " or ".join(str(p) for p in cache_paths(path, taps))
        raise UserError(f"{exc} (No up-to-date gridflex cache of it was found at {searched}.)") from None
    write_cache(feeder, path, taps)
    return feeder


def cache_paths(path: Path, taps: str) -> list[Path]:
    """Where the cache of ``path`` read with ``taps`` may live, in lookup order."""
    name = f"{path.stem}.taps-{taps}.feeder.json.gz"
    return [path.with_name(name), USER_CACHE_DIR.expanduser() / name]


def write_cache(feeder: Feeder, path: Path, taps: str) -> Path:
    """Write ``feeder`` as the cache of ``path``: beside it if writable, else in the user cache."""
    beside, fallback = cache_paths(path, taps)
    target = beside if os.access(path.parent, os.W_OK) else fallback
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f".{target.name}.{os.getpid()}.partial.gz")
    feeder.to_json(partial)
    os.replace(partial, target)  # atomic: a concurrent reader never sees half a file
    return target


def sources_unchanged(feeder: Feeder, path: Path) -> bool:
    """Whether every source file recorded in ``feeder.provenance`` still has its sha256."""
    recorded = feeder.provenance.get("source_files") or {}
    if not recorded or feeder.provenance.get("source") != path.name:
        return False
    for relative, digest in recorded.items():
        source = path.parent / relative
        if not source.is_file() or _sha256(source) != digest:
            return False
    return True


def _valid_cache(cache: Path, path: Path) -> Feeder | None:
    if not cache.is_file():
        return None
    try:
        feeder = Feeder.from_json(cache)
    except (OSError, ValueError, KeyError, TypeError):
        return None  # unreadable or older format: read the source again
    return feeder if sources_unchanged(feeder, path) else None


def _read_feeder_json(path: Path) -> Feeder:
    try:
        return Feeder.from_json(path)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise UserError(f"{path} is not a valid gridflex feeder file: {exc}") from None


def _read_with_plugins(path: Path, taps: str, registry_or_pm: Any) -> Feeder:
    # the readers installed as plugins (the built-in .dss reader is one), never imported directly
    pm, registry = load_registry() if registry_or_pm is None else _pm_and_registry(registry_or_pm)
    feeder = pm.hook.gridflex_read_feeder(path=path, taps=taps)
    if feeder is not None:
        return feeder
    readers = [info.cls for info in registry.components["feeder_reader"].values()]
    suffix = path.suffix.lower()
    for reader in readers:
        if suffix in tuple(s.lower() for s in reader.suffixes):
            return reader().read(path, taps)
    known = sorted({s for r in readers for s in r.suffixes})
    raise UserError(
        f"no feeder reader for {path.name!r} (suffix {suffix!r}); readers installed for: "
        f"{', '.join(known) or 'none'}; a gridflex feeder JSON (*.feeder.json.gz) needs no reader"
    )


def _pm_and_registry(registry_or_pm: Any):
    if isinstance(registry_or_pm, tuple):
        return registry_or_pm
    return registry_or_pm, Registry.from_plugin_manager(registry_or_pm)


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()
