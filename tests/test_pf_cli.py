"""`gridflex pf`: the JSON contract, agreement with OpenDSS, no engine needed, exit codes."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from opendss_oracle import feeder_path


@pytest.fixture(scope="module")
def pf123(tmp_path_factory):
    from gridflex.cli.main import main

    out = tmp_path_factory.mktemp("pf") / "ieee123.json"
    assert main(["pf", "ieee123", "--json", str(out)]) == 0
    return json.loads(out.read_text())


def test_json_contract(pf123):
    assert pf123["converged"] is True and pf123["iterations"] >= 1
    for key in ("source_power_kw", "source_power_kvar", "losses_kw"):
        assert isinstance(pf123[key], float)
    assert len(pf123["nodes"]) == 278
    assert all(name == name.lower() for name in pf123["nodes"])
    assert set(pf123["nodes"]["150r.1"]) == {"vm_volts", "vm_pu", "va_deg"}
    assert len(pf123["lines"]) == 126  # 118 lines + 8 switches
    l115 = pf123["lines"]["l115"]
    assert len(l115["i1_amps"]) == len(l115["i2_amps"]) == 3
    assert pf123["source_power_kw"] > 0  # drawn from the source


def test_matches_opendss_with_its_vminpu_rule(pf123):
    """File taps on IEEE 123 are neutral: 20 loads fall below 0.95 pu and become constant Z."""
    dss = pytest.importorskip("dss")
    del dss
    from opendss_oracle import solve_engine

    engine = solve_engine(feeder_path("ieee123"))
    from opendss_oracle import EngineCase

    names = EngineCase(feeder_path("ieee123")).node_names
    ours = np.array([pf123["nodes"][name]["vm_volts"] for name in names])
    base = np.array([pf123["nodes"][name]["vm_volts"] / pf123["nodes"][name]["vm_pu"] for name in names])
    err_pu = np.abs(ours - np.abs(engine.v_volts)) / base
    assert err_pu.max() < 1e-6
    assert abs(pf123["source_power_kw"] - engine.source_power_kw) / engine.source_power_kw < 1e-5
    assert pf123["source_power_kw"] == pytest.approx(3482.74, abs=0.01)  # feeders README, neutral taps


def test_runs_from_the_cache_with_the_engine_blocked(tmp_path):
    out = tmp_path / "pf.json"
    code = (
        "import sys; sys.modules['dss'] = None; sys.modules['opendssdirect'] = None\n"
        "from gridflex.cli.main import main\n"
        f"rc = main(['pf', 'ieee13', '--taps', 'opendss', '--json', {str(out)!r}])\n"
        "assert 'dss' not in [m for m in sys.modules if sys.modules[m] is not None]\n"
        "sys.exit(rc)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(out.read_text())["converged"] is True


def test_not_converged_exits_3_without_voltages(tmp_path, cli):
    out = tmp_path / "pf.json"
    code, _, err = cli("pf", "ieee123", "--load-mult", "3", "--max-iter", "2", "--json", str(out))
    assert code == 3
    assert "did not converge" in err and "Traceback" not in err
    result = json.loads(out.read_text())
    assert result == {"converged": False, "iterations": 2}


@pytest.mark.parametrize("argv", [["pf", "ieee123", "--load-mult", "nan"], ["pf", "no_such_feeder.dss"]])
def test_bad_input_exits_2(cli, argv):
    code, _, err = cli(*argv)
    assert code == 2 and "Traceback" not in err
