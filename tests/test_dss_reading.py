"""Reading OpenDSS files that use more than the IEEE 13/34/123 feeders do (issue #19).

Small synthetic circuits, each against the OpenDSS engine (the oracle, never the solver):
elements (reactors, generators, PV systems, storage, CapControls, SwtControls, load models 3
and 8, 2-phase delta loads, Isources), settings that change the answer (LoadMult, solution
mode, VLowpu, status=fixed, MaxIterations) and script patterns that used to crash (elements
after a Solve, no voltage bases, islanded loads). Bad input must be a UserError naming the
element, never a traceback or a silently different answer.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest

from gridflex.errors import UserError
from gridflex.network import admittance
from gridflex.network.feeder import Feeder, FeederWarning
from gridflex.network.grid_build import build_grid
from opendss_oracle import compare_with_engine

dss = pytest.importorskip("dss", reason="the OpenDSS engine (dss-python) is not installed")
pytestmark = pytest.mark.opendss

TOL_PU = 1e-6  # gridflex vs the engine, both at tolerance 1e-10 (measured: ~1e-8 or better)

HEAD = """\
clear
set defaultbasefrequency=60
new circuit.t basekv=12.47 pu=1.02 mvasc3=500 mvasc1=400
new line.l1 bus1=sourcebus bus2=b1 r1=0.2 x1=0.4 r0=0.5 x0=1.2 length=1 units=km
new line.l2 bus1=b1 bus2=b2 r1=0.2 x1=0.4 r0=0.5 x0=1.2 length=2 units=km
new load.a bus1=b1 phases=3 kv=12.47 kw=900 kvar=300 model=1
new load.b bus1=b2.1 phases=1 kv=7.2 kw=300 kvar=100 model=2
new load.c bus1=b2 phases=3 kv=12.47 kw=600 kvar=200 model=5
"""
BASES = "set voltagebases=[12.47]\ncalcv\n"


def write(tmp_path: Path, text: str, name: str = "case.dss") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def read(path: Path, taps: str = "file") -> Feeder:
    from gridflex_plugins.feeders.dss_reader import read_dss_feeder

    return read_dss_feeder(path, taps)


def engine_yprim(path: Path, element: str) -> np.ndarray:
    import os

    engine = dss.DSS.NewContext()
    cwd = os.getcwd()
    try:
        engine.Text.Command = f'compile "{path}"'
    finally:
        os.chdir(cwd)
    engine.Text.Command = "set controlmode=off"
    engine.ActiveCircuit.Solution.Solve()
    engine.ActiveCircuit.SetActiveElement(element)
    y = np.asarray(engine.ActiveCircuit.ActiveCktElement.Yprim, dtype=float)
    y = y[0::2] + 1j * y[1::2]
    size = int(round(np.sqrt(y.size)))
    return y.reshape(size, size)


# -- elements ---------------------------------------------------------------------------------------
REACTORS = """\
new reactor.series bus1=b2 bus2=b3 phases=3 r=0.1 x=0.5
new reactor.shunt bus1=b1 phases=3 kvar=300 kv=12.47
new reactor.delta bus1=b1 phases=3 kvar=200 kv=12.47 conn=delta
new reactor.rp bus1=b3.1 bus2=b4.1 phases=1 r=0.2 x=1 rp=50
new reactor.par bus1=b3 phases=3 r=400 x=300 parallel=yes
new reactor.matrix bus1=b3 bus2=b5 phases=2 rmatrix=[0.3 0.1 | 0.1 0.3] xmatrix=[0.9 0.3 | 0.3 0.9]
new reactor.seq bus1=b3 bus2=b6 phases=3 z1=[0.1 0.6] z0=[0.3 1.5]
new reactor.neutral bus1=b4.1 phases=1 r=0.001 x=0
new reactor.mpar bus1=b3 bus2=b7 phases=2 rmatrix=[300 0 | 0 300] xmatrix=[400 0 | 0 400] parallel=yes
new reactor.d1 bus1=b3.1.2 phases=1 kvar=100 kv=12.47 conn=delta
new reactor.rpx bus1=b3 bus2=b8 phases=3 r=1 x=2 rp=30
new load.d bus1=b5.1.2 phases=1 kv=12.47 kw=50 kvar=10 conn=delta
new load.e bus1=b6 phases=3 kv=12.47 kw=80 kvar=20
"""


def test_reactor_primitives_equal_engine_yprim(tmp_path):
    path = write(tmp_path, HEAD + REACTORS + BASES)
    feeder = read(path)
    assert len(feeder.reactors) == 11
    for reactor in feeder.reactors:
        mine = admittance.reactor_primitive(reactor)
        engine = engine_yprim(path, f"reactor.{reactor.name}")
        assert mine.shape == engine.shape, reactor.name
        # the engine builds a sequence-specified reactor's Z matrix to ~1e-7 only
        rtol = 1e-6 if reactor.name == "seq" else 1e-12
        np.testing.assert_allclose(mine, engine, rtol=0, atol=rtol * np.abs(engine).max(),
                                   err_msg=reactor.name)


def test_reactors_power_flow_matches_engine(tmp_path):
    out = compare_with_engine(write(tmp_path, HEAD + REACTORS + BASES), "file")
    assert out["max_dv_pu"] < TOL_PU
    # the series reactor's terminal currents are reported as a branch, as the engine's
    result = out["result"]
    series = result.branch_currents_a.numpy().reshape(-1)[result.branch_slices["reactor.series"]]
    out["case"].circuit.SetActiveElement("reactor.series")
    engine = np.asarray(out["case"].circuit.ActiveCktElement.Currents, dtype=float)
    np.testing.assert_allclose(np.abs(series), np.abs(engine[0::2] + 1j * engine[1::2]), rtol=1e-6)


GENERATION = """\
new generator.g1 bus1=b1 phases=3 kv=12.47 kw=500 kvar=100 model=1 vminpu=0.97
new pvsystem.pv1 bus1=b2 phases=3 kv=12.47 kva=300 pmpp=250 irradiance=0.8 pf=0.95 vminpu=0.97
new storage.st1 bus1=b2 phases=3 kv=12.47 kwrated=100 kwhrated=400 state=discharging %discharge=50 vminpu=0.97
new generator.g2 bus1=b2.2 phases=1 kv=7.2 kw=40 kvar=-10 model=2
new generator.gd bus1=b2 phases=3 kv=12.47 kw=100 kvar=20 conn=delta vminpu=0.97
"""


def test_generation_is_a_fixed_injection(tmp_path):
    path = write(tmp_path, HEAD + GENERATION + BASES)
    out = compare_with_engine(path, "file")
    assert out["max_dv_pu"] < TOL_PU
    feeder = out["feeder"]
    produced = {g.name: (round(g.kw, 6), round(g.kvar, 6)) for g in feeder.generation}
    assert produced["generator.g1"] == (500.0, 100.0)
    assert produced["pvsystem.pv1"][0] == pytest.approx(200.0)  # 250 kW x 0.8 irradiance
    assert produced["storage.st1"][0] == pytest.approx(50.0)  # 50 % of 100 kW
    grid = out["grid"]
    assert grid.load_fixed[grid.load_elements.index("pvsystem.pv1")]  # load multipliers leave it alone


def test_generation_below_vminpu_is_an_impedance_as_the_engine(tmp_path):
    # at 3.5x the loads, g1, pv1 and st1 fall below their vminpu=0.97: OpenDSS runs them as the
    # impedance of their power at vminpu; gridflex must do the same at its own load multiplier
    path = write(tmp_path, HEAD + GENERATION + BASES)
    out = compare_with_engine(path, "file", load_mult=3.5)
    v_pu = np.abs(out["v_gridflex"]) / out["grid"].v_base_ln_v
    assert v_pu[out["grid"].node_index("b2.1")] < 0.97
    assert out["max_dv_pu"] < TOL_PU


def test_two_phase_delta_and_model_3_loads(tmp_path):
    text = HEAD + """\
new load.open_delta bus1=b2.1.2.3 phases=2 conn=delta kv=12.47 kw=200 kvar=60
new load.motor bus1=b1 phases=3 kv=12.47 kw=300 kvar=150 model=3
""" + BASES
    out = compare_with_engine(write(tmp_path, text), "file")
    assert out["max_dv_pu"] < TOL_PU
    out = compare_with_engine(write(tmp_path, text), "file", load_mult=7.0)  # motor below vminpu
    grid = out["grid"]
    assert np.abs(out["v_gridflex"][grid.node_index("b1.1")]) / grid.v_base_ln_v[0] < 0.95
    assert out["max_dv_pu"] < TOL_PU


@pytest.mark.parametrize(
    ("extra", "match"),
    [
        ("new load.zip bus1=b2 phases=3 kv=12.47 kw=10 model=8 zipv=[0.3 0.3 0.4 0.3 0.3 0.4 0.8]",
         r"load 'zip' uses OpenDSS load model 8.*supported: 1 \(constant PQ\)"),
        ("new isource.inj bus1=b2 amps=5 angle=0", r"(?i)does not model isource\.inj"),
        ("new generator.pvbus bus1=b2 kv=12.47 kw=100 model=3", r"generator\.pvbus uses model 3"),
    ],
)
def test_unsupported_elements_are_refused_by_name(tmp_path, extra, match):
    with pytest.raises(UserError, match=match):
        read(write(tmp_path, HEAD + extra + "\n" + BASES))


CAPS = """\
new fuse.f1 monitoredobj=line.l2 monitoredterm=1 ratedcurrent=400
new capacitor.c1 bus1=b2 phases=3 kvar=600 kv=12.47
new capcontrol.cc1 capacitor=c1 element=line.l2 terminal=1 type=voltage ptratio=60 onsetting=124 offsetting=128
capacitor.c1.states=[0]
"""


def test_capcontrol_states_settle_in_opendss_mode_and_stay_as_written_in_file_mode(tmp_path):
    path = write(tmp_path, HEAD + CAPS + BASES)
    as_written, settled = read(path, "file"), read(path, "opendss")
    assert as_written.capacitors[0].states == [0]
    assert settled.capacitors[0].states == [1]  # the voltage at b2 is below 124 V: switched on
    assert [c.name for c in settled.capcontrols] == ["cc1"] and settled.capcontrols[0].type == "voltage"
    for taps in ("file", "opendss"):
        assert compare_with_engine(path, taps)["max_dv_pu"] < TOL_PU


def test_regulated_treatment_says_capacitors_stay_frozen(tmp_path):
    from gridflex.network.regulators import TapController

    text = HEAD.replace("new line.l2", "new transformer.reg phases=1 windings=2 buses=[b1.1 b1r.1] "
                        "kvs=[7.2 7.2] kva=1000 xhl=0.01 %loadloss=0.01\n"
                        "new regcontrol.creg transformer=reg winding=2 vreg=122 band=2 ptratio=60\n"
                        "new line.l2") + CAPS + BASES
    feeder = read(write(tmp_path, text), "opendss")
    grid = build_grid(feeder)
    with pytest.warns(FeederWarning, match=r"CapControl.*cc1.*capacitor stays frozen"):
        TapController(feeder, grid.node_names, lambda taps: None, batch=1)


def test_swtcontrol_opens_its_line_in_file_mode(tmp_path):
    text = HEAD + "new swtcontrol.sc switchedobj=line.l2 switchedterm=1 action=open\n" + BASES
    path = write(tmp_path, text)
    # file mode: the control's state applied as written (the engine, controls off, is told so);
    # opendss mode: the engine's own control loop opens it
    for taps, commands in (("file", ["open line.l2 1"]), ("opendss", [])):
        with pytest.warns(FeederWarning, match=r"no path to the source.*b2\.1"):
            out = compare_with_engine(path, taps, engine_commands=commands)
        assert out["feeder"].lines[1].open_conductors == [0, 1, 2]
        assert out["max_dv_pu"] < TOL_PU


# -- settings: honoured or refused -------------------------------------------------------------------
def test_circuit_loadmult_is_honoured(tmp_path):
    path = write(tmp_path, HEAD + BASES + "set loadmult=0.5\n")
    with pytest.warns(FeederWarning, match=r"LoadMult=0\.5: status=variable loads are scaled"):
        out = compare_with_engine(path, "file")
    assert out["feeder"].load_mult == 0.5
    assert out["max_dv_pu"] < TOL_PU
    plain = compare_with_engine(write(tmp_path, HEAD + BASES, "plain.dss"), "file")
    assert np.abs(np.abs(plain["v_gridflex"]) - np.abs(out["v_gridflex"])).max() > 1e-3 * 7200


def test_fixed_and_exempt_loads_ignore_load_multipliers(tmp_path):
    text = HEAD.replace("kw=900 kvar=300 model=1", "kw=900 kvar=300 model=1 status=fixed").replace(
        "kw=600 kvar=200 model=5", "kw=600 kvar=200 model=5 status=exempt") + BASES
    path = write(tmp_path, text + "set loadmult=1.3\n")
    with pytest.warns(FeederWarning, match="LoadMult=1.3"):
        out = compare_with_engine(path, "file", load_mult=1.8)  # engine: Set LoadMult=1.3 x 1.8
    assert [ld.status for ld in out["feeder"].loads] == ["fixed", "variable", "exempt"]
    assert list(out["grid"].load_fixed) == [True, False, True]
    assert out["max_dv_pu"] < TOL_PU


def test_pf_load_mult_leaves_fixed_loads_alone(tmp_path, cli):
    text = HEAD.replace("kw=900 kvar=300 model=1", "kw=900 kvar=300 model=1 status=fixed") + BASES
    path = write(tmp_path, text)
    code, _, _ = cli("pf", str(path), "--load-mult", "1.8", "--json", str(tmp_path / "pf.json"))
    assert code == 0
    ours = json.loads((tmp_path / "pf.json").read_text())
    engine = compare_with_engine(path, "file", load_mult=1.8)
    names = engine["grid"].node_names
    for k, name in enumerate(names):
        assert ours["nodes"][name]["vm_volts"] == pytest.approx(abs(engine["v_engine"][k]), abs=1e-5 * 7200)


def test_vlowpu_is_honoured(tmp_path):
    # a weak feeder: load c's phase 1 sits at ~0.73 pu, below a VLowpu of 0.75 (default 0.5)
    text = HEAD.replace("length=2 units=km", "length=80 units=km").replace(
        "model=5", "model=5 vlowpu=0.75") + BASES
    out = compare_with_engine(write(tmp_path, text), "file")
    v_pu = np.abs(out["v_gridflex"]) / out["grid"].v_base_ln_v
    assert v_pu[out["grid"].node_index("b2.1")] < 0.75
    assert out["feeder"].loads[2].vlowpu == 0.75
    assert out["max_dv_pu"] < TOL_PU


def test_daily_mode_is_refused_with_what_is_used_instead(tmp_path):
    text = HEAD + "new loadshape.day npts=24 interval=1 mult=(file=shape.csv)\n" + BASES + (
        "batchedit load..* daily=day\nset mode=daily\n")
    (tmp_path / "shape.csv").write_text("\n".join(str(0.3 + 0.03 * h) for h in range(24)))
    with pytest.raises(UserError, match=r"solution mode to 'daily'.*snapshot.*LoadMult"):
        read(write(tmp_path, text))


@pytest.mark.parametrize(
    ("setting", "match"),
    [
        ("set loadmodel=admittance", r"LoadModel=Admittance.*constant impedance"),
        ("set cktmodel=positive", r"CktModel=Positive"),
        ("set year=3", r"Year=3.*grows every load"),
    ],
)
def test_settings_that_change_every_load_are_refused(tmp_path, setting, match):
    with pytest.raises(UserError, match=match):
        read(write(tmp_path, HEAD + BASES + setting + "\n"))


def test_max_iterations_is_raised_for_the_settling_solve_and_said(tmp_path):
    text = HEAD.replace("length=2 units=km", "length=12 units=km") + BASES + "set maxiterations=1\n"
    with pytest.warns(FeederWarning, match=r"MaxIterations=1.*raised it to 100"):
        feeder = read(write(tmp_path, text), "opendss")
    assert any("MaxIterations" in note for note in feeder.notes)


# -- script patterns that used to crash -----------------------------------------------------------------
def test_elements_after_a_solve(tmp_path):
    text = HEAD + BASES + "solve\nnew line.l3 bus1=b2 bus2=b3 r1=0.1 x1=0.2 length=1 units=km\n" \
        "new load.late bus1=b3 phases=3 kv=12.47 kw=100 kvar=30\n"
    with pytest.warns(FeederWarning, match=r"b3 had no voltage base"):
        out = compare_with_engine(write(tmp_path, text), "file")
    assert "b3.1" in out["grid"].node_names
    assert out["max_dv_pu"] < TOL_PU


def test_file_without_voltage_bases(tmp_path):
    with pytest.warns(FeederWarning, match=r"CalcVoltageBases"):
        out = compare_with_engine(write(tmp_path, HEAD), "file")
    assert out["max_dv_pu"] < TOL_PU
    assert out["grid"].v_base_ln_v[out["grid"].node_index("b2.1")] == pytest.approx(12470 / 3**0.5)


@pytest.mark.parametrize("how", ["line.l2.enabled=no", "open line.l2 1", "before calcv"])
def test_islanded_loads_are_served_at_zero(tmp_path, how, cli):
    text = HEAD + "line.l2.enabled=no\n" + BASES if how == "before calcv" else HEAD + BASES + how + "\n"
    path = write(tmp_path, text)
    with pytest.warns(FeederWarning, match=r"no path to the source.*b2\.1, b2\.2, b2\.3"):
        out = compare_with_engine(path, "file")
    grid = out["grid"]
    assert np.abs(out["v_gridflex"][[grid.node_index(f"b2.{k}") for k in (1, 2, 3)]]).max() == 0.0
    assert out["max_dv_pu"] < TOL_PU
    assert out["result"].source_power_kw == pytest.approx(out["solution"].source_power_kw, rel=1e-6)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FeederWarning)
        code, stdout, _ = cli("pf", str(path))
    assert code == 0 and "converged     True" in stdout


def test_pf_json_reports_every_winding(tmp_path, cli):
    text = HEAD + """\
new transformer.t3 phases=3 windings=3 buses=[b1 m2 m3] conns=[wye delta wye] kvs=[12.47 4.16 0.48]
~ kvas=[1000 500 500] xhl=6 xht=8 xlt=4 %rs=[0.5 0.6 0.7]
new load.m2 bus1=m2 phases=3 kv=4.16 kw=300 kvar=100 conn=delta
new load.m3 bus1=m3 phases=3 kv=0.48 kw=150 kvar=50
set voltagebases=[12.47 4.16 0.48]
calcv
"""
    path = write(tmp_path, text)
    code, _, _ = cli("pf", str(path), "--json", str(tmp_path / "pf.json"))
    assert code == 0
    t3 = json.loads((tmp_path / "pf.json").read_text())["transformers"]["t3"]
    assert sorted(t3) == ["i1_amps", "i2_amps", "i3_amps"] and all(len(v) == 4 for v in t3.values())
    case = compare_with_engine(path, "file")["case"]
    case.circuit.SetActiveElement("transformer.t3")
    engine = np.asarray(case.circuit.ActiveCktElement.Currents, dtype=float)
    engine = np.abs(engine[0::2] + 1j * engine[1::2])
    ours = np.concatenate([t3["i1_amps"], t3["i2_amps"], t3["i3_amps"]])
    np.testing.assert_allclose(ours, engine, rtol=1e-5, atol=1e-6 * engine.max())


def test_a_scenario_refuses_fixed_injections_it_would_scale(tmp_path):
    """Household profiles and feeder.load_mult drive every load of a scenario; elements the file
    fixes (generation here) would be scaled with them, so a scenario refuses them by name."""
    from gridflex.plugins.registry import load_registry
    from gridflex.runs.world import build_world
    from gridflex.scenario import load_scenario

    path = write(tmp_path, HEAD + GENERATION + BASES)
    scenario = tmp_path / "s.yaml"
    scenario.write_text(f"name: der\nfeeder: {{file: {path.name}, taps: file}}\n"
                        "devices: [{type: battery, count: 2}]\n")
    pm, registry = load_registry()
    loaded = load_scenario(scenario, [], registry)
    with pytest.raises(UserError, match=r"fixes \(3 element|generator\.g1"):
        build_world(loaded, registry, pm)
