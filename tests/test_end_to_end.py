"""Scenario options and commands end to end, through the CLI (issue #14: tests that check less than
they claim): ``--resume``, ``environment.observe_voltage``, ``dtype: float32``, the ``linear3ph``
training solver, ``data.dt_h: 0.5``, ``gridflex compare`` and ``gridflex schema``.

Every run is tiny (IEEE 13, 4 batteries, one validation and one test day, a few iterations) and
skips the reference controllers, so each test takes a few seconds on one core.
"""

from __future__ import annotations

import csv
import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from conftest import world_from_text, tiny_gradmap_scenario

TINY = tiny_gradmap_scenario("tiny13e2e", budget_iterations=2)
COMMON_FEATURES = 6  # gridflex.learning.environment.COMMON_FEATURES; |V| comes right after them


def scenario_file(directory: Path, text: str = TINY) -> Path:
    path = Path(directory) / "tiny13e2e.yaml"
    path.write_text(text)
    return path


def run_ok(cli, *argv: str) -> tuple[str, str]:
    code, out, err = cli(*argv)
    assert code == 0, out + err
    assert "Traceback" not in out + err
    return out, err


def history(folder: Path) -> list[dict[str, str]]:
    with (folder / "history.csv").open() as fh:
        return list(csv.DictReader(fh))


def numbers(tree) -> list[float]:
    """Every number in a nested metrics document."""
    if isinstance(tree, bool):
        return []
    if isinstance(tree, (int, float)):
        return [float(tree)]
    if isinstance(tree, dict):
        return [x for v in tree.values() for x in numbers(v)]
    if isinstance(tree, (list, tuple)):
        return [x for v in tree for x in numbers(v)]
    return []


# ------------------------------------------------------------------ --resume


def test_resume_continues_counters_history_and_rewrites_metrics(cli, tmp_path):
    scenario = scenario_file(tmp_path)
    out = tmp_path / "run"
    run_ok(cli, "run", str(scenario), "--out", str(out), "--no-references")
    first_rows = history(out)
    first_metrics = json.loads((out / "metrics.json").read_text())
    assert [int(r["iteration"]) for r in first_rows] == [0, 1, 2]
    assert first_metrics["env_gradient_evaluations"] == 2

    _, err = run_ok(cli, "run", str(scenario), "--out", str(out), "--resume", "--no-references",
                    "-o", "learner.params.budget_iterations=4")
    assert "resumed from iteration 2 (" in err
    rows = history(out)
    assert [int(r["iteration"]) for r in rows] == [0, 1, 2, 3, 4]
    assert rows[:3] == first_rows  # the checkpoint's history is kept, not recomputed
    for column in ("env_gradient_evaluations", "power_flow_solves", "policy_updates"):
        values = [int(r[column]) for r in rows]
        assert values == sorted(values) and values[-1] > values[2], (column, values)
    assert [int(r["env_gradient_evaluations"]) for r in rows] == [0, 1, 2, 3, 4]
    walls = [float(r["wall_s"]) for r in rows]
    assert walls == sorted(walls) and walls[3] > walls[2]  # the training clock continues

    state = torch.load(out / "checkpoint.pt", weights_only=True)
    assert state["iteration"] == 4 and state["env_gradient_evaluations"] == 4
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["env_gradient_evaluations"] == 4
    assert metrics["power_flow_solves"] > first_metrics["power_flow_solves"]
    assert metrics["policy_updates"] > first_metrics["policy_updates"]
    assert metrics["train_seconds"] > first_metrics["train_seconds"]
    assert all(math.isfinite(x) for x in numbers(metrics["test"]))


# ------------------------------------------------------------------ environment.observe_voltage


def test_observe_voltage_trains_and_observes_the_agents_previous_voltage(cli, tmp_path):
    text = TINY.replace("environment: {regulated_evaluation: false}",
                        "environment: {regulated_evaluation: false, observe_voltage: true}")
    out = tmp_path / "run"
    run_ok(cli, "run", str(scenario_file(tmp_path, text)), "--out", str(out), "--no-references")
    rows = history(out)
    assert int(rows[-1]["env_gradient_evaluations"]) == 2 and rows[-1]["lagrangian"] != ""
    policy = torch.load(out / "policy.pt", weights_only=True)["learner"]["policies"]
    normaliser_mean = policy["0.normaliser.mean"]
    # 6 common features + own |V| + the battery's 2 (8 without observe_voltage)
    assert tuple(normaliser_mean.shape) == (4, COMMON_FEATURES + 1 + 2)

    # the |V| feature is (|V_prev| - 1) / 0.05 at the agent's own node, 1.0 pu at the first step
    *_, world = world_from_text(tmp_path, text, name="observe")
    env = world.env
    assert env.obs_dim(0) == COMMON_FEATURES + 1 + env.fleets[0].model.obs_dim
    exo = env.exogenous(world.data.split("train").get(np.array([5])))

    def half(f, t, obs, state, inputs):
        return torch.full((obs.shape[0], obs.shape[1], env.fleets[f].model.action_dim), 0.5,
                          dtype=obs.dtype, device=obs.device)

    with torch.no_grad():
        rollout = env.rollout(exo, half)
    feature = rollout.fleets[0].observations[0, :, :, COMMON_FEATURES]  # [T, N]
    nodes = [int(n[0]) for n in env.fleets[0].placement.nodes]  # single-phase batteries
    vm = rollout.flow.vm_pu[0][:, nodes]  # [T, N]
    assert torch.equal(feature[0], torch.zeros_like(feature[0]))
    expected = (vm[:-1] - 1.0) / 0.05
    assert torch.allclose(feature[1:], expected, atol=1e-12)
    assert float(expected.abs().max()) > 0.1  # the voltages do move: a non-trivial comparison


# ------------------------------------------------------------------ dtype: float32


def test_float32_end_to_end(cli, tmp_path):
    # ac3ph's own defaults: its tolerances follow the scenario's dtype (1e-6 pu in float32, whose
    # eps is 1.2e-7; a float64 tolerance of 1e-8 left test-day samples unconverged)
    text = TINY.replace("solver: {type: ac3ph, params: {tol_pu: 1.0e-10}}", "solver: {type: ac3ph}")
    assert text != TINY
    out = tmp_path / "run"
    run_ok(cli, "run", str(scenario_file(tmp_path, text)), "-o", "dtype=float32", "--out", str(out),
           "--no-references")
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["dtype"] == "float32"
    assert metrics["test"]["pf_nonconverged"] == 0
    assert all(math.isfinite(x) for x in numbers(metrics["test"]))
    assert all(math.isfinite(float(r["val_cost_per_day"])) for r in history(out))
    schedules = np.load(out / "schedules.npz")
    for name in ("load_scale", "p_kw", "q_kvar", "vm_pu", "source_power_kw", "price_per_kwh"):
        assert schedules[name].dtype == np.float32, name  # the physics ran in float32
        assert np.isfinite(schedules[name]).all(), name
    assert schedules["v_base_v"].dtype == np.float64  # the feeder's constants stay float64


# ------------------------------------------------------------------ solver: linear3ph


def test_linear3ph_training_solver_end_to_end(cli, tmp_path):
    pytest.importorskip("cvxpy")  # the convex extra
    text = TINY.replace("solver: {type: ac3ph, params: {tol_pu: 1.0e-10}}", "solver: {type: linear3ph}")
    out = tmp_path / "run"
    stdout, _ = run_ok(cli, "run", str(scenario_file(tmp_path, text)), "--out", str(out), "--no-references")
    assert "solver     linear3ph" in stdout and "judged by ac3ph" in stdout
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["solver"] == "linear3ph" and metrics["evaluation_solver"] == "ac3ph"
    assert metrics["env_gradient_evaluations"] == 2 and metrics["policy_updates"] > 0
    rows = history(out)
    assert [int(r["iteration"]) for r in rows] == [0, 1, 2]
    assert all(math.isfinite(float(r["lagrangian"])) for r in rows[1:])
    assert metrics["test"]["pf_nonconverged"] == 0
    assert all(math.isfinite(x) for x in numbers(metrics["test"]))


# ------------------------------------------------------------------ data.dt_h: 0.5


def test_half_hour_steps_through_training(cli, tmp_path):
    out = tmp_path / "run"
    run_ok(cli, "run", str(scenario_file(tmp_path)), "-o", "data.dt_h=0.5", "--out", str(out),
           "--no-references")
    rows = history(out)
    assert [int(r["iteration"]) for r in rows] == [0, 1, 2] and rows[-1]["lagrangian"] != ""
    schedules = np.load(out / "schedules.npz")
    assert float(schedules["dt_h"]) == 0.5
    for name in ("load_scale", "p_kw", "q_kvar", "vm_pu", "source_power_kw", "price_per_kwh"):
        assert schedules[name].shape[:2] == (1, 48), name  # one test day of 48 half-hour steps
    # the energy cost is paid per half hour: sum(price x source import) x 0.5 h
    metrics = json.loads((out / "metrics.json").read_text())
    energy = float((schedules["price_per_kwh"] * schedules["source_power_kw"]).sum() * 0.5)
    assert metrics["test"]["cost_breakdown"]["energy"] == pytest.approx(energy, rel=1e-9)
    state = torch.load(out / "checkpoint.pt", weights_only=True)
    assert state["learner"]["duals"]["voltage"].shape[0] == 24  # hourly duals, whatever the step


# ------------------------------------------------------------------ gridflex compare


def test_compare_two_learners_two_seeds(cli, tmp_path):
    scenario = scenario_file(tmp_path)
    out = tmp_path / "cmp"
    fast = ["-o", "learner.params.budget_iterations=1", "-o", "learner.params.days_per_batch=2",
            "-o", "learner.params.hidden_sizes=[8]", "-o", "learner.params.budget_seconds=null",
            "-o", "learner.params.validation_interval_iterations=1"]
    stdout, _ = run_ok(cli, "compare", str(scenario), "--learners", "gradmap,ssl_penalty",
                       "--seeds", "0-1", "--out", str(out), *fast)
    assert "gradmap" in stdout and "ssl_penalty" in stdout and f"wrote {out}/comparison.json" in stdout
    doc = json.loads((out / "comparison.json").read_text())
    assert doc["seeds"] == [0, 1] and doc["scenario"] == "tiny13e2e"
    assert set(doc["learners"]) == {"gradmap", "ssl_penalty"}
    for name, entry in doc["learners"].items():
        assert len(entry["runs"]) == len(entry["time_to_target_s"]) == 2, name
        assert [run["learner"] for run in entry["runs"]] == [name, name]
        assert "cost_per_day" in entry["median"] and len(entry["iqr"]["cost_per_day"]) == 2
        policies = []
        for seed in (0, 1):
            run_dir = out / name / f"seed{seed}"
            assert [int(r["iteration"]) for r in history(run_dir)] == [0, 1]
            policies.append(torch.load(run_dir / "policy.pt", weights_only=True)["learner"]["policies"])
        # the seed seeds the learner: the two seeds' policies differ
        assert any(not torch.equal(policies[0][k], policies[1][k]) for k in policies[0])


def test_compare_jobs_match_one_process_and_reuse(cli, tmp_path):
    """--jobs 2 (spawned workers, one core each) gives the runs of --jobs 1, in the same order;
    --reuse takes a finished non-training run and refuses a learner that trains."""
    scenario = scenario_file(tmp_path)
    fast = ["-o", "learner.params.budget_iterations=2", "-o", "learner.params.days_per_batch=2",
            "-o", "learner.params.hidden_sizes=[8]", "-o", "learner.params.budget_seconds=null",
            "-o", "learner.params.validation_interval_iterations=1"]
    docs = {}
    for jobs in (1, 2):
        out = tmp_path / f"jobs{jobs}"
        run_ok(cli, "compare", str(scenario), "--learners", "ssl_penalty,no_control", "--seeds", "0-1",
               "--jobs", str(jobs), "--out", str(out), *fast)
        docs[jobs] = json.loads((out / "comparison.json").read_text())
    assert docs[2]["jobs"] == 2
    for name in ("ssl_penalty", "no_control"):
        one, two = docs[1]["learners"][name]["runs"], docs[2]["learners"][name]["runs"]
        assert [r["seeds"] for r in one] == [r["seeds"] for r in two]
        for a, b in zip(one, two):
            for key in ("cost_per_day", "voltage_violation_rate", "line_overload_rate"):
                assert b["test"][key] == pytest.approx(a["test"][key], rel=1e-9, abs=1e-12), (name, key)
            assert (a["power_flow_solves"], a["env_gradient_evaluations"]) == (
                b["power_flow_solves"], b["env_gradient_evaluations"])
    for seed in (0, 1):
        one = torch.load(tmp_path / "jobs1" / "ssl_penalty" / f"seed{seed}" / "policy.pt", weights_only=True)
        two = torch.load(tmp_path / "jobs2" / "ssl_penalty" / f"seed{seed}" / "policy.pt", weights_only=True)
        for key, value in one["learner"]["policies"].items():
            assert torch.allclose(value, two["learner"]["policies"][key], rtol=1e-9, atol=1e-12), key
    # reuse: no_control's finished run stands in for running it again
    finished = tmp_path / "jobs1" / "no_control" / "seed0" / "metrics.json"
    out = tmp_path / "reused"
    run_ok(cli, "compare", str(scenario), "--learners", "no_control", "--seeds", "0", "--out", str(out),
           "--reuse", f"no_control={finished}")
    entry = json.loads((out / "comparison.json").read_text())["learners"]["no_control"]
    assert entry["runs"][0]["reused_from"] == str(finished)
    assert entry["runs"][0]["test"] == docs[1]["learners"]["no_control"]["runs"][0]["test"]
    assert not (out / "no_control").exists()  # nothing was run
    trained = tmp_path / "jobs1" / "ssl_penalty" / "seed0" / "metrics.json"
    code, _, err = cli("compare", str(scenario), "--learners", "ssl_penalty", "--out", str(tmp_path / "bad"),
                       "--reuse", f"ssl_penalty={trained}")
    assert code == 2 and "only controllers that do not train can be reused" in err and "Traceback" not in err


# ------------------------------------------------------------------ gridflex schema

# JSON Schema (draft 2020-12) keywords a pydantic schema may use; anything else is not JSON Schema
SCHEMA_KEYWORDS = {"$defs", "$ref", "$schema", "additionalProperties", "allOf", "anyOf", "const",
                   "default", "deprecated", "description", "enum", "examples", "exclusiveMaximum",
                   "exclusiveMinimum", "format", "items", "maxItems", "maxLength", "maximum", "minItems",
                   "minLength", "minimum", "multipleOf", "not", "oneOf", "pattern", "prefixItems",
                   "properties", "required", "title", "type", "uniqueItems"}
JSON_TYPES = {"object": dict, "array": list, "string": str, "boolean": bool, "null": type(None)}


def _walk_schemas(node, seen: list) -> None:
    """Every sub-schema of ``node`` (the values of properties/$defs, items, allOf/anyOf ...)."""
    if not isinstance(node, dict):
        return
    seen.append(node)
    for key in ("properties", "$defs"):
        for sub in node.get(key, {}).values():
            _walk_schemas(sub, seen)
    for key in ("allOf", "anyOf", "oneOf", "prefixItems"):
        for sub in node.get(key, []):
            _walk_schemas(sub, seen)
    for key in ("items", "additionalProperties", "not"):
        _walk_schemas(node.get(key), seen)


def _validate(value, node: dict, root: dict) -> bool:
    """A small JSON Schema check covering the keywords the scenario schema uses."""
    if "$ref" in node:
        target = root
        for part in node["$ref"].removeprefix("#/").split("/"):
            target = target[part]
        if not _validate(value, target, root):
            return False
    kind = node.get("type")
    if kind is not None:
        if kind == "integer":
            ok = isinstance(value, int) and not isinstance(value, bool)
        elif kind == "number":
            ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        else:
            ok = isinstance(value, JSON_TYPES[kind])
        if not ok:
            return False
    if "const" in node and value != node["const"]:
        return False
    if "enum" in node and value not in node["enum"]:
        return False
    if "pattern" in node and isinstance(value, str) and not re.search(node["pattern"], value):
        return False
    for bound, holds in (("minimum", lambda v, b: v >= b), ("maximum", lambda v, b: v <= b),
                         ("exclusiveMinimum", lambda v, b: v > b), ("exclusiveMaximum", lambda v, b: v < b)):
        if bound in node and isinstance(value, (int, float)) and not holds(value, node[bound]):
            return False
    if isinstance(value, dict):
        if any(key not in value for key in node.get("required", [])):
            return False
        props = node.get("properties", {})
        for key, item in value.items():
            if key in props:
                if not _validate(item, props[key], root):
                    return False
            elif node.get("additionalProperties") is False:
                return False
    if isinstance(value, list):
        prefix = node.get("prefixItems", [])
        for i, item in enumerate(value):
            sub = prefix[i] if i < len(prefix) else node.get("items")
            if isinstance(sub, dict) and not _validate(item, sub, root):
                return False
    if not all(_validate(value, sub, root) for sub in node.get("allOf", [])):
        return False
    if "anyOf" in node and not any(_validate(value, sub, root) for sub in node["anyOf"]):
        return False
    return True


def test_schema_command_prints_a_json_schema_of_the_scenario_keys(cli):
    from gridflex.scenario import Scenario
    from gridflex.shipped import shipped_scenarios

    stdout, _ = run_ok(cli, "schema")
    schema = json.loads(stdout)
    nodes: list = []
    _walk_schemas(schema, nodes)
    used = {key for node in nodes for key in node}
    assert used <= SCHEMA_KEYWORDS, used - SCHEMA_KEYWORDS
    for node in nodes:  # every reference resolves, every type is a JSON Schema type
        if "$ref" in node:
            assert node["$ref"].removeprefix("#/$defs/") in schema["$defs"], node["$ref"]
        if "type" in node:
            assert node["type"] in {*JSON_TYPES, "integer", "number"}, node["type"]
    assert schema["type"] == "object" and schema["additionalProperties"] is False
    assert set(schema["properties"]) == set(Scenario.model_fields)
    assert set(schema["required"]) == {"name", "feeder"}
    assert "days_per_batch" not in schema["$defs"]["DataSpec"]["properties"]  # removed (issue #14)
    for kind, name in (("solver", "ac3ph"), ("learner", "gradmap"), ("device", "battery")):
        assert f"{kind}_{name}_params" in schema["$defs"]

    shipped = shipped_scenarios()
    assert shipped
    for path in shipped:
        assert _validate(yaml.safe_load(path.read_text()), schema, schema), path
    valid = yaml.safe_load(shipped[0].read_text())
    for mutate in (lambda d: d.update(bogus=1), lambda d: d.update(device="gpu"),
                   lambda d: d["feeder"].update(taps="sometimes"), lambda d: d.pop("feeder"),
                   lambda d: d["devices"][0].update(params={"p_max_kw": "big"})):
        bad = json.loads(json.dumps(valid))
        mutate(bad)
        assert not _validate(bad, schema, schema), bad

    stdout, _ = run_ok(cli, "schema", "--no-components")
    assert not [name for name in json.loads(stdout)["$defs"] if name.endswith("_params")]


# ------------------------------------------------------------------ one voltage-metric definition


def test_voltage_violation_metrics_numpy_torch_and_nonconverged():
    from gridflex.learning.metrics import voltage_violation_metrics
    from gridflex.runs.verify import voltage_metrics

    vm = np.array([[[1.00, 0.94, 1.07], [1.02, 1.03, 0.949]],  # day 0: steps 0 and 1
                   [[1.06, 1.00, 1.00], [0.90, 1.10, 1.00]]])  # day 1
    limits, dt_h = (0.95, 1.05), 0.5
    got = voltage_violation_metrics(vm, limits, dt_h)
    assert got == voltage_violation_metrics(torch.as_tensor(vm), limits, dt_h)  # numpy or torch
    residual = np.maximum(vm - 1.05, 0) + np.maximum(0.95 - vm, 0)
    assert got["voltage_violation_rate"] == pytest.approx(6 / 12)
    assert got["undervoltage_rate"] == pytest.approx(3 / 12) and got["overvoltage_rate"] == pytest.approx(3 / 12)
    assert got["voltage_violation_pu_h"] == pytest.approx(residual.sum() * dt_h / 2)
    assert got["max_voltage_deviation_pu"] == pytest.approx(0.05)

    # a non-converged step counts as violated at every node; its magnitudes enter no sum or maximum
    converged = np.array([[True, True], [True, False]])
    masked = voltage_violation_metrics(vm, limits, dt_h, converged)
    assert masked["voltage_violation_rate"] == pytest.approx(7 / 12)
    assert masked["max_voltage_deviation_pu"] == pytest.approx(0.02)
    assert masked["voltage_violation_pu_h"] == pytest.approx(residual[:, :1].sum() * dt_h / 2 + residual[0, 1].sum() * dt_h / 2)
    assert masked["undervoltage_rate"] == pytest.approx(2 / 12) and masked["overvoltage_rate"] == pytest.approx(2 / 12)

    # gridflex verify reports the same definition (plus the extreme magnitudes)
    report = voltage_metrics(vm, limits, dt_h, converged)
    assert {k: report[k] for k in masked} == masked
    assert report["min_vm_pu"] == pytest.approx(0.90) and report["max_vm_pu"] == pytest.approx(1.10)
