"""The target travels with the scenario (issue #18 item 4): a copied shipped scenario finds the
shipped sidecar by key; a scenario with no matching sidecar gets a violation-only target and one
line saying why and how to compute the cost target."""

from __future__ import annotations

import shutil

import pytest

from gridflex.plugins.registry import load_registry
from gridflex.scenario import default_scenario_path, load_scenario
from gridflex.learning.targets import find_sidecar, read_target, targets_key, violation_only_line


@pytest.fixture(scope="module")
def registry():
    return load_registry()[1]


def test_copied_shipped_scenario_finds_its_target(tmp_path, registry):
    shipped = load_scenario(default_scenario_path(), [], registry)
    expected = read_target(shipped)
    assert expected.max_cost_per_day is not None, "the shipped default has a cost target"
    copy = tmp_path / "my_copy.yaml"  # another folder and another file name: the key decides
    shutil.copy(default_scenario_path(), copy)
    loaded = load_scenario(copy, [], registry)
    assert targets_key(loaded) == targets_key(shipped)
    path, _, why = find_sidecar(loaded)
    assert path is not None and why == ""
    target = read_target(loaded)
    assert target.max_cost_per_day == pytest.approx(expected.max_cost_per_day)
    assert target.c_ref == expected.c_ref and target.note == ""
    assert violation_only_line(target, loaded) is None


def test_learner_override_keeps_the_target(registry):
    loaded = load_scenario(default_scenario_path(), ["learner.params.eta=0.05"], registry)
    assert read_target(loaded).max_cost_per_day is not None


def test_override_outside_learner_says_violation_only_in_one_line(registry):
    loaded = load_scenario(default_scenario_path(), ["population.pv_share=0.123"], registry)
    target = read_target(loaded)
    assert target.max_cost_per_day is None and target.c_ref is None
    line = violation_only_line(target, loaded)
    assert line is not None and "\n" not in line
    assert "violation-only" in line
    assert "key mismatch" in line  # why
    assert "gridflex targets" in line  # how


def test_scenario_without_any_sidecar(tmp_path, registry):
    copy = tmp_path / "other.yaml"
    text = default_scenario_path().read_text()
    shutil.copy(default_scenario_path(), copy)
    loaded = load_scenario(copy, ["population.pv_share=0.123"], registry)
    line = violation_only_line(read_target(loaded), loaded)
    assert line is not None and "no sidecar ieee13_small.targets.json beside" in line and str(copy) in line
    assert text == default_scenario_path().read_text()
