"""The shipped 10,000-agent scenario on IEEE 8500 (``scenarios/ieee8500_10000.yaml``): it
validates, its feeder loads from the committed cache without the OpenDSS engine, the cache is a
current reading of the files, and the 8500 conductor ratings in ``line_ampacity.yaml`` are the
feeder's own. Building its world (~15-25 s, ~4.5 GB) is left to the calibration and
``bench/scaling.py``; nothing here builds a grid.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import textwrap

import pytest

from gridflex.network.constraints import line_ampacity_table
from gridflex.network.feeder import Feeder
from gridflex.plugins.registry import load_registry
from gridflex.runs.feeder_cache import cache_paths
from gridflex.scenario import load_scenario
from gridflex.shipped import builtin_feeder_path, shipped_feeders_dir, shipped_scenarios_dir

SCENARIO = shipped_scenarios_dir() / "ieee8500_10000.yaml"
UPSTREAM = shipped_feeders_dir() / "outside" / "IEEETestCases" / "8500-Node"


def test_shipped_scenario_validates_with_the_paper_split():
    _, registry = load_registry()
    loaded = load_scenario(SCENARIO, registry=registry)
    cfg = loaded.config
    counts = {group.type: group.count for group in cfg.devices}
    assert counts == {"battery": 4000, "heat_pump": 4000, "generator": 2000}
    assert cfg.feeder.tap_treatment == "frozen" and cfg.feeder.taps == "file"
    # as calibrated (the record holds this key): frozen taps, no regulated evaluation; per-sample
    # taps now run on the sparse path (tests/test_powerflow_sparse.py), a recalibration is open
    assert cfg.environment.regulated_evaluation is False
    assert loaded.feeder_path().is_file()
    assert cache_paths(loaded.feeder_path(), "file")[0].is_file()


_BLOCKED = textwrap.dedent(
    """
    import sys, json
    sys.modules["dss"] = None
    sys.modules["opendssdirect"] = None
    from gridflex.runs.feeder_cache import load_feeder
    from gridflex.scenario import load_scenario
    from gridflex.shipped import builtin_feeder_path
    out = {}
    feeder = load_feeder(load_scenario(sys.argv[1]).feeder_path(), "file")
    out["scenario"] = [len(feeder.loads), sorted({l.status for l in feeder.loads}),
                       sorted({s for c in feeder.capacitors for s in c.states}),
                       sorted(set(feeder.regulator_taps().values()))]
    for taps in ("file", "opendss"):
        out[taps] = len(load_feeder(builtin_feeder_path("ieee8500"), taps).buses)
    out["engine_imported"] = any(sys.modules.get(m) for m in ("dss", "opendssdirect", "dss_python_backend"))
    print(json.dumps(out))
    """
)


def test_feeder_loads_from_the_committed_caches_without_the_engine(tmp_path):
    """A fresh machine (no user cache, engine blocked) loads the scenario's feeder: every load
    variable (upstream's 24 status=fixed ones included), every capacitor off, taps neutral."""
    import os

    env = {**os.environ, "HOME": str(tmp_path)}
    done = subprocess.run([sys.executable, "-c", _BLOCKED, str(SCENARIO)], capture_output=True, text=True,
                          timeout=120, env=env)
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    assert out["scenario"] == [1177, ["variable"], [0], [0]]
    assert out["file"] == out["opendss"] == 4876
    assert not out["engine_imported"]


@pytest.mark.opendss
def test_committed_cache_of_the_scenario_feeder_equals_a_fresh_reading():
    pytest.importorskip("dss", reason="the OpenDSS engine (dss-python) is not installed")
    from gridflex_plugins.feeders.dss_reader import read_dss_feeder

    path = load_scenario(SCENARIO).feeder_path()
    fresh = read_dss_feeder(path, "file").to_dict()
    cached = Feeder.from_json(cache_paths(path, "file")[0]).to_dict()
    for data in (fresh, cached):
        data["provenance"] = {k: v for k, v in data["provenance"].items() if k not in ("engine", "dss_python")}
    assert cached == fresh
    # the shipped feeder under the variant: upstream's taps when the engine settles them
    settled = Feeder.from_json(cache_paths(builtin_feeder_path("ieee8500"), "opendss")[0])
    assert list(settled.regulator_taps().values()) == [2, 2, 1, 10, 6, 2, 16, 10, 1, 12, 12, 5]


def _dss_statements(path, kind: str):
    """``(name, rest of the statement)`` of every ``New <kind>.<name> ...`` with its ``~`` lines."""
    lines = [re.split(r"!|//", line, maxsplit=1)[0] for line in path.read_text(errors="replace").splitlines()]
    for line in re.sub(r"\n\s*~", " ", "\n".join(lines)).splitlines():
        match = re.match(rf"\s*new\s+{kind}\.(\S+)\s*(.*)", line, re.I)
        if match:
            yield match.group(1).lower(), match.group(2)


def test_ieee8500_ratings_are_the_feeders_own():
    """Every linecode the 8500 lines use is rated: by the smallest phase wire's Normamps
    (WireData.dss) of the LineGeometry of the same name, or by the linecode's own normamps."""
    wires = {name: float(re.search(r"normamps=([0-9.]+)", rest, re.I).group(1))
             for name, rest in _dss_statements(UPSTREAM / "WireData.dss", "wiredata")}
    expected = {}
    for name, rest in _dss_statements(UPSTREAM / "LineGeometry.dss", "linegeometry"):
        n_phases = int(re.search(r"nphases=(\d+)", rest, re.I).group(1))
        phase_wires = [w.lower() for k, w in re.findall(r"cond=(\d+)\s+wire=(\S+)", rest, re.I) if int(k) <= n_phases]
        expected[name] = min(wires[w] for w in phase_wires)
    for file in ("LineCodes2.DSS", "Triplex_Linecodes.dss"):
        for name, rest in _dss_statements(UPSTREAM / file, "linecode"):
            own = re.search(r"normamps=([0-9.]+)", rest, re.I)
            if own:
                expected[name] = float(own.group(1))
    used = set()
    for file in ("Lines.dss", "Triplex_Lines.DSS"):
        used |= {code.lower() for code in re.findall(r"linecode=(\S+)", (UPSTREAM / file).read_text(), re.I)}
    table = line_ampacity_table()
    assert len(used) == 71
    assert {code: table.get(code) for code in used} == {code: expected[code] for code in used}
