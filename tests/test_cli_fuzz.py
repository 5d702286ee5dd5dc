"""Property-based: malformed scenarios always give exit 2, a message naming the path, no traceback.

The CLI's entry function runs in-process so hundreds of cases cost seconds; a few subprocess
cases check the real console script.
"""

from __future__ import annotations

import copy
import math
import re
import subprocess
import sys

import pytest
import torch
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

VALID = {
    "name": "fuzz",
    "seed": 0,
    "device": "cpu",
    "feeder": {"file": "ieee13", "taps": "opendss", "load_model": "constant_pq", "load_mult": 1.0},
    "solver": {"type": "ac3ph", "params": {}},
    "data": {"dt_h": 1.0, "n_validation_days": 14},
    "limits": {"v_limits_pu": [0.95, 1.05], "v_limits_train_pu": [0.955, 1.045]},
    "target": {"max_violation_rate": 0.005, "cost_share_x": 0.5},
}

# (yaml path as reported, key path in the mapping) of typed leaves
LEAVES = [
    ("seed", ("seed",)),
    ("device", ("device",)),
    ("name", ("name",)),
    ("feeder.taps", ("feeder", "taps")),
    ("feeder.load_model", ("feeder", "load_model")),
    ("feeder.load_mult", ("feeder", "load_mult")),
    ("data.dt_h", ("data", "dt_h")),
    ("data.n_validation_days", ("data", "n_validation_days")),
    ("limits.v_limits_pu", ("limits", "v_limits_pu")),
    ("target.max_violation_rate", ("target", "max_violation_rate")),
    ("target.cost_share_x", ("target", "cost_share_x")),
]
SECTIONS = [(), ("feeder",), ("solver",), ("data",), ("limits",), ("target",), ("solver", "params")]
REQUIRED = [("name", ("name",)), ("feeder", ("feeder",)), ("feeder.file", ("feeder", "file"))]

bad_values = st.one_of(
    st.just(float("nan")),
    st.just(float("inf")),
    st.just(-float("inf")),
    st.sampled_from([10**30, -(10**30), 1e308, -1e308]),
    st.sampled_from([[], {}, [1, 2, 3], {"x": 1}, "not-a-value", True]),
    st.text(min_size=0, max_size=12).filter(
        lambda s: s not in ("cpu", "cuda", "auto", "file", "opendss", "constant_pq")
        and not re.fullmatch(r"cuda:[0-9]+", s)),
)


def set_in(data, keys, value):
    target = data
    for key in keys[:-1]:
        target = target[key]
    target[keys[-1]] = value


def is_acceptable(path, value) -> bool:
    """A few generated values are valid for their field; those cases are skipped."""
    if isinstance(value, bool) or isinstance(value, (list, dict)):
        return False
    if path == "name" and isinstance(value, str):
        return bool(value) and all(c.isalnum() or c in "_.-" for c in value)
    return False


@st.composite
def malformed(draw):
    """(scenario text, a YAML path the error message must name)."""
    data = copy.deepcopy(VALID)
    mutation = draw(st.sampled_from(["wrong_value", "unknown_key", "missing", "bad_path", "broken_yaml"]))
    if mutation == "wrong_value":
        path, keys = draw(st.sampled_from(LEAVES))
        value = draw(bad_values)
        if is_acceptable(path, value) or (isinstance(value, float) and math.isfinite(value) and path in {
            "feeder.load_mult"} and 0 < value <= 10):
            value = float("nan")
        set_in(data, keys, value)
        return yaml.safe_dump(data), path
    if mutation == "unknown_key":
        section = draw(st.sampled_from(SECTIONS))
        key = draw(st.from_regex(r"[a-z][a-z_]{2,12}", fullmatch=True))
        target = data
        for part in section:
            target = target[part]
        if key in target or (section == ("solver", "params")):
            key = key + "_zz"
        target[key] = draw(st.integers(0, 5))
        expected = ".".join(section + (key,))
        return yaml.safe_dump(data), expected
    if mutation == "missing":
        path, keys = draw(st.sampled_from(REQUIRED))
        target = data
        for part in keys[:-1]:
            target = target[part]
        del target[keys[-1]]
        return yaml.safe_dump(data), path
    if mutation == "bad_path":
        name = draw(st.from_regex(r"[a-z0-9_/]{1,20}", fullmatch=True))
        data["feeder"]["file"] = f"missing_dir/{name}.dss"
        return yaml.safe_dump(data), "feeder.file"
    text = yaml.safe_dump(data)
    cut = draw(st.integers(5, len(text) - 5))
    broken = text[:cut] + draw(st.sampled_from(["\n  - [", ": : :", "\t{", "\n{a: [b\n", "'"])) + text[cut:]
    try:
        parsed = yaml.safe_load(broken)
    except yaml.YAMLError:
        return broken, "line"
    return "{" + text, "line"  # the insertion happened to be valid YAML; make it invalid


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(case=malformed())
def test_malformed_scenarios_exit_2_with_path(case, tmp_path_factory, cli):
    text, expected = case
    path = tmp_path_factory.mktemp("fuzz") / "scenario.yaml"
    path.write_text(text)
    code, out, err = cli("validate", str(path))
    assert code == 2, (text, out, err)
    assert "Traceback" not in out + err
    assert str(path) in err
    assert expected in err, (expected, err)


def test_console_script_subprocess_cases(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nfeeder: {file: ieee13, taps: maybe}\n")
    cases = [
        (["validate", str(bad)], 2, "feeder.taps"),
        (["validate", str(tmp_path / "absent.yaml")], 2, "not found"),
        (["frobnicate"], 2, "invalid choice"),
        (["--help"], 0, "usage"),
    ]
    for argv, code, text in cases:
        proc = subprocess.run(
            [sys.executable, "-m", "gridflex.cli.main", *argv], capture_output=True, text=True, timeout=120
        )
        assert proc.returncode == code, (argv, proc.stdout, proc.stderr)
        assert text in proc.stdout + proc.stderr
        assert "Traceback" not in proc.stderr


# ------------------------------------------------------------------ torch devices (run, pf, compare, targets)


def _device_argv(command: str, device: str, out) -> list[str]:
    from gridflex.shipped import default_scenario_path

    scenario = str(default_scenario_path())
    return {"run": ["run", scenario, "--out", str(out)],
            "pf": ["pf", "ieee13"],
            "compare": ["compare", scenario, "--learners", "gradmap", "--seeds", "0", "--out", str(out)],
            "targets": ["targets", scenario]}[command] + ["--device", device]


def _one_paragraph_refusal(result) -> str:
    code, out, err = result
    assert code == 2, out + err
    assert "Traceback" not in out + err
    assert len(err.strip().splitlines()) == 1, err  # one paragraph
    return err


@pytest.mark.parametrize("command", ["run", "pf", "compare", "targets"])
@pytest.mark.parametrize("device", ["banana", "CPU", "cuda:", "cuda:x", "cuda:-1", "gpu:0", ""])
def test_unknown_device_is_a_user_error(cli, tmp_path, command, device):
    out = tmp_path / "out"
    err = _one_paragraph_refusal(cli(*_device_argv(command, device, out)))
    assert f"--device {device!r} is not a device gridflex knows" in err
    for allowed in ("cpu", "cuda", "cuda:N", "auto"):
        assert allowed in err
    assert not out.exists()  # refused before anything was written


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
@pytest.mark.parametrize("command", ["run", "pf", "compare", "targets"])
@pytest.mark.parametrize("device", ["cuda", "cuda:0", "cuda:7"])
def test_cuda_on_a_machine_without_cuda_is_a_user_error(cli, tmp_path, command, device):
    out = tmp_path / "out"
    err = _one_paragraph_refusal(cli(*_device_argv(command, device, out)))
    assert f"--device {device!r} requested but CUDA is not available" in err and "cpu or auto" in err
    assert not out.exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
@pytest.mark.parametrize("command", ["compare", "targets"])
def test_scenario_device_cuda_without_cuda_is_refused_before_work(cli, tmp_path, command):
    out = tmp_path / "out"
    argv = _device_argv(command, "cpu", out)[:-2] + ["-o", "device=cuda:0"]
    err = _one_paragraph_refusal(cli(*argv))
    assert "the scenario's device 'cuda:0' requested but CUDA is not available" in err
    assert not out.exists()


def test_scenario_device_names(cli):
    from gridflex.shipped import default_scenario_path

    scenario = str(default_scenario_path())
    for device in ("cpu", "cuda", "cuda:0", "cuda:12", "auto"):  # syntax only: validate needs no GPU
        code, out, err = cli("validate", scenario, "-o", f"device={device}")
        assert code == 0, err
    code, out, err = cli("validate", scenario, "-o", "device=cuda:one")
    assert code == 2 and "device: 'cuda:one' is not a device gridflex knows" in err
    assert "cpu, cuda, cuda:N" in err and "auto" in err
