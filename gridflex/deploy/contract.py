"""``policy_contract.json``: what every exported file computes, for whom, in which units.

:func:`build_contract` writes, per agent, its device type and parameters, bus and phase(s), the
ordered raw inputs (ONNX) and observation features (both formats) with units, the action's
components with meaning and units, and the file; globally the feeder, the scenario's sha256, the
gridflex version and a precise statement of the computation. :func:`read_contract` checks an
export folder (exit 2 with one paragraph when it is not one).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from gridflex import __version__
from gridflex.deploy.agent_graph import (BASE_INPUTS, COMMON_FEATURES, VOLTAGE_FEATURE, VOLTAGE_INPUT,
                                         activation_name, agent_view, state_names)
from gridflex.errors import UserError

CONTRACT = "policy_contract.json"
CONTRACT_FORMAT = "gridflex-policy-contract/1"
FORMATS = ("onnx", "npz")
RUN_METRICS = "run_metrics.json"  # the run's own metrics.json, copied beside the files
SCENARIO = "scenario.resolved.yaml"

#: units from name suffixes (gridflex's naming rule: units in names)
UNIT_SUFFIXES = (("_eur_per_kwh", "EUR/kWh"), ("_kvar", "kvar"), ("_kwh", "kWh"), ("_kw", "kW"),
                 ("_kva", "kVA"), ("_pu", "pu"), ("_c", "degC"), ("_h", "h"), ("_frac", "1"),
                 ("_flag", "0/1"), ("_eur", "EUR"))

COMPUTES = {
    "onnx": (
        "Each agents/<file>.onnx maps one agent's raw local measurements to its device's physical "
        "set-point, for M samples at once (dynamic first dimension). Inputs, float64 [M] each, in the "
        "order of the agent's 'inputs'. The graph computes (1) the observation features of 'observation' "
        "in float64 (the environment's common features from the raw inputs, then the device model's own "
        "features from the state inputs); (2) z = clip((x - mean) / sqrt(var + eps), -clip, clip) with "
        "the agent's own running statistics, in float32; (3) the agent's MLP, h <- act(h W + b) per "
        "hidden layer, no activation after the last; (4) u = sigmoid(h + offset) or clip(h + offset, 0, "
        "1) per 'squash', in [0, 1]^d; (5) set_point = lo(s) + (hi(s) - lo(s)) u with the device "
        "model's action_bounds(state) (where the limits depend on the state, e.g. a battery's stored "
        "energy, the state is an input), plus the device's own refinement where it has one (e.g. "
        "reactive power inside the inverter circle at the chosen active power: q = q_lim(p) (2 u_q - "
        "1)). Outputs: 'set_point' float64 [M, d] in the units of 'action', and 'u' float64 [M, d]."),
    "npz": (
        "weights.npz holds every agent's policy as per-fleet stacked arrays (agent i of fleet f is "
        "row i of the arrays 'f<f>.*'); policy_numpy.py (pure numpy, ~30 lines) maps observation "
        "features x [..., N, k], in the order of the agent's 'observation' (each feature's formula of "
        "the raw measurements and device state is given), to u in [0, 1]^d: z = clip((x - mean) / "
        "sqrt(var + eps), -clip, clip); h <- act(h W + b) per hidden layer; u = sigmoid(h + offset) or "
        "clip(h + offset, 0, 1) per 'squash'; all in float32. The physical set-point is then "
        "lo(s) + (hi(s) - lo(s)) u with the device's action bounds (see 'action' and the device "
        "model's documentation; the ONNX export computes this step inside the graph)."),
}


def unit_of(name: str) -> str:
    """The unit a gridflex name carries in its suffix (``"?"`` if none is recognised)."""
    for suffix, unit in UNIT_SUFFIXES:
        if name.endswith(suffix):
            return unit
    return "?"


def device_parameters(model, agent: int) -> dict:
    """Agent ``agent``'s sampled parameters (every per-agent tensor attribute, as floats)."""
    view = agent_view(model, agent)
    params = {}
    for name, value in vars(view).items():
        if name.startswith("_") or not hasattr(value, "shape") or tuple(value.shape) != (1,):
            continue
        if getattr(model, name) is value:  # not per-agent (a shared tensor of size 1)
            continue
        params[name] = float(value.reshape(()))
    return params


def observation_spec(env, fleet: int) -> list[dict]:
    """The ordered observation features of fleet ``fleet``'s agents: name, unit, formula."""
    model = env.fleets[fleet].model
    rows = [dict(name=n, unit=u, formula=f) for n, u, f in COMMON_FEATURES]
    if env.observe_voltage:
        rows.append(dict(zip(("name", "unit", "formula"), VOLTAGE_FEATURE)))
    names = list(model.observation_names)
    if len(names) != model.obs_dim:
        names = [f"device_feature_{j}" for j in range(model.obs_dim)]
    for j, name in enumerate(names):
        rows.append(dict(name=name, unit=unit_of(name) if unit_of(name) != "?" else "1",
                         formula=f"{model.name}.observation(state)[{j}] (see docs/devices.md)"))
    return rows


def input_spec(env, fleet: int) -> list[dict]:
    """The ordered raw inputs of fleet ``fleet``'s ONNX files: name, unit, meaning."""
    model = env.fleets[fleet].model
    rows = [dict(name=n, unit=u, meaning=m) for n, u, m in BASE_INPUTS]
    if env.observe_voltage:
        rows.append(dict(zip(("name", "unit", "meaning"), VOLTAGE_INPUT)))
    for name in state_names(model):
        rows.append(dict(name=f"state_{name}", unit=unit_of(name),
                         meaning=f"device state component '{name}' at the start of the step"))
    return rows


def action_spec(model) -> list[dict]:
    """The action's components: name, unit, meaning (the first ``action_dim`` of the model's)."""
    d = int(model.action_dim)
    names = list(model.action_names)[:d]
    meanings = list(model.action_meanings)[:d]
    if len(names) != d:
        names = [f"a{j}" for j in range(d)]
    meanings += [""] * (d - len(meanings))
    return [dict(name=n, unit=unit_of(n), meaning=m) for n, m in zip(names, meanings)]


def build_contract(run, fmt: str, agents: list[dict]) -> dict:
    """The contract document of an export of ``run`` (a :class:`~gridflex.deploy.source.TrainedRun`)
    in format ``fmt``; ``agents`` are the per-agent entries (:func:`agent_entry`)."""
    cfg = run.loaded.config
    env = run.world.env
    return {
        "format": CONTRACT_FORMAT,
        "export_format": fmt,
        "gridflex_version": __version__,
        "created_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "computes": COMPUTES[fmt],
        "scenario": cfg.name,
        "scenario_sha256": run.loaded.sha256(),
        "scenario_file": SCENARIO,
        "run_metrics_file": RUN_METRICS,
        "run_dir": str(Path(run.run_dir).resolve()),
        "learner": cfg.learner.type,
        "seed": int((run.metrics.get("seeds") or [cfg.seed])[0]),
        "feeder": {"file": cfg.feeder.file, "path": str(run.loaded.feeder_path()),
                   "tap_treatment": env.tap_treatment, "base_taps": dict(env.base_taps),
                   "load_model": cfg.feeder.load_model},
        "dt_h": float(env.dt_h),
        "observe_voltage": bool(env.observe_voltage),
        "n_agents": len(agents),
        "agents": agents,
    }


def agent_entry(env, deployable, agent_id, file: str) -> dict:
    """One agent's contract entry (``agent_id``: :class:`~gridflex.learning.agent_ids.AgentId`)."""
    fleet = env.fleets[agent_id.fleet]
    model = fleet.model
    policy = deployable.policy
    return {
        "name": agent_id.name,
        "fleet": fleet.name,
        "fleet_index": agent_id.fleet,
        "index_in_fleet": agent_id.index,
        "device_type": model.name,
        "device_config": model.config.model_dump(mode="json"),
        "parameters": device_parameters(model, agent_id.index),
        "bus": agent_id.bus,
        "nodes": list(agent_id.nodes),
        "phases": [int(n.rsplit(".", 1)[1]) for n in agent_id.nodes],
        "household": int(fleet.placement.household[agent_id.index]),
        "file": file,
        "inputs": input_spec(env, agent_id.fleet),
        "observation": observation_spec(env, agent_id.fleet),
        "action": action_spec(model),
        "policy": {"hidden_sizes": [int(w.shape[-1]) for w in policy.mlp.weights][:-1],
                   "activation": activation_name(policy), "squash": deployable.squash,
                   "offset": float(deployable.offset), "normaliser_clip": float(policy.normaliser.clip),
                   "normaliser_eps": float(policy.normaliser.eps)},
    }


def write_contract(out_dir: Path, contract: dict) -> Path:
    path = Path(out_dir) / CONTRACT
    path.write_text(json.dumps(contract, indent=1))
    return path


def read_json(path: Path, remedy: str):
    """The JSON document at ``path``; an unreadable one is a :class:`UserError` ending in ``remedy``."""
    try:
        return json.loads(Path(path).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"{path} is not readable JSON ({exc.__class__.__name__}); {remedy}") from None


def read_contract(export_dir: Path) -> dict:
    """The contract of an export folder; anything that is not one is a :class:`UserError`."""
    export_dir = Path(export_dir)
    if not export_dir.is_dir():
        raise UserError(f"export folder {export_dir} does not exist" + (" (it is a file)" if export_dir.exists() else "")
                        + "; give the folder written by `gridflex export RUN_DIR --out DIR`")
    path = export_dir / CONTRACT
    if not path.is_file():
        raise UserError(f"{export_dir} holds no {CONTRACT}, so it is not a gridflex export folder; "
                        "create one with `gridflex export RUN_DIR --out DIR`")
    contract = read_json(path, "export the run again")
    if not isinstance(contract, dict) or contract.get("format") != CONTRACT_FORMAT \
            or contract.get("export_format") not in FORMATS:
        raise UserError(f"{path} is not a {CONTRACT_FORMAT} contract with export_format onnx or npz; "
                        "export the run again with this gridflex")
    missing = [name for name in (SCENARIO, RUN_METRICS) if not (export_dir / name).is_file()]
    missing += sorted({a["file"] for a in contract.get("agents", []) if not (export_dir / a["file"]).is_file()})
    if missing:
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        raise UserError(f"export folder {export_dir} is incomplete: {shown} missing; export the run again")
    return contract
