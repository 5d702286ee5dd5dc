"""``gridflex export RUN_DIR``: one ONNX file per agent, or ``weights.npz`` with a numpy reference.

Every file written is checked before the export ends: each agent's ONNX graph (onnxruntime) or
the numpy reference is run on the agent's own inputs of the run's test days and compared with the
trained policy acting in the batched torch environment (set-points for ONNX, ``u`` for npz); the
largest difference per agent is recorded in the contract (``check_max_abs_diff``) and an export
that disagrees by more than :data:`TOLERANCE` is refused as a bug.

Folder layout: ``policy_contract.json``, ``scenario.resolved.yaml`` and ``plan.txt`` (to rebuild
the world), ``run_metrics.json`` (the run's ``metrics.json``), then ``agents/*.onnx`` or
``weights.npz`` + ``policy_numpy.py``.
"""

from __future__ import annotations

import importlib.util
import shutil
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from gridflex import __version__
from gridflex.deploy.agent_graph import AgentGraph, activation_name, state_names
from gridflex.deploy.contract import (CONTRACT, FORMATS, RUN_METRICS, SCENARIO, agent_entry,
                                      build_contract, read_contract, write_contract)
from gridflex.errors import GridflexError, UserError
from gridflex.learning.agent_ids import agent_ids

ONNX_OPSET = 18
TOLERANCE = 1e-5  # largest |difference| accepted between a file and the torch policy (kW or u)
NUMPY_MODULE = "policy_numpy.py"
WEIGHTS = "weights.npz"
AGENTS_DIR = "agents"
EXPORT_NAMES = (CONTRACT, SCENARIO, "plan.txt", RUN_METRICS, WEIGHTS, NUMPY_MODULE, AGENTS_DIR)


@dataclass
class ExportResult:
    out_dir: Path
    contract: dict
    max_abs_diff: float  # over agents, test days and action components
    files: int


def need_onnx():
    """``(onnx, onnxruntime)``, or a :class:`UserError` saying how to install them."""
    try:
        import onnx
        import onnxruntime
    except ImportError:
        raise UserError("the ONNX format needs the packages onnx and onnxruntime: pip install "
                        "'gridflex[export]' (or use --format npz, which needs numpy only)") from None
    return onnx, onnxruntime


def default_out_dir(run_dir: Path, fmt: str) -> Path:
    return Path(run_dir) / f"export_{fmt}"


def check_out_dir(out_dir: Path) -> None:
    """``out_dir`` must be new, empty or an earlier export (replaced); anything else is exit 2."""
    if out_dir.exists() and not out_dir.is_dir():
        raise UserError(f"--out {out_dir} is an existing file; it must name a folder for the export")
    if not out_dir.is_dir() or not any(out_dir.iterdir()):
        return
    if not (out_dir / CONTRACT).is_file():
        raise UserError(f"--out {out_dir} already holds files and is not a gridflex export folder; "
                        "give a new or empty folder (an earlier export folder is replaced)")
    foreign = [p.name for p in out_dir.iterdir() if p.name not in EXPORT_NAMES]
    if foreign:
        raise UserError(f"--out {out_dir} is an earlier export but also holds {', '.join(sorted(foreign)[:5])}; "
                        "gridflex replaces only its own export files: move those away or choose another --out")


def export_run(run_dir: Path, fmt: str = "onnx", out_dir: Path | None = None, *, progress=None) -> ExportResult:
    """Export ``run_dir``'s trained policies as ``fmt`` into ``out_dir`` (module docstring)."""
    from gridflex.deploy.source import load_trained_run

    if fmt not in FORMATS:
        raise UserError(f"--format {fmt!r} is not an export format; allowed: {', '.join(FORMATS)}")
    out_dir = Path(out_dir) if out_dir is not None else default_out_dir(run_dir, fmt)
    check_out_dir(out_dir)
    if fmt == "onnx":
        need_onnx()
    run = load_trained_run(run_dir, progress=progress)
    env = run.world.env
    rollout = reference_rollout(run)
    ids = agent_ids(env)
    # written into a sibling folder first, so a failed export leaves nothing half-written
    work = out_dir.parent / f".{out_dir.name}.partial"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    try:
        if fmt == "onnx":
            entries, worst = _export_onnx(run, rollout, ids, work, progress)
        else:
            entries, worst = _export_npz(run, rollout, ids, work)
        for name, target in ((SCENARIO, SCENARIO), ("plan.txt", "plan.txt"), ("metrics.json", RUN_METRICS)):
            if (Path(run_dir) / name).is_file():
                shutil.copyfile(Path(run_dir) / name, work / target)
        contract = build_contract(run, fmt, entries)
        contract["voltage_feedback"] = bool(type(run.learner).voltage_feedback)
        contract["check"] = {"what": "max |file - trained torch policy| over the run's test days "
                                     + ("(set-points, action units)" if fmt == "onnx" else "(u)"),
                             "max_abs_diff": worst, "tolerance": TOLERANCE}
        write_contract(work, contract)
        read_contract(work)  # what deploy-sim will read: complete
        out_dir.mkdir(parents=True, exist_ok=True)
        for name in EXPORT_NAMES:  # an earlier export: only its own files go
            target = out_dir / name
            shutil.rmtree(target) if target.is_dir() else target.unlink(missing_ok=True)
        for item in work.iterdir():
            item.rename(out_dir / item.name)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return ExportResult(out_dir, contract, worst, len(entries))


def reference_rollout(run):
    """The trained policy on the run's test days in the batched torch environment (the scenario's
    tap treatment), as ``gridflex run`` evaluated it."""
    from gridflex.runs.evaluate import evaluate, held_out_days

    cfg = run.loaded.config
    return evaluate(run.world, run.learner, held_out_days(run.world), cfg.data.n_test_days, False).rollout


def agent_inputs(env, rollout, fleet: int, agent: int) -> dict[str, np.ndarray]:
    """Agent ``agent`` of fleet ``fleet``'s raw inputs over every day and step of ``rollout``,
    each ``[B*T]`` float64 (day-major), keyed by the ONNX input names."""
    exo = rollout.exogenous
    b, steps = exo.batch, exo.steps
    house = int(env.fleets[fleet].placement.household[agent])
    model = env.fleets[fleet].model
    flat = lambda x: np.ascontiguousarray(x.detach().cpu().numpy().reshape(-1), dtype=np.float64)  # noqa: E731
    inputs = {
        "household_kw": flat(exo.household_kw[:, house, :]),
        "pv_kw": flat(exo.pv_kw[:, house, :]),
        "temp_out_c": flat(exo.temp_out_c),
        "price_eur_per_kwh": flat(exo.price_per_kwh),
        "hour_of_day_h": np.tile(np.arange(steps, dtype=np.float64) * exo.dt_h, b),
    }
    if env.observe_voltage:
        vm = rollout.flow.vm_pu.detach()  # [B, T, n]
        prev = torch.ones(b, steps, dtype=vm.dtype)
        own = env.agent_voltages(vm.reshape(b * steps, -1))[fleet][:, agent].reshape(b, steps)
        prev[:, 1:] = own[:, :-1]
        inputs["v_prev_pu"] = flat(prev)
    states = rollout.fleets[fleet].states[:, :steps, agent]  # [B, T, S] at the start of each step
    for j, name in enumerate(state_names(model)):
        inputs[f"state_{name}"] = flat(states[..., j])
    return inputs


def _file_name(agent_id) -> str:
    return f"{AGENTS_DIR}/f{agent_id.fleet}_{agent_id.device_type}_{agent_id.index:04d}_bus{agent_id.bus}.onnx"


def _export_onnx(run, rollout, ids, out_dir: Path, progress) -> tuple[list[dict], float]:
    onnx, ort = need_onnx()
    env = run.world.env
    (out_dir / AGENTS_DIR).mkdir(parents=True, exist_ok=True)
    options = ort.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    entries, worst = [], 0.0
    for k, agent_id in enumerate(ids):
        f, i = agent_id.fleet, agent_id.index
        graph = AgentGraph(env.fleets[f].model, run.policies[f], i, dt_h=env.dt_h,
                           observe_voltage=env.observe_voltage).eval()
        names = graph.input_names()
        feeds = agent_inputs(env, rollout, f, i)
        file = _file_name(agent_id)
        _torch_export(graph, tuple(torch.from_numpy(feeds[n][:4]) for n in names), names, out_dir / file)
        model = onnx.load(out_dir / file)
        model.doc_string = (f"gridflex policy of agent {agent_id.name} ({agent_id.device_type} at bus "
                            f"{agent_id.bus}); see policy_contract.json")
        for key, value in (("agent", agent_id.name), ("scenario_sha256", run.loaded.sha256()),
                           ("gridflex_version", __version__)):
            entry = model.metadata_props.add()
            entry.key, entry.value = key, str(value)
        onnx.checker.check_model(model)
        onnx.save(model, out_dir / file)
        session = ort.InferenceSession(str(out_dir / file), options, providers=["CPUExecutionProvider"])
        set_point, _ = session.run(["set_point", "u"], {n: feeds[n] for n in names})
        expected = rollout.fleets[f].actions[:, :, i].detach().cpu().numpy().reshape(set_point.shape)
        diff = float(np.abs(set_point - expected).max())
        if not diff <= TOLERANCE:
            raise GridflexError(f"exported {file} disagrees with the trained policy by {diff:.3g} "
                                f"(> {TOLERANCE:g}) on the test days: a bug in the export of device "
                                f"type {agent_id.device_type!r} (its model cannot be viewed per agent?)")
        worst = max(worst, diff)
        entry = agent_entry(env, run.policies[f], agent_id, file)
        entry["opset"] = ONNX_OPSET
        entry["check_max_abs_diff"] = diff
        entries.append(entry)
        if progress is not None and (k + 1) % 40 == 0:
            progress(f"exported {k + 1}/{len(ids)} agents")
    return entries, worst


def _torch_export(graph, args, names, path: Path) -> None:
    """The PyTorch ONNX exporter, dynamic first dimension. The TorchScript-based exporter takes
    ~0.05 s an agent here against ~3 s for the dynamo one, which is used only where the former is
    gone."""
    outputs = ["set_point", "u"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            torch.onnx.export(graph, args, str(path), input_names=names, output_names=outputs,
                              opset_version=ONNX_OPSET, dynamo=False,
                              dynamic_axes={n: {0: "samples"} for n in names + outputs})
            return
        except (TypeError, RuntimeError, NotImplementedError):
            pass
        batch = torch.export.Dim("samples")
        torch.onnx.export(graph, args, str(path), input_names=names, output_names=outputs,
                          opset_version=ONNX_OPSET, dynamo=True,
                          dynamic_shapes=(tuple({0: batch} for _ in args),))


def _export_npz(run, rollout, ids, out_dir: Path) -> tuple[list[dict], float]:
    env = run.world.env
    arrays: dict[str, np.ndarray] = {}
    for f, deployable in enumerate(run.policies):
        policy = deployable.policy
        norm = policy.normaliser
        prefix = f"f{f}."
        arrays[prefix + "mean"] = norm.mean.detach().cpu().numpy()
        arrays[prefix + "var"] = norm.var.detach().cpu().numpy()
        arrays[prefix + "eps"] = np.array(norm.eps, dtype=np.float64)
        arrays[prefix + "clip"] = np.array(norm.clip, dtype=np.float64)
        for layer, (w, b) in enumerate(zip(policy.mlp.weights, policy.mlp.biases)):
            arrays[f"{prefix}W{layer}"] = w.detach().cpu().numpy()  # [N, in, out]
            arrays[f"{prefix}b{layer}"] = b.detach().cpu().numpy()  # [N, out]
        arrays[prefix + "n_layers"] = np.array(len(policy.mlp.weights))
        arrays[prefix + "activation"] = np.array(activation_name(policy))
        arrays[prefix + "squash"] = np.array(deployable.squash)
        arrays[prefix + "offset"] = np.array(float(deployable.offset), dtype=np.float64)
    np.savez(out_dir / WEIGHTS, **arrays)
    source = Path(__file__).with_name("numpy_reference.py")
    shutil.copyfile(source, out_dir / NUMPY_MODULE)
    module = load_numpy_module(out_dir / NUMPY_MODULE)
    weights = dict(np.load(out_dir / WEIGHTS, allow_pickle=False))
    diffs = []
    for f, traj in enumerate(rollout.fleets):
        u = module.act(weights, f, traj.observations.detach().cpu().numpy())
        diffs.append(np.abs(u - traj.u.detach().cpu().numpy()).reshape(-1, *u.shape[-2:]).max(axis=(0, 2)))  # [N]
    worst = float(max(d.max() for d in diffs))
    if not worst <= TOLERANCE:
        raise GridflexError(f"{WEIGHTS} with {NUMPY_MODULE} disagrees with the trained policy by {worst:.3g} "
                            f"(> {TOLERANCE:g}) on the test days: a bug in the numpy export")
    entries = []
    for agent_id in ids:
        entry = agent_entry(env, run.policies[agent_id.fleet], agent_id, WEIGHTS)
        entry["npz_prefix"] = f"f{agent_id.fleet}."
        entry["npz_row"] = agent_id.index
        entry["check_max_abs_diff"] = float(diffs[agent_id.fleet][agent_id.index])
        entries.append(entry)
    return entries, worst


def load_numpy_module(path: Path):
    """Import an export folder's ``policy_numpy.py`` (the shipped file itself, not gridflex's copy)."""
    spec = importlib.util.spec_from_file_location(f"gridflex_export_policy_{abs(hash(str(path)))}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
