"""gridflex export and deploy-sim (issue #17 items 1-2) on a short run of the default scenario
(ieee13_small, 160 agents): one ONNX file per agent that maps raw local measurements to the device's
set-point and agrees with the trained torch policy to 1e-5 on the test days; weights.npz with the
shipped numpy implementation; deploy-sim, every agent acting through its own file, reproduces the
run's metrics.json; bad input is exit 2 with one paragraph."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from gridflex.cli.main import main

SHORT = ["-o", "learner.params.budget_iterations=10", "-o", "learner.params.validation_interval_iterations=5",
         "--no-references"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("deploy") / "run"
    assert main(["run", *SHORT, "--out", str(out)]) == 0
    return out


@pytest.fixture(scope="module")
def onnx_dir(run_dir) -> Path:
    pytest.importorskip("onnxruntime")
    out = run_dir.parent / "onnx"
    assert main(["export", str(run_dir), "--out", str(out)]) == 0
    return out


def test_onnx_files_map_raw_measurements_to_set_points_like_the_trained_policy(run_dir, onnx_dir):
    import onnx
    import onnxruntime as ort

    from gridflex.deploy.export import agent_inputs, reference_rollout
    from gridflex.deploy.source import load_trained_run

    contract = json.loads((onnx_dir / "policy_contract.json").read_text())
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert contract["scenario_sha256"] == metrics["scenario_sha256"]
    assert contract["gridflex_version"] and contract["feeder"]["file"] == "ieee13"
    agents = contract["agents"]
    assert len(agents) == 160 == len(list((onnx_dir / "agents").glob("*.onnx")))
    assert len({a["file"] for a in agents}) == 160 and len({a["name"] for a in agents}) == 160
    battery = agents[0]
    assert battery["device_type"] == "battery" and battery["name"] == f"battery_0@{battery['bus']}"
    assert [i["name"] for i in battery["inputs"]] == ["household_kw", "pv_kw", "temp_out_c", "price_eur_per_kwh",
                                                      "hour_of_day_h", "state_e_kwh", "state_e_start_kwh"]
    assert [i["unit"] for i in battery["inputs"]] == ["kW", "kW", "degC", "EUR/kWh", "h", "kWh", "kWh"]
    assert [(a["name"], a["unit"]) for a in battery["action"]] == [("p_kw", "kW"), ("q_kvar", "kvar")]
    assert len(battery["observation"]) == 8 and battery["phases"] and battery["parameters"]["capacity_kwh"] > 0

    run = load_trained_run(run_dir)
    rollout = reference_rollout(run)
    env = run.world.env
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    worst = 0.0
    for agent in agents:
        model = onnx.load(onnx_dir / agent["file"])
        opset = next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
        assert opset >= 17
        assert [i.name for i in model.graph.input] == [i["name"] for i in agent["inputs"]]
        assert [o.name for o in model.graph.output] == ["set_point", "u"]
        session = ort.InferenceSession(str(onnx_dir / agent["file"]), options, providers=["CPUExecutionProvider"])
        f, i = agent["fleet_index"], agent["index_in_fleet"]
        feeds = agent_inputs(env, rollout, f, i)
        set_point, u = session.run(None, {n: feeds[n] for n in (x["name"] for x in agent["inputs"])})
        torch_action = rollout.fleets[f].actions[:, :, i].numpy().reshape(set_point.shape)
        worst = max(worst, float(np.abs(set_point - torch_action).max()))
        assert np.all((u >= 0) & (u <= 1))
    assert worst <= 1e-5
    print(f"ONNX vs torch set-points on the test days: max |diff| {worst:.3g}")

    # the state is an input: a full battery cannot charge, an empty one cannot discharge
    session = ort.InferenceSession(str(onnx_dir / battery["file"]), options, providers=["CPUExecutionProvider"])
    p = battery["parameters"]
    hours = np.arange(24, dtype=np.float64)
    feeds = {"household_kw": np.full(24, 0.8), "pv_kw": np.full(24, 2.0), "temp_out_c": np.full(24, 5.0),
             "price_eur_per_kwh": np.linspace(0.1, 0.5, 24), "hour_of_day_h": hours}
    full = session.run(None, {**feeds, "state_e_kwh": np.full(24, p["e_max_kwh"]),
                              "state_e_start_kwh": np.full(24, p["e_init_kwh"])})[0]
    empty = session.run(None, {**feeds, "state_e_kwh": np.full(24, p["e_min_kwh"]),
                               "state_e_start_kwh": np.full(24, p["e_init_kwh"])})[0]
    assert full[:, 0].max() <= 1e-9 and empty[:, 0].min() >= -1e-9
    assert np.all(full[:, 0] >= -p["p_max_kw"] - 1e-9) and np.all(empty[:, 0] <= p["p_max_kw"] + 1e-9)
    assert np.all(np.hypot(full[:, 0], full[:, 1]) <= p["s_max_kva"] + 1e-9)


def test_deploy_sim_with_the_onnx_files_reproduces_the_run_metrics(cli, onnx_dir, tmp_path):
    code, out, err = cli("deploy-sim", str(onnx_dir), "--json", str(tmp_path / "sim.json"))
    assert code == 0, err
    assert "cost_per_day" in out and "equal" in out
    report = json.loads((tmp_path / "sim.json").read_text())
    assert report["equal"] and report["max_rel_diff"] <= 1e-6
    steps, n_agents = 24, 160
    assert report["agent_calls"] == 2 * steps * n_agents  # frozen and regulated taps, every agent, every step
    for key in ("test", "test_regulated"):
        for name in ("cost_per_day", "voltage_violation_rate", "losses_kwh_per_day", "peak_import_kw"):
            run, sim = report["run"][key][name], report["deploy_sim"][key][name]
            assert sim == pytest.approx(run, rel=1e-6, abs=1e-6)
    print(f"deploy-sim (onnx) vs metrics.json: max |diff| {report['max_abs_diff']:.3g}, "
          f"relative {report['max_rel_diff']:.3g}")


def test_npz_export_ships_a_small_numpy_implementation_and_replays_equal(cli, run_dir, tmp_path):
    out = tmp_path / "npz"
    code, _, err = cli("export", str(run_dir), "--format", "npz", "--out", str(out))
    assert code == 0, err
    source = (out / "policy_numpy.py").read_text()
    tree = ast.parse(source)
    imported = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    imported |= {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    assert imported == {"numpy"}
    code_lines = [ln for ln in source.splitlines() if ln.strip() and not ln.strip().startswith("#")]
    assert len(code_lines) <= 40
    contract = json.loads((out / "policy_contract.json").read_text())
    assert contract["export_format"] == "npz" and contract["check"]["max_abs_diff"] <= 1e-5
    weights = np.load(out / "weights.npz", allow_pickle=False)
    assert weights["f0.W0"].shape[0] == 80  # one row per battery agent

    code, stdout, err = cli("deploy-sim", str(out), "--json", str(tmp_path / "sim.json"))
    assert code == 0, err
    report = json.loads((tmp_path / "sim.json").read_text())
    assert report["equal"] and report["max_rel_diff"] <= 1e-6
    print(f"deploy-sim (npz) vs metrics.json: max |diff| {report['max_abs_diff']:.3g}, "
          f"relative {report['max_rel_diff']:.3g}")

    # a policy file that no longer matches the run is found: exit 4, not a silent 0
    arrays = dict(weights)
    arrays["f0.W0"] = arrays["f0.W0"] + np.float32(0.5)
    np.savez(out / "weights.npz", **arrays)
    code, stdout, err = cli("deploy-sim", str(out))
    assert code == 4, (stdout, err)
    assert "differ" in err


def _one_paragraph_user_error(code: int, err: str) -> None:
    assert code == 2
    assert "Traceback" not in err
    assert err.strip().count("\n") <= 2, err  # one paragraph (argparse adds its usage line)


def test_bad_input_is_a_user_error(cli, run_dir, tmp_path):
    code, _, err = cli("export", str(tmp_path / "missing"))
    _one_paragraph_user_error(code, err)
    assert "does not exist" in err

    code, _, err = cli("export", str(run_dir), "--format", "tflite")
    _one_paragraph_user_error(code, err)
    assert "onnx" in err and "npz" in err

    half = tmp_path / "half"
    half.mkdir()
    (half / "scenario.resolved.yaml").write_text((run_dir / "scenario.resolved.yaml").read_text())
    code, _, err = cli("export", str(half))
    _one_paragraph_user_error(code, err)
    assert "policy.pt" in err and "metrics.json" in err

    code, _, err = cli("export", str(run_dir), "--out", str(run_dir / "metrics.json"))
    _one_paragraph_user_error(code, err)

    code, _, err = cli("deploy-sim", str(run_dir))  # a run folder, not an export
    _one_paragraph_user_error(code, err)
    assert "policy_contract.json" in err

    code, _, err = cli("deploy-sim", str(tmp_path / "nowhere"))
    _one_paragraph_user_error(code, err)
    assert "does not exist" in err
    assert not any(p.name.startswith("export") for p in run_dir.iterdir())


def test_agent_graph_features_are_the_environment_observation(run_dir):
    """The exported graphs recompute the environment's observation from raw inputs: the feature
    code in gridflex.deploy.agent_graph must stay the environment's (checked on random inputs)."""
    from gridflex.deploy.agent_graph import common_features
    from gridflex.plugins.contracts import StepInputs

    from gridflex.deploy.source import load_trained_run

    env = load_trained_run(run_dir).world.env
    gen = torch.Generator().manual_seed(0)
    b, n = 5, env.fleets[0].n_agents
    rand = lambda *shape: torch.rand(*shape, generator=gen, dtype=torch.float64)  # noqa: E731
    for hour in (0.0, 7.0, 23.0):
        inputs = StepInputs(t=int(hour), dt_h=env.dt_h, hour_of_day=hour, temp_out_c=20 * rand(b) - 5,
                            price_per_kwh=0.5 * rand(b), household_kw=3 * rand(b, n), pv_kw=6 * rand(b, n),
                            v_prev_pu=0.9 + 0.2 * rand(b, n))
        state = env.fleets[0].model.initial_state(b, inputs.temp_out_c)
        obs = env.observation(0, state, inputs)[..., :6]
        mine = common_features(inputs.household_kw, inputs.pv_kw, inputs.temp_out_c[:, None].expand(b, n),
                               inputs.price_per_kwh[:, None].expand(b, n), torch.full((b, n), hour, dtype=torch.float64),
                               env.dt_h, None)
        assert torch.equal(mine, obs)


def test_ippo_policies_export_with_their_clip_squash(cli, tmp_path):
    """IPPO's deterministic controller (clip(mu + 0.5, 0, 1)) exports and replays like GradMAP's."""
    pytest.importorskip("onnxruntime")
    import yaml

    from gridflex.scenario import default_scenario_path

    scenario = yaml.safe_load(default_scenario_path().read_text())
    scenario["learner"] = {"type": "ippo", "params": {
        "budget_iterations": 2, "budget_seconds": None, "validation_interval_iterations": 1,
        "warm_start_epochs": 2, "squash": "clip"}}
    path = tmp_path / "ippo.yaml"
    path.write_text(yaml.safe_dump(scenario))
    tiny = ["-o", "devices[0].count=4", "-o", "devices[1].count=4", "-o", "devices[2].count=4",
            "-o", "data.n_validation_days=1", "-o", "data.n_test_days=2", "--no-references"]
    code, _, err = cli("run", str(path), *tiny, "--out", str(tmp_path / "run"))
    assert code == 0, err
    code, _, err = cli("export", str(tmp_path / "run"), "--out", str(tmp_path / "onnx"))
    assert code == 0, err
    contract = json.loads((tmp_path / "onnx" / "policy_contract.json").read_text())
    assert {a["policy"]["squash"] for a in contract["agents"]} == {"clip"}
    assert {a["policy"]["offset"] for a in contract["agents"]} == {0.5}
    assert contract["check"]["max_abs_diff"] <= 1e-5
    code, _, err = cli("deploy-sim", str(tmp_path / "onnx"), "--json", str(tmp_path / "sim.json"))
    assert code == 0, err
    report = json.loads((tmp_path / "sim.json").read_text())
    assert report["equal"] and report["agent_calls"] == 2 * 24 * 12
