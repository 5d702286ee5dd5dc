"""gridflex's own admittance model against the OpenDSS engine (the oracle, never the solver).

Every element primitive must equal the engine's ``CktElement.Yprim`` (engine conductor order), and
the assembled ``y_si`` must equal the engine's SystemY minus the loads' primitives (OpenDSS puts
the loads' nominal admittances into SystemY; gridflex's Y has none).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from gridflex.network import admittance
from gridflex.errors import UserError
from gridflex.runs.feeder_cache import load_feeder
from gridflex.network.feeder import FeederWarning
from gridflex.network.grid_build import ISLAND_SHUNT_S, GridAssembler, build_grid
from gridflex.shipped import BUILTIN_FEEDERS, shipped_feeders_dir

dss = pytest.importorskip("dss", reason="the OpenDSS engine (dss-python) is not installed")

FEEDERS_DIR = shipped_feeders_dir()
# shipped feeder name -> master file under FEEDERS_DIR. Not IEEE 8500: the engine's dense SystemY
# of its 8,531 nodes (1.2 GB, twice with gridflex's) is too heavy for a unit test; its voltages
# are checked against the engine in tests/test_outside_feeders.py instead.
SHIPPED = {name: master for name, master in BUILTIN_FEEDERS.items() if name != "ieee8500"}
CASES = [(name, taps) for name in SHIPPED for taps in ("file", "opendss")]
RTOL = 1e-9  # relative to the element's (or the matrix's) largest |Y|

# A small circuit with what the IEEE feeders lack: a 3-winding wye-delta-wye transformer with
# off-nominal taps, %imag and %noloadloss; delta-wye units (lead and lag) with grounded and
# impedance-grounded neutrals; a 1-phase delta-wye unit; delta and switched capacitor banks;
# open conductors on a line, a transformer and a capacitor; a floating-neutral wye load.
SYNTHETIC_DSS = """\
clear
set defaultbasefrequency=60
new circuit.synth basekv=12.47 pu=1.02 angle=10 mvasc3=500 mvasc1=400 x1r1=6 x0r0=4
new transformer.t3 phases=3 windings=3 buses=[sourcebus b2 b3] conns=[wye delta wye]
~ kvs=[12.47 4.16 0.48] kvas=[1000 500 500] xhl=6 xht=8 xlt=4 %rs=[0.5 0.6 0.7]
~ %imag=0.5 %noloadloss=0.2 taps=[1.0 1.025 0.975]
new transformer.t4 phases=3 windings=2 buses=[b2 b4] conns=[delta wye] kvs=[4.16 0.48] kva=300
~ xhl=5 %r=1 leadlag=lead
transformer.t4.wdg=2 rneut=0.5 xneut=1
new transformer.t5 phases=3 windings=2 buses=[b2 b7] conns=[delta wye] kvs=[4.16 0.48] kva=300
~ xhl=5 %r=1
transformer.t5.wdg=2 rneut=0 xneut=0
new transformer.t1 phases=1 windings=2 buses=[b3.1 b5.1] kvs=[0.277 0.12] kva=50 xhl=2 ppm=5
new transformer.t6 phases=1 windings=2 buses=[b3.1.2 b8.1.0] conns=[delta wye] kvs=[0.48 0.12]
~ kva=25 xhl=2
new capacitor.cd bus1=b2 phases=3 kvar=[100 200] kv=4.16 conn=delta states=[1 0]
new capacitor.c2 bus1=b3.1.2 phases=1 kvar=50 kv=0.48 conn=delta
new capacitor.cw bus1=b4 phases=3 kvar=30 kv=0.48
new line.lo bus1=b2 bus2=b6 r1=0.1 x1=0.2 c1=10 r0=0.3 x0=0.6 c0=5 length=1 units=km
new load.l1 bus1=b4 phases=3 kv=0.48 kw=100 kvar=20 model=1
new load.l2 bus1=b6.1.2.3.4 phases=3 kv=4.16 kw=10 kvar=2 model=2
set voltagebases=[12.47 4.16 0.48]
calcv
open line.lo 2 2
open transformer.t4 2 1
open capacitor.cw 1 2
"""


# -- engine helpers ------------------------------------------------------------------------------
def compile_engine(path: Path, transformer_taps: dict[str, list[float]]):
    """Compile ``path``, freeze the given winding taps, control off, solve at tolerance 1e-10."""
    cwd = os.getcwd()
    engine = dss.DSS.NewContext()
    try:
        engine.Text.Command = f'compile "{path}"'
    finally:
        os.chdir(cwd)  # the engine changes directory while compiling
    circuit = engine.ActiveCircuit
    for name, taps_pu in transformer_taps.items():
        circuit.Transformers.Name = name
        for k, tap in enumerate(taps_pu, start=1):
            circuit.Transformers.Wdg = k
            circuit.Transformers.Tap = tap
    engine.Text.Command = "set controlmode=off tolerance=1e-10"
    circuit.Solution.Solve()
    return circuit


def engine_yprim(circuit, element: str) -> np.ndarray:
    circuit.SetActiveElement(element)
    flat = np.asarray(circuit.ActiveCktElement.Yprim)
    y = flat[0::2] + 1j * flat[1::2]
    n = int(round(len(y) ** 0.5))
    return y.reshape(n, n)


def engine_y_without_loads(circuit) -> tuple[list[str], np.ndarray]:
    """SystemY minus every load's primitive, over the engine's (lower-cased) node order."""
    order = [name.lower() for name in circuit.YNodeOrder]
    index = {name: i for i, name in enumerate(order)}
    flat = np.asarray(circuit.SystemY)
    y = (flat[0::2] + 1j * flat[1::2]).reshape(len(order), len(order))
    for name in circuit.Loads.AllNames:
        y_load = engine_yprim(circuit, f"load.{name}")
        element = circuit.ActiveCktElement
        bus = element.BusNames[0].split(".")[0].lower()
        nodes = [index[f"{bus}.{n}"] if n else -1 for n in element.NodeOrder]
        for i, a in enumerate(nodes):
            for j, b in enumerate(nodes):
                if a >= 0 and b >= 0:
                    y[a, b] -= y_load[i, j]
    return order, y


def primitives(feeder) -> dict[str, np.ndarray]:
    """gridflex's primitive of every element, keyed by the engine's element name."""
    freq = feeder.base_frequency_hz
    out = {f"line.{x.name}": admittance.line_primitive(x, freq) for x in feeder.lines}
    out |= {f"transformer.{x.name}": admittance.transformer_primitive(x) for x in feeder.transformers}
    out |= {f"capacitor.{x.name}": admittance.capacitor_primitive(x, freq, freq) for x in feeder.capacitors}
    out |= {f"vsource.{x.name}": admittance.source_primitive(x) for x in feeder.vsources}
    return out


def worst_relative_error(feeder, circuit) -> float:
    worst = 0.0
    for element, y_mine in primitives(feeder).items():
        y_engine = engine_yprim(circuit, element)
        assert y_engine.shape == y_mine.shape, element
        worst = max(worst, np.abs(y_mine - y_engine).max() / np.abs(y_engine).max())
    return worst


def assert_y_matches_engine(feeder, circuit) -> None:
    grid = build_grid(feeder)
    order, y_engine = engine_y_without_loads(circuit)
    assert sorted(order) == sorted(grid.node_names)
    idx = [grid.node_names.index(name) for name in order]
    y_mine = grid.y_si.copy()
    islanded = [grid.node_index(name) for name in grid.meta["islanded_nodes"]]
    y_mine[islanded, islanded] -= ISLAND_SHUNT_S  # gridflex holds dead nodes at 0 V with it
    y_mine = y_mine[np.ix_(idx, idx)]
    assert np.abs(y_mine - y_engine).max() <= RTOL * np.abs(y_engine).max()
    # entry by entry too, so the small entries cannot hide behind the 1e6 S switches
    diag = np.abs(np.diag(y_engine))
    scale = np.maximum(np.abs(y_engine), 1e-3 * np.median(diag[diag > 0]))
    assert (np.abs(y_mine - y_engine) / scale).max() < 1e-6


@pytest.fixture(scope="module")
def cases():
    """(feeder, engine circuit at the feeder's taps) for every shipped feeder and taps mode."""
    out = {}
    for name, taps in CASES:
        path = FEEDERS_DIR / SHIPPED[name]
        feeder = load_feeder(path, taps)
        frozen = {t.name: [w.tap_pu for w in t.windings] for t in feeder.transformers}
        out[(name, taps)] = (feeder, compile_engine(path, frozen))
    return out


# -- shipped feeders -------------------------------------------------------------------------------
@pytest.mark.parametrize(("name", "taps"), CASES)
def test_primitives_equal_engine_yprim(cases, name, taps):
    feeder, circuit = cases[(name, taps)]
    assert worst_relative_error(feeder, circuit) < RTOL


@pytest.mark.parametrize(("name", "taps"), CASES)
def test_y_equals_engine_system_y_without_loads(cases, name, taps):
    feeder, circuit = cases[(name, taps)]
    assert_y_matches_engine(feeder, circuit)


def test_source_norton_and_emf(cases):
    feeder, circuit = cases[("ieee13", "opendss")]
    grid = build_grid(feeder)
    source = feeder.vsources[0]
    assert [grid.node_names[i] for i in grid.source_nodes] == ["sourcebus.1", "sourcebus.2", "sourcebus.3"]
    np.testing.assert_allclose(grid.source_y_si, engine_yprim(circuit, "vsource.source")[:3, :3], rtol=1e-12)
    v_ln = 115e3 * 1.0001 / np.sqrt(3)
    expected = v_ln * np.exp(1j * np.deg2rad([30.0, -90.0, 150.0]))
    np.testing.assert_allclose(grid.source_emf_v, expected, rtol=1e-14)
    assert source.mvasc3 == 20000 and source.mvasc1 == 21000


def test_load_branches_ieee123(cases):
    grid = build_grid(cases[("ieee123", "opendss")][0])
    by_load = {}
    for k, name in enumerate(grid.load_names):
        by_load.setdefault(name, []).append(k)
    assert len(by_load) == 91 == len(grid.load_elements)
    (s1a,) = by_load["load.s1a"]
    assert grid.node_names[grid.load_node_a[s1a]] == "1.1" and grid.load_node_b[s1a] == -1
    assert grid.load_v_nom_v[s1a] == pytest.approx(2400.0)
    (s35a,) = by_load["load.s35a"]  # single-phase delta 35.1.2 at 4.16 kV
    ends = [grid.node_names[grid.load_node_a[s35a]], grid.node_names[grid.load_node_b[s35a]]]
    assert ends == ["35.1", "35.2"]
    assert grid.load_v_nom_v[s35a] == pytest.approx(4160.0)
    total_kw = sum(ld.kw for ld in cases[("ieee123", "opendss")][0].loads)
    assert grid.load_p_kw.sum() == pytest.approx(total_kw)
    assert sorted(set(grid.load_model)) == [1, 2, 5]


def test_single_node_delta_load_is_phase_to_ground(cases):
    grid = build_grid(cases[("ieee34mod1", "opendss")][0])
    k = grid.load_names.index("load.d832_858sa")
    assert grid.node_names[grid.load_node_a[k]] == "832.1" and grid.load_node_b[k] == -1
    assert grid.load_v_nom_v[k] == pytest.approx(24900.0)


def test_bus_610_held_by_antifloat_shunt_only(cases):
    grid = build_grid(cases[("ieee123", "opendss")][0])
    idx = [grid.node_index(f"610.{p}") for p in (1, 2, 3)]
    # no path to ground but the 1-ppm shunt: the rows of 610 nearly sum to zero
    row_sums = np.abs(grid.y_si[idx].sum(axis=1))
    assert np.all(row_sums > 0) and np.all(row_sums < 1e-5 * np.abs(grid.y_si[idx][:, idx]).max())


# -- taps override -------------------------------------------------------------------------------
def test_taps_override_matches_engine(cases):
    feeder, _ = cases[("ieee123", "file")]
    taps = {"reg1a": 7, "reg2a": -1, "reg3c": -1, "reg4a": 8, "reg4b": 1, "reg4c": 5}
    step = 0.00625
    frozen = {name: [1.0, 1.0 + tap * step] for name, tap in taps.items()}
    circuit = compile_engine(FEEDERS_DIR / SHIPPED["ieee123"], frozen)
    assembler = GridAssembler(feeder)
    grid = assembler.grid(taps)
    assert grid.meta["taps"] == {**feeder.regulator_taps(), **taps}
    np.testing.assert_array_equal(assembler.y_si(taps), grid.y_si)
    order, y_engine = engine_y_without_loads(circuit)
    idx = [grid.node_names.index(name) for name in order]
    assert np.abs(grid.y_si[np.ix_(idx, idx)] - y_engine).max() <= RTOL * np.abs(y_engine).max()
    reg4a = next(b for b in grid.branches if b.name == "transformer.reg4a")
    y_engine = engine_yprim(circuit, "transformer.reg4a")
    np.testing.assert_allclose(reg4a.yprim_si, y_engine, rtol=1e-12, atol=1e-9)


def test_taps_override_rejects_unknown_transformer(cases):
    with pytest.raises(UserError, match="not a regulated transformer"):
        build_grid(cases[("ieee123", "file")][0], {"xfm1": 2})


def test_branches_cover_series_elements(cases):
    feeder, _ = cases[("ieee123", "opendss")]
    grid = build_grid(feeder)
    kinds = [b.kind for b in grid.branches]
    assert (kinds.count("line"), kinds.count("switch"), kinds.count("transformer")) == (118, 8, 8)
    for branch in grid.branches:
        assert branch.yprim_si.shape == (len(branch.terminal_nodes),) * 2


# -- synthetic circuit -----------------------------------------------------------------------------
def test_synthetic_circuit_matches_engine(tmp_path):
    path = tmp_path / "synth.dss"
    path.write_text(SYNTHETIC_DSS)
    feeder = load_feeder(path, "file")
    assert {t.name: t.n_windings for t in feeder.transformers}["t3"] == 3
    assert feeder.lines[0].open_conductors == [4]
    frozen = {t.name: [w.tap_pu for w in t.windings] for t in feeder.transformers}
    circuit = compile_engine(path, frozen)
    assert worst_relative_error(feeder, circuit) < RTOL
    # t4's open winding-2 conductor 1 leaves b4.1 without a path to the source: an island
    with pytest.warns(FeederWarning, match=r"no path to the source.*: b4\.1\."):
        assert_y_matches_engine(feeder, circuit)
        grid = build_grid(feeder)
    assert grid.meta["islanded_nodes"] == ["b4.1"]
    k = grid.load_names.index("load.l2")  # a wye load with its neutral on node 4 of b6
    assert grid.node_names[grid.load_node_b[k]] == "b6.4"
