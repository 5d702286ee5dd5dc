"""``gridflex deploy-sim EXPORT_DIR``: the test days again, every agent acting through its file only.

The world (feeder, households, devices, AC solver) is rebuilt from the export's
``scenario.resolved.yaml`` and the test days are rolled out exactly as ``gridflex run`` evaluated
them (the scenario's tap treatment, then with the tap controller when the scenario evaluates
that), but the trained learner is never built:

* ``onnx``: at every step each agent's own ``.onnx`` file (onnxruntime, one session per agent,
  all days of the step in one call) gets the agent's raw inputs (own household and PV, weather,
  price, hour, own device state) and returns the physical set-point, which the device applies as
  it is (:class:`SetPointDevice`); gridflex's ``u -> set-point`` map is not used;
* ``npz``: the shipped ``policy_numpy.py`` computes ``u`` from the environment's observation
  features with ``weights.npz`` (vectorised over the agents of a fleet, each row its own agent's
  weights), and the device model maps ``u`` to the set-point.

The metrics are printed beside the run's own ``metrics.json`` (copied into the export as
``run_metrics.json``), with the largest difference.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from gridflex.deploy.agent_graph import state_names
from gridflex.deploy.contract import RUN_METRICS, read_contract, read_json
from gridflex.errors import GridflexError, UserError

#: differences up to this (absolute, or relative to the run's value) count as equal
EQUAL_TOLERANCE = 1e-6


class SetPointDevice:
    """A fleet's device model whose :meth:`action` returns the set-points the agents' files
    computed for this step (everything else is the wrapped model's)."""

    def __init__(self, model, controller: OnnxAgents, fleet: int):
        self._model, self._controller, self._fleet = model, controller, fleet

    def __getattr__(self, name):
        return getattr(self._model, name)

    def action(self, u, state, inputs):
        u_given, set_point = self._controller.pending.pop(self._fleet, (None, None))
        if u_given is not u:
            raise GridflexError("deploy-sim: a device was asked for an action its agents' files did "
                                "not compute (the environment's step order changed?)")
        return set_point


class OnnxAgents:
    """The controller of an ONNX export: per step, each agent's session on its own raw inputs."""

    voltage_feedback = False

    def __init__(self, env, contract: dict, export_dir: Path):
        from gridflex.deploy.export import need_onnx

        _, ort = need_onnx()
        options = ort.SessionOptions()
        options.intra_op_num_threads = options.inter_op_num_threads = 1
        self.env = env
        self.sessions: list[list] = [[] for _ in env.fleets]
        self.input_names: list[list[str]] = [[] for _ in env.fleets]
        for agent in contract["agents"]:
            f = agent["fleet_index"]
            if agent["index_in_fleet"] != len(self.sessions[f]):
                raise UserError(f"{export_dir}: the contract's agents are not in fleet order; export again")
            session = ort.InferenceSession(str(export_dir / agent["file"]), options,
                                           providers=["CPUExecutionProvider"])
            self.sessions[f].append(session)
            self.input_names[f] = [i.name for i in session.get_inputs()]
        for f, fleet in enumerate(env.fleets):
            if len(self.sessions[f]) != fleet.n_agents:
                raise UserError(f"{export_dir}: the contract has {len(self.sessions[f])} agents in fleet "
                                f"{fleet.name}, the scenario {fleet.n_agents}; export again")
        self.pending: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        self.calls = 0

    def prepare(self, exogenous, on_day=None, **_) -> None:
        """Decentralised controllers ignore the days ahead."""

    def act(self, fleet_index: int, t: int, obs, state, inputs):
        """``u [B, N, d]``; the set-points ``[B, N, d]`` wait in :attr:`pending` for the device."""
        env = self.env
        b = state.shape[0]
        np_of = lambda x: np.ascontiguousarray(x.detach().cpu().numpy().astype(np.float64, copy=False))  # noqa: E731
        per_agent = {"household_kw": np_of(inputs.household_kw.T), "pv_kw": np_of(inputs.pv_kw.T),
                     "v_prev_pu": np_of(inputs.v_prev_pu.T)}
        shared = {"temp_out_c": np_of(inputs.temp_out_c), "price_eur_per_kwh": np_of(inputs.price_per_kwh),
                  "hour_of_day_h": np.full(b, float(inputs.hour_of_day))}
        states = np_of(state.permute(1, 2, 0))  # [N, S, B]
        names = state_names(env.fleets[fleet_index].model)
        set_points, us = [], []
        for i, session in enumerate(self.sessions[fleet_index]):
            feeds = {}
            for name in self.input_names[fleet_index]:
                if name in shared:
                    feeds[name] = shared[name]
                elif name in per_agent:
                    feeds[name] = per_agent[name][i]
                else:
                    feeds[name] = states[i, names.index(name[len("state_"):])]
            set_point, u = session.run(["set_point", "u"], feeds)
            set_points.append(set_point)
            us.append(u)
            self.calls += 1
        tensor = dict(dtype=state.dtype, device=state.device)
        u = torch.as_tensor(np.stack(us, 1), **tensor)
        self.pending[fleet_index] = (u, torch.as_tensor(np.stack(set_points, 1), **tensor))
        return u


class NumpyAgents:
    """The controller of an npz export: the shipped ``policy_numpy.py`` on the observation features."""

    voltage_feedback = False

    def __init__(self, env, contract: dict, export_dir: Path):
        from gridflex.deploy.export import NUMPY_MODULE, WEIGHTS, load_numpy_module

        self.module = load_numpy_module(export_dir / NUMPY_MODULE)
        self.weights = dict(np.load(export_dir / WEIGHTS, allow_pickle=False))
        for f, fleet in enumerate(env.fleets):
            rows = self.weights.get(f"f{f}.mean")
            if rows is None or rows.shape != (fleet.n_agents, env.obs_dim(f)):
                raise UserError(f"{export_dir / WEIGHTS} does not fit fleet {fleet.name} of the scenario "
                                f"({fleet.n_agents} agents, {env.obs_dim(f)} features); export again")
        self.calls = 0

    def prepare(self, exogenous, on_day=None, **_) -> None:
        """Decentralised controllers ignore the days ahead."""

    def act(self, fleet_index: int, t: int, obs, state, inputs):
        self.calls += 1
        u = self.module.act(self.weights, fleet_index, obs.detach().cpu().numpy())
        return torch.as_tensor(u, device=obs.device).to(obs.dtype)


@dataclass
class DeploySimResult:
    export_format: str
    metrics: dict  # {"test": ..., "test_regulated": ...} of the files acting
    run_metrics: dict  # the same keys from the run's metrics.json
    rows: list[tuple[str, str, float, float, float]] = field(default_factory=list)  # key, metric, run, sim, |diff|
    max_abs_diff: float = 0.0
    max_rel_diff: float = 0.0
    agent_calls: int = 0  # ONNX: one per agent and step; npz: one per fleet and step

    @property
    def equal(self) -> bool:
        return all(_close(run, sim) for _, _, run, sim, _ in self.rows)


def deploy_sim(export_dir: Path, *, progress=None) -> DeploySimResult:
    """Roll out the test days with every agent acting through its exported file (module docstring)."""
    from gridflex.deploy.source import load_run_scenario
    from gridflex.plugins.registry import load_registry
    from gridflex.runs.evaluate import evaluate, held_out_days
    from gridflex.runs.world import build_world

    export_dir = Path(export_dir)
    contract = read_contract(export_dir)
    fmt = contract["export_format"]
    if fmt == "onnx":
        from gridflex.deploy.export import need_onnx

        need_onnx()
    run_metrics = read_json(export_dir / RUN_METRICS, "export the run again")
    pm, registry = load_registry()
    loaded = load_run_scenario(export_dir, registry)
    if loaded.sha256() != contract["scenario_sha256"]:
        raise UserError(f"{export_dir}: its scenario.resolved.yaml (sha256 {loaded.sha256()[:12]}) is not "
                        f"the scenario of its contract ({contract['scenario_sha256'][:12]}); export again "
                        "(the files may come from another gridflex version or run)")
    world = build_world(loaded, registry, pm, torch.device("cpu"), progress=progress)
    env = world.env
    if len(contract["agents"]) != env.n_agents:
        raise UserError(f"{export_dir}: the contract has {len(contract['agents'])} agents, the scenario "
                        f"{env.n_agents}; export again")
    base = OnnxAgents if fmt == "onnx" else NumpyAgents
    # evaluate() reads voltage_feedback from the controller's class, as from a learner's
    agents_cls = type(base.__name__, (base,), {"voltage_feedback": bool(contract.get("voltage_feedback", False))})
    controller = agents_cls(env, contract, export_dir)
    if fmt == "onnx":
        for f, fleet in enumerate(env.fleets):  # shared by every view of the environment
            fleet.model = SetPointDevice(fleet.model, controller, f)
    cfg = loaded.config
    evaluation = evaluate(world, controller, held_out_days(world), cfg.data.n_test_days,
                          cfg.environment.regulated_evaluation)
    metrics = {"test": evaluation.metrics, "test_regulated": evaluation.metrics_regulated or {}}
    result = compare_metrics(fmt, metrics, run_metrics)
    result.agent_calls = controller.calls
    return result


def compare_metrics(fmt: str, metrics: dict, run_metrics: dict) -> DeploySimResult:
    """Every numeric metric of ``metrics`` beside the run's (``test`` and ``test_regulated``)."""
    result = DeploySimResult(fmt, metrics, {k: run_metrics.get(k) or {} for k in metrics})
    for key, values in metrics.items():
        theirs = run_metrics.get(key) or {}
        for name, sim in values.items():
            run = theirs.get(name)
            if not _number(sim) or not _number(run):
                continue
            diff = abs(float(sim) - float(run))
            result.rows.append((key, name, float(run), float(sim), diff))
            if math.isfinite(diff):
                result.max_abs_diff = max(result.max_abs_diff, diff)
                result.max_rel_diff = max(result.max_rel_diff, diff / max(abs(float(run)), 1e-12))
    return result


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _close(run: float, sim: float) -> bool:
    if math.isnan(run) or math.isnan(sim):
        return math.isnan(run) and math.isnan(sim)
    return abs(sim - run) <= EQUAL_TOLERANCE * max(1.0, abs(run))


def format_result(result: DeploySimResult) -> str:
    """The metrics table (run vs deploy-sim) and a one-line verdict."""
    header = ("taps", "metric", "run metrics.json", "deploy-sim", "|diff|")
    rows = [(("frozen" if key == "test" else "regulated"), name, f"{run:.9g}", f"{sim:.9g}", f"{diff:.2e}")
            for key, name, run, sim, diff in result.rows]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))
             for r in [header, *rows]]
    lines.insert(1, "  ".join("-" * w for w in widths))
    verdict = "equal" if result.equal else "DIFFERENT"
    lines.append(f"\n{verdict}: largest difference {result.max_abs_diff:.3g} (relative {result.max_rel_diff:.3g}); "
                 f"equal means |diff| <= {EQUAL_TOLERANCE:g} x max(1, |run value|) for every metric")
    return "\n".join(lines)
