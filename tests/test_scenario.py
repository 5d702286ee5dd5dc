"""Scenario loading: structure, component params, errors with YAML paths, overrides, paths."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
import yaml

from gridflex.scenario import (
    ScenarioError,
    apply_overrides,
    load_scenario,
    shipped_scenarios,
    yaml_path,
)

VALID = {
    "name": "toy",
    "feeder": {"file": "ieee13", "taps": "opendss"},
    "devices": [{"type": "toy_store", "count": 4, "params": {"p_max_kw": 3.0}}],
    "learner": {"type": "toy_learner", "params": {"eta": 0.05}},
}


def write(tmp_path: Path, data, name: str = "s.yaml") -> Path:
    path = tmp_path / name
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data))
    return path


@pytest.mark.parametrize("path", shipped_scenarios(), ids=lambda p: p.name)
def test_every_shipped_scenario_loads(path, toy_registry):
    loaded = load_scenario(path, registry=toy_registry)
    assert loaded.feeder_path().is_file()


def test_default_scenario_is_shipped():
    loaded = load_scenario(None)
    assert loaded.source.name == "ieee13_small.yaml"
    assert loaded.source.parent.name == "scenarios"


def test_valid_toy_scenario_validates_component_params(tmp_path, toy_registry):
    loaded = load_scenario(write(tmp_path, VALID), registry=toy_registry)
    assert loaded.component_config("devices[0]").p_max_kw == 3.0
    assert loaded.component_config("learner").epochs == 3  # default filled in


def test_misspelled_param_names_path_and_suggestion(tmp_path, toy_registry):
    data = {**VALID, "devices": [{"type": "toy_store", "count": 1, "params": {"p_maxkw": 3}}]}
    with pytest.raises(ScenarioError) as info:
        load_scenario(write(tmp_path, data), registry=toy_registry)
    text = str(info.value)
    assert "devices[0].params.p_maxkw" in text
    assert "did you mean 'p_max_kw'" in text
    assert str(tmp_path / "s.yaml") in text


def test_misspelled_component_type_suggests(tmp_path, toy_registry):
    data = {**VALID, "learner": {"type": "toy_lerner"}}
    with pytest.raises(ScenarioError) as info:
        load_scenario(write(tmp_path, data), registry=toy_registry)
    assert "learner.type: unknown learner 'toy_lerner' (did you mean 'toy_learner'?)" in str(info.value)


def test_all_problems_in_one_report(tmp_path, toy_registry):
    data = {
        "name": "bad name with spaces",
        "feeder": {"file": "no/such.dss", "tapz": "file"},
        "devices": [{"type": "toy_store", "count": 1, "params": {"p_max_kw": -1}}],
        "learner": {"type": "toy_learner", "params": {"eta": "fast"}},
        "seed": 1.5,
    }
    with pytest.raises(ScenarioError) as info:
        load_scenario(write(tmp_path, data), registry=toy_registry)
    paths = {p.path for p in info.value.problems}
    assert {
        "name",
        "feeder.file",
        "feeder.tapz",
        "devices[0].params.p_max_kw",
        "learner.params.eta",
        "seed",
    } <= paths


def test_training_margin_must_lie_inside_limits(tmp_path):
    data = {**VALID, "limits": {"v_limits_pu": [0.95, 1.05], "v_limits_train_pu": [0.94, 1.04]}}
    data.pop("devices"), data.pop("learner")
    with pytest.raises(ScenarioError, match="v_limits_train_pu must lie inside"):
        load_scenario(write(tmp_path, data))


def test_broken_yaml_reports_line(tmp_path):
    path = write(tmp_path, "name: x\nfeeder: {file: ieee13\n  taps: [\n")
    with pytest.raises(ScenarioError, match=r"not valid YAML at line \d+"):
        load_scenario(path)


@pytest.mark.parametrize("text", ["", "- a\n- b\n", "42\n"])
def test_non_mapping_top_level(tmp_path, text):
    with pytest.raises(ScenarioError, match="must be a mapping"):
        load_scenario(write(tmp_path, text))


def test_overrides_dotted_and_indexed(tmp_path, toy_registry):
    path = write(tmp_path, VALID)
    loaded = load_scenario(
        path,
        ["learner.params.eta=0.5", "devices[0].count=7", "devices.0.params.e_max_kwh=2", "seed=3"],
        toy_registry,
    )
    assert loaded.component_config("learner").eta == 0.5
    assert loaded.config.devices[0].count == 7
    assert loaded.component_config("devices[0]").e_max_kwh == 2
    assert loaded.config.seed == 3


def test_override_that_breaks_validation_is_reported(tmp_path, toy_registry):
    with pytest.raises(ScenarioError, match=r"learner\.params\.eta"):
        load_scenario(write(tmp_path, VALID), ["learner.params.eta=-1"], toy_registry)


def test_override_bad_path():
    with pytest.raises(ScenarioError, match="override path does not exist"):
        apply_overrides({"devices": []}, ["devices[3].count=1"], "s.yaml")


def test_relative_feeder_path_resolves_against_scenario_file(tmp_path):
    feeder_dir = tmp_path / "nested" / "feeders"
    feeder_dir.mkdir(parents=True)
    (feeder_dir / "f.dss").write_text("clear\n")
    scen_dir = tmp_path / "nested" / "scen"
    scen_dir.mkdir()
    path = write(scen_dir, {"name": "rel", "feeder": {"file": "../feeders/f.dss"}})
    loaded = load_scenario(path)
    assert loaded.feeder_path() == (feeder_dir / "f.dss").resolve()


def test_scenario_hash_changes_with_content(tmp_path):
    a = load_scenario(write(tmp_path, {"name": "a", "feeder": {"file": "ieee13"}}, "a.yaml"))
    b = load_scenario(write(tmp_path, {"name": "a", "feeder": {"file": "ieee13"}, "seed": 1}, "b.yaml"))
    assert a.sha256() != b.sha256()


def test_yaml_path_format():
    assert yaml_path(("devices", 2, "params", "p_max_kw")) == "devices[2].params.p_max_kw"
    assert yaml_path(()) == ""


def test_cli_validate_misspelled_key_exit_2_no_traceback(tmp_path, cli):
    path = write(tmp_path, textwrap.dedent("""
        name: t
        feeder: {file: ieee13, taps: opendss}
        solver: {type: ac3ph, params: {}}
        limts: {v_limits_pu: [0.95, 1.05]}
    """))
    code, out, err = cli("validate", str(path))
    assert code == 2
    assert str(path) in err
    assert "limts: unknown key 'limts' (did you mean 'limits'?)" in err
    assert "Traceback" not in err + out


# ------------------------------------------------------------------ validation rough edges (#18)


def test_duplicate_key_is_rejected_naming_key_and_line(tmp_path, cli):
    path = write(tmp_path, "name: x\nfeeder: {file: ieee13}\nseed: 1\nseed: 2\n")
    with pytest.raises(ScenarioError, match=r"line 4.*duplicate key 'seed' \(first at line 3\)"):
        load_scenario(path)
    code, out, err = cli("validate", str(path))
    assert code == 2 and "duplicate key 'seed'" in err and "line 4" in err
    assert "Traceback" not in err + out


def test_duplicate_key_in_a_nested_mapping_is_rejected(tmp_path):
    path = write(tmp_path, "name: x\nfeeder: {file: ieee13}\nlimits:\n  line_limits: true\n  line_limits: false\n")
    with pytest.raises(ScenarioError, match=r"line 5.*duplicate key 'line_limits'"):
        load_scenario(path)


def test_yaml_anchors_still_load(tmp_path):
    text = "name: x\nfeeder: {file: ieee13}\nlimits: &l {line_limits: false}\ntarget: {max_violation_rate: 0.02}\n"
    assert load_scenario(write(tmp_path, text)).config.limits.line_limits is False


def test_messages_use_an_before_vowels(tmp_path):
    with pytest.raises(ScenarioError) as info:
        load_scenario(write(tmp_path, "42\n"))
    assert "got an int" in str(info.value) and "got a int" not in str(info.value)


def test_range_field_given_a_scalar_says_a_range_is_expected(tmp_path):
    from gridflex.plugins.registry import load_registry

    data = {"name": "b", "feeder": {"file": "ieee13"},
            "devices": [{"type": "battery", "count": 2, "params": {"capacity_kwh": 10}}]}
    with pytest.raises(ScenarioError) as info:
        load_scenario(write(tmp_path, data), [], load_registry()[1])
    text = str(info.value)
    assert "devices[0].params.capacity_kwh: expected a [lo, hi] range" in text and "got an int, 10" in text
    with pytest.raises(ScenarioError, match=r"pv_kwp: expected a \[lo, hi\] range .*got \[1, 2, 3\]"):
        load_scenario(write(tmp_path, {"name": "b", "feeder": {"file": "ieee13"},
                                       "population": {"pv_kwp": [1, 2, 3]}}))


def test_cross_field_check_reported_with_field_errors(tmp_path):
    data = {"name": "x", "feeder": {"file": "ieee13"}, "data": {"dt_h": 3},
            "limits": {"v_limits_pu": [0.95, 1.05], "v_limits_train_pu": [0.94, 1.04]}}
    with pytest.raises(ScenarioError) as info:
        load_scenario(write(tmp_path, data))
    text = str(info.value)
    assert "data.dt_h" in text and "v_limits_train_pu must lie inside" in text


def test_pytest_filters_only_third_party_deprecations():
    import tomllib

    from conftest import REPO_ROOT

    config = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["tool"]["pytest"]["ini_options"]
    filters = config.get("filterwarnings", [])
    assert filters and all(f.startswith(("ignore::DeprecationWarning:", "ignore::PendingDeprecationWarning:"))
                           for f in filters)
    assert not any("gridflex" in f or "plugins" in f for f in filters), "our own warnings stay visible"
