"""Feeder reading: counts, regulator taps modes, the JSON format and the shipped caches.

The OpenDSS engine reads the .dss files; tests that need it are skipped when ``dss`` cannot be
imported. Loading the shipped caches is also tested with the engine blocked.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap

import pytest

from gridflex.errors import UserError
from gridflex.network.feeder import Feeder
from gridflex.runs.feeder_cache import cache_paths, load_feeder
from gridflex.shipped import BUILTIN_FEEDERS, shipped_feeders_dir

FEEDERS_DIR = shipped_feeders_dir()
SHIPPED = BUILTIN_FEEDERS  # shipped feeder name -> master file under FEEDERS_DIR
TAPS_MODES = ("file", "opendss")
# (buses, nodes, lines, switches, loads, capacitors, transformers, regcontrols)
COUNTS = {
    "ieee13": (16, 41, 12, 1, 15, 2, 5, 3),
    "ieee34mod1": (37, 95, 32, 0, 68, 2, 8, 6),
    "ieee34mod2": (56, 138, 51, 0, 38, 2, 8, 6),
    "ieee123": (132, 278, 126, 8, 91, 4, 8, 7),
    "ieee8500": (4876, 8531, 3698, 38, 1177, 10, 1190, 12),
}
IEEE123_OPENDSS_TAPS = {"reg1a": 6, "reg2a": 0, "reg3a": 2, "reg3c": 0, "reg4a": 10, "reg4b": 4, "reg4c": 6}
NO_CACHES = shutil.ignore_patterns("*.feeder.json.gz")
ENGINE_FIELDS = ("engine", "dss_python")  # provenance entries that name the engine's version


@pytest.fixture(scope="module")
def fresh():
    """Every shipped feeder read afresh by the engine, keyed by (feeder, taps)."""
    pytest.importorskip("dss", reason="the OpenDSS engine (dss-python) is not installed")
    from gridflex_plugins.feeders.dss_reader import read_dss_feeder

    return {
        (name, taps): read_dss_feeder(FEEDERS_DIR / rel, taps)
        for name, rel in SHIPPED.items()
        for taps in TAPS_MODES
    }


def _comparable(feeder: Feeder) -> dict:
    data = feeder.to_dict()
    data["provenance"] = {k: v for k, v in data["provenance"].items() if k not in ENGINE_FIELDS}
    return data


# -- counts and pitfalls --------------------------------------------------------------------------
@pytest.mark.parametrize("name", SHIPPED)
def test_counts(fresh, name):
    f = fresh[(name, "opendss")]
    counts = (
        len(f.buses), len(f.node_names), len(f.lines), len(f.switches), len(f.loads),
        len(f.capacitors), len(f.transformers), len(f.regcontrols),
    )
    assert counts == COUNTS[name]
    assert len(f.vsources) == 1


def test_ieee123_loads_and_pitfalls(fresh):
    f = fresh[("ieee123", "opendss")]
    models = [ld.model for ld in f.loads]
    assert (models.count(1), models.count(2), models.count(5)) == (59, 17, 15)
    assert sum(ld.conn == "delta" for ld in f.loads) == 7
    assert {"300_open", "94_open", "610", "61s", "150r"} <= {b.name for b in f.buses}
    assert f.bus("610").kv_base_ln == pytest.approx(0.48 / 3**0.5)
    s1a = next(ld for ld in f.loads if ld.name == "s1a")
    assert s1a.kv == 2.4 and s1a.nodes == [1, 0]  # rated 2.4 kV, not the 2.4018 kV base
    xfm1 = f.transformer("xfm1")
    assert [w.conn for w in xfm1.windings] == ["delta", "delta"]
    assert sum(b.x is not None for b in f.buses) > 120  # coordinates from the sibling BusCoords.dat
    assert "BusCoords.dat" in f.provenance["source_files"]
    assert "../IEEELineCodes.DSS" in f.provenance["source_files"]  # redirect relative to the file


def test_ieee34_single_node_delta_loads(fresh):
    f = fresh[("ieee34mod1", "opendss")]
    d832 = [ld for ld in f.loads if ld.name.startswith("d832_858")]
    assert len(d832) == 6
    assert all(ld.conn == "delta" and ld.n_phases == 1 and ld.nodes[1] == 0 for ld in d832)
    assert sum(ld.model == 4 for ld in f.loads) == 2


# -- taps modes ------------------------------------------------------------------------------------
def test_taps_opendss_ieee123_is_one_plain_solve(fresh):
    assert fresh[("ieee123", "opendss")].regulator_taps() == IEEE123_OPENDSS_TAPS


@pytest.mark.parametrize("name", SHIPPED)
def test_taps_file_ignores_regcontrols(fresh, name):
    # IEEE 13's file runs its own Solve with RegControls on; in "file" mode they must not act.
    assert set(fresh[(name, "file")].regulator_taps().values()) == {0}
    assert set(fresh[(name, "opendss")].regulator_taps().values()) != {0}


def test_unknown_taps_mode():
    with pytest.raises(UserError, match="taps mode"):
        load_feeder(FEEDERS_DIR / SHIPPED["ieee13"], taps="published")


# -- JSON format and caches ------------------------------------------------------------------------
@pytest.mark.parametrize("suffix", [".feeder.json", ".feeder.json.gz"])
def test_json_round_trip(fresh, tmp_path, suffix):
    feeder = fresh[("ieee123", "opendss")]
    path = feeder.to_json(tmp_path / f"ieee123{suffix}")
    assert Feeder.from_json(path) == feeder
    assert load_feeder(path) == feeder  # a gridflex feeder JSON loads directly


def test_gzip_output_is_reproducible(fresh, tmp_path):
    feeder = fresh[("ieee13", "file")]
    a = feeder.to_json(tmp_path / "a.feeder.json.gz").read_bytes()
    b = feeder.to_json(tmp_path / "b.feeder.json.gz").read_bytes()
    assert a == b


@pytest.mark.parametrize("taps", TAPS_MODES)
@pytest.mark.parametrize("name", SHIPPED)
def test_committed_cache_equals_fresh_import(fresh, name, taps):
    cache = cache_paths(FEEDERS_DIR / SHIPPED[name], taps)[0]
    assert cache.is_file(), f"{cache} is not committed"
    assert _comparable(Feeder.from_json(cache)) == _comparable(fresh[(name, taps)])


def test_stale_cache_is_rebuilt(tmp_path):
    pytest.importorskip("dss", reason="the OpenDSS engine (dss-python) is not installed")
    shutil.copytree(FEEDERS_DIR / "ieee13", tmp_path / "ieee13", ignore=NO_CACHES)
    shutil.copy(FEEDERS_DIR / "IEEELineCodes.DSS", tmp_path / "IEEELineCodes.DSS")
    master = tmp_path / "ieee13" / "IEEE13Nodeckt.dss"
    first = load_feeder(master, "file")
    cache = cache_paths(master, "file")[0]
    assert cache.is_file()
    with open(tmp_path / "IEEELineCodes.DSS", "a") as f:  # a redirected file changes
        f.write("\n! touched\n")
    second = load_feeder(master, "file")
    assert second.provenance["source_files"]["../IEEELineCodes.DSS"] != (
        first.provenance["source_files"]["../IEEELineCodes.DSS"]
    )


def test_read_through_plugin_registry(tmp_path):
    pytest.importorskip("dss", reason="the OpenDSS engine (dss-python) is not installed")
    import pluggy

    from gridflex.plugins import hookspecs
    from gridflex.plugins.registry import Registry
    from gridflex_plugins.feeders import dss_reader

    pm = pluggy.PluginManager(hookspecs.PROJECT)
    pm.add_hookspecs(hookspecs)
    pm.register(dss_reader)
    registry = Registry.from_plugin_manager(pm)
    assert registry.get("feeder_reader", "dss") is dss_reader.DssFeederReader

    shutil.copytree(FEEDERS_DIR / "ieee13", tmp_path / "ieee13", ignore=NO_CACHES)
    shutil.copy(FEEDERS_DIR / "IEEELineCodes.DSS", tmp_path / "IEEELineCodes.DSS")
    master = tmp_path / "ieee13" / "IEEE13Nodeckt.dss"
    assert len(load_feeder(master, "opendss", (pm, registry)).loads) == 15

    class FirstResult:  # gridflex_read_feeder answers before the readers are asked
        @hookspecs.hookimpl
        def gridflex_read_feeder(self, path, taps):
            return Feeder.from_json(cache_paths(FEEDERS_DIR / SHIPPED["ieee123"], taps)[0])

    pm.register(FirstResult())
    (tmp_path / "ieee13" / "IEEE13Nodeckt.taps-file.feeder.json.gz").unlink(missing_ok=True)
    assert len(load_feeder(master, "file", pm).loads) == 91


# -- without the engine ----------------------------------------------------------------------------
_BLOCKED = textwrap.dedent(
    """
    import sys, json
    sys.modules["dss"] = None
    sys.modules["opendssdirect"] = None
    from gridflex.runs.feeder_cache import load_feeder
    from gridflex.errors import UserError
    out = {}
    for path in sys.argv[2:]:
        for taps in ("file", "opendss"):
            feeder = load_feeder(path, taps)
            out[f"{path}:{taps}"] = [len(feeder.buses), len(feeder.loads)]
    try:
        load_feeder(sys.argv[1], "opendss")
        out["error"] = None
    except UserError as exc:
        out["error"] = str(exc)
    out["engine_imported"] = any(sys.modules.get(m) for m in ("dss", "opendssdirect", "dss_python_backend"))
    print(json.dumps(out))
    """
)


def test_shipped_caches_load_without_engine(tmp_path):
    shutil.copytree(FEEDERS_DIR / "ieee13", tmp_path / "ieee13", ignore=NO_CACHES)
    uncached = tmp_path / "ieee13" / "IEEE13Nodeckt.dss"
    paths = [str(FEEDERS_DIR / rel) for rel in SHIPPED.values()]
    env_home = {"HOME": str(tmp_path)}  # no user cache to fall back on
    result = subprocess.run(
        [sys.executable, "-c", _BLOCKED, str(uncached), *paths],
        capture_output=True, text=True, timeout=120, env={**_env(), **env_home},
    )
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    for name, rel in SHIPPED.items():
        for taps in TAPS_MODES:
            assert out[f"{FEEDERS_DIR / rel}:{taps}"] == [COUNTS[name][0], COUNTS[name][4]]
    assert not out["engine_imported"]
    message = out["error"]
    assert "IEEE13Nodeckt.dss" in message and "pip install dss-python" in message
    assert "cache" in message


def _env() -> dict:
    import os

    return dict(os.environ)


# -- format version 2: reactors, generation, CapControls, load status and VLowpu -----------------------
def test_json_round_trip_of_the_new_elements(tmp_path):
    pytest.importorskip("dss", reason="the OpenDSS engine (dss-python) is not installed")
    import warnings

    from test_dss_reading import BASES, CAPS, GENERATION, HEAD, REACTORS

    from gridflex_plugins.feeders.dss_reader import read_dss_feeder

    master = tmp_path / "new.dss"
    master.write_text(HEAD.replace("model=1", "model=1 status=fixed vlowpu=0.6") + REACTORS
                      + GENERATION + CAPS + BASES + "set loadmult=0.9\n")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        feeder = read_dss_feeder(master, "opendss")
    assert (len(feeder.reactors), len(feeder.generation), len(feeder.capcontrols)) == (11, 5, 1)
    assert feeder.load_mult == 0.9 and feeder.loads[0].status == "fixed" and feeder.loads[0].vlowpu == 0.6
    path = feeder.to_json(tmp_path / "new.feeder.json.gz")
    assert Feeder.from_json(path) == feeder


def test_older_format_is_not_read_as_this_one(tmp_path):
    feeder = Feeder.from_json(cache_paths(FEEDERS_DIR / SHIPPED["ieee13"], "file")[0])
    data = feeder.to_dict()
    data["format_version"] = 1
    with pytest.raises(ValueError, match="format version 1"):
        Feeder.from_dict(data)
