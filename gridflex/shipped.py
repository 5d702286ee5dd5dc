"""Where the package's own data are: shipped scenarios, feeders and tables.

Floor 0 of the package: this module imports nothing from gridflex but :mod:`gridflex.errors`, so
every floor (``network``, ``fleet``, ``scenario``, ``runs``, ``cli``), the plugins, the tests and
the benchmarks can ask it where a shipped file lies. The files themselves are the package data of
``gridflex.scenarios`` (the repository's ``scenarios/`` folder), found with importlib.resources so
that an installed wheel and a source checkout behave alike:

* ``<scenarios>/*.yaml``: the shipped scenarios (:data:`DEFAULT_SCENARIO` the embedded default),
  with their ``*.targets.json`` and ``*.taps.json`` sidecars;
* ``<scenarios>/feeders/``: the IEEE test feeders, usable by name (:data:`BUILTIN_FEEDERS`), and
  ``line_ampacity.yaml`` (per-line-code ampacity in A, :func:`line_ampacity_path`);
* ``<scenarios>/data/``: the household, PV, weather and price profiles (:func:`shipped_data_dir`).
"""

from __future__ import annotations

import importlib.resources
from pathlib import Path

from gridflex.errors import UserError, did_you_mean

#: Package whose data folder holds the shipped scenarios, feeders and profiles.
SCENARIOS_PACKAGE = "gridflex.scenarios"

#: File name of the embedded default scenario (``gridflex run`` with no SCENARIO).
DEFAULT_SCENARIO = "ieee13_small.yaml"

#: Feeders shipped with gridflex, by name (``feeder.file``, ``gridflex pf NAME``): the master
#: file, relative to :func:`shipped_feeders_dir`. The one table of shipped feeder names.
BUILTIN_FEEDERS: dict[str, str] = {
    "ieee13": "ieee13/IEEE13Nodeckt.dss",
    "ieee34mod1": "ieee34/ieee34Mod1.dss",
    "ieee34mod2": "ieee34/ieee34Mod2.dss",
    "ieee123": "ieee123/IEEE123Master.dss",
    # gridflex's master over upstream's unchanged 8500-node files (feeders/README.md)
    "ieee8500": "ieee8500/IEEE8500Master.dss",
}

#: Per-line-code ampacity table, relative to :func:`shipped_feeders_dir`.
LINE_AMPACITY_FILE = "line_ampacity.yaml"


def shipped_scenarios_dir() -> Path:
    """Folder of the scenarios shipped in the package (``gridflex.scenarios``)."""
    return Path(str(importlib.resources.files(SCENARIOS_PACKAGE)))


def shipped_scenarios() -> list[Path]:
    """The shipped scenario files (``*.yaml``), sorted by name."""
    return sorted(shipped_scenarios_dir().glob("*.yaml"))


def default_scenario_path() -> Path:
    """The embedded default scenario (:data:`DEFAULT_SCENARIO`)."""
    return shipped_scenarios_dir() / DEFAULT_SCENARIO


def shipped_feeders_dir() -> Path:
    """Folder of the shipped feeders (``<scenarios>/feeders``)."""
    return shipped_scenarios_dir() / "feeders"


def shipped_data_dir() -> Path:
    """Folder of the shipped profile data (``<scenarios>/data``)."""
    return shipped_scenarios_dir() / "data"


def line_ampacity_path() -> Path:
    """The per-line-code ampacity table (``<scenarios>/feeders/line_ampacity.yaml``)."""
    return shipped_feeders_dir() / LINE_AMPACITY_FILE


def builtin_feeder_names() -> str:
    """The shipped feeder names as one comma-separated string, for messages."""
    return ", ".join(BUILTIN_FEEDERS)


def is_builtin_feeder(name: str) -> bool:
    """Whether ``name`` (any case) names a shipped feeder."""
    return str(name).lower() in BUILTIN_FEEDERS


def builtin_feeder_path(name: str) -> Path:
    """The master file of the shipped feeder ``name`` (any case); a :class:`UserError` naming the
    shipped feeders when there is none of that name."""
    key = str(name).lower()
    if key not in BUILTIN_FEEDERS:
        raise UserError(f"{name!r} is not a shipped feeder; shipped feeders by name: "
                        f"{builtin_feeder_names()}{did_you_mean(key, BUILTIN_FEEDERS)}")
    return shipped_feeders_dir() / BUILTIN_FEEDERS[key]
