"""``gridflex verify RUN_DIR``: replay a run's test-day schedules in OpenDSS, compare metrics.

The OpenDSS engine is an independent oracle here: it re-solves every (day, step) of the run's
test schedule under the scenario's tap treatment (``schedules.npz``: spot-load multipliers, net
nodal injections of households' PV and all devices, the fixed taps or, when regulated, every
step's taps) and gridflex reports the voltage metrics and source power
from both engines side by side. Loads are set exactly as gridflex modelled them (constant power
with wide Vminpu/Vmaxpu for ``load_model: constant_pq``); device and PV injections enter as
single-phase constant-power loads (negative kW = injection) at their nodes. Both engines' voltage
metrics are computed by :func:`gridflex.learning.metrics.voltage_violation_metrics`, the definition
the run's own ``metrics.json`` uses (a snapshot the engine did not converge counts as violated).
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import numpy as np

from gridflex.errors import UserError
from gridflex.learning.metrics import voltage_violation_metrics
from gridflex.progress import Progress

SCHEDULE_FILE = "schedules.npz"


def _engine():
    try:
        import dss
    except ImportError:
        raise UserError(
            "gridflex verify needs the OpenDSS engine (the test oracle): pip install dss-python"
        ) from None
    return dss


def _monitored_magnitudes(v: np.ndarray, names: list[str], node_a, node_b) -> np.ndarray:
    index = {n: k for k, n in enumerate(names)}
    a = np.array([index[n] for n in node_a])
    out = np.abs(v[..., a])
    for k, partner in enumerate(node_b):
        if partner:
            out[..., k] = np.abs(v[..., a[k]] - v[..., index[partner]]) / math.sqrt(3.0)
    return out


def voltage_metrics(vm_pu: np.ndarray, limits: tuple[float, float], dt_h: float,
                    converged: np.ndarray | None = None) -> dict:
    """The metrics module's voltage metrics of monitored magnitudes ``vm_pu [days, steps,
    monitored]`` (pu) with ``limits`` (pu) and steps of ``dt_h`` hours, plus the extreme magnitudes
    ``min_vm_pu``/``max_vm_pu`` (pu); ``converged [days, steps]`` as in
    :func:`~gridflex.learning.metrics.voltage_violation_metrics`."""
    return {**voltage_violation_metrics(vm_pu, limits, dt_h, converged),
            "min_vm_pu": float(vm_pu.min()),
            "max_vm_pu": float(vm_pu.max())}


def replay(run_dir: Path, tolerance: float = 1e-8, progress: bool = True) -> dict:
    """Re-solve the run's schedule in OpenDSS; returns both engines' metrics and differences."""
    path = Path(run_dir) / SCHEDULE_FILE
    if not path.is_file():
        hint = ""
        if (Path(run_dir) / "comparison.json").is_file():
            runs = sorted(p.parent for p in Path(run_dir).glob(f"*/seed*/{SCHEDULE_FILE}"))
            hint = (" This is a `gridflex compare` folder: verify one of its runs, "
                    f"DIR/<learner>/seed<N>, e.g. {runs[0]}" if runs else
                    " This is a `gridflex compare` folder: verify one of its runs, DIR/<learner>/seed<N>")
        raise UserError(f"{path} not found: RUN_DIR must be the output folder of `gridflex run`.{hint}")
    s = np.load(path, allow_pickle=False)
    dss = _engine()
    from gridflex.runs.feeder_cache import load_feeder

    feeder_file = str(s["feeder_file"])
    feeder = load_feeder(feeder_file, taps=str(s["taps_mode"]))
    ctx = dss.DSS.NewContext()
    ctx.AllowChangeDir = False
    text = ctx.Text
    text.Command = f'compile "{feeder_file}"'
    text.Command = "set controlmode=off"
    text.Command = f"set tolerance={tolerance:g}"
    text.Command = "set maxiterations=200"
    def set_taps(positions) -> None:
        for name, step in zip(s["taps_names"], positions):
            transformer = feeder.transformer(str(name))
            tap_winding = next(rc.tap_winding for rc in feeder.regcontrols if rc.transformer == str(name))
            tap_pu = transformer.windings[tap_winding - 1].tap_pu_at(int(step))
            text.Command = f"Transformer.{name}.wdg={tap_winding} Tap={tap_pu:.8f}"

    set_taps(s["taps"])
    taps_per_step = s["taps_per_step"] if "taps_per_step" in s.files else None  # regulated treatment
    if str(s["load_model"]) == "constant_pq":
        text.Command = "BatchEdit Load..* model=1"
    text.Command = "BatchEdit Load..* vminpu=0.3 vmaxpu=3.0"
    names = [str(n) for n in s["node_names"]]
    v_base = s["v_base_v"]
    for k, node in enumerate(s["injection_nodes"]):
        bus, phase = str(node).rsplit(".", 1)
        kv = v_base[names.index(str(node))] / 1e3
        text.Command = (f"New Load.gfx_inj{k} bus1={bus}.{phase} phases=1 conn=wye kV={kv:.6f} "
                        "kW=0 kvar=0 model=1 vminpu=0.3 vmaxpu=3.0")
    circuit = ctx.ActiveCircuit
    loads = circuit.Loads
    index = {name.lower(): k + 1 for k, name in enumerate(loads.AllNames)}  # Loads.idx is 1-based
    spot_idx = [index[str(load).split(".", 1)[1]] for load in s["load_elements"]]
    inj_idx = [index[f"gfx_inj{k}"] for k in range(len(s["injection_nodes"]))]
    nominal = []
    for idx in spot_idx:
        loads.idx = idx
        nominal.append((loads.kW, loads.kvar))
    engine_names = [n.lower() for n in circuit.AllNodeNames]
    order = np.array([engine_names.index(n) for n in names])
    days, steps = s["p_kw"].shape[:2]
    v_engine = np.zeros((days, steps, len(names)), dtype=complex)
    p_source = np.zeros((days, steps))
    engine_converged = np.ones((days, steps), dtype=bool)
    t0 = time.perf_counter()
    bar = Progress("replaying in OpenDSS", days, "days", enabled=progress)
    for d in range(days):
        bar.step(d, f"day {d + 1} of {days}")
        for t in range(steps):
            for l, idx in enumerate(spot_idx):
                loads.idx = idx
                kw, kvar = nominal[l]
                loads.kW = kw * float(s["load_scale"][d, t, l])  # kW first: it resets kvar
                loads.kvar = kvar * float(s["load_scale"][d, t, l])
            for k, idx in enumerate(inj_idx):
                loads.idx = idx
                loads.kW = float(s["p_kw"][d, t, k])
                loads.kvar = float(s["q_kvar"][d, t, k])
            if taps_per_step is not None:
                set_taps(taps_per_step[d, t])
            circuit.Solution.Solve()
            engine_converged[d, t] = bool(circuit.Solution.Converged)
            volts = np.asarray(circuit.AllBusVolts)
            v_engine[d, t] = (volts[0::2] + 1j * volts[1::2])[order] / v_base
            p_source[d, t] = -circuit.TotalPower[0]
    engine_seconds = time.perf_counter() - t0
    failed = int((~engine_converged).sum())
    bar.step(days)
    bar.close(f"{days * steps} snapshots, {failed} not converged")
    node_a = [str(n) for n in s["monitor_node_a"]]
    node_b = [str(n) for n in s["monitor_node_b"]]
    vm_engine = _monitored_magnitudes(v_engine, names, node_a, node_b)
    vm_gridflex = s["vm_pu"]
    vm_ours = _monitored_magnitudes(vm_gridflex.astype(complex), names, node_a, [""] * len(node_b))
    # gridflex's stored |V| are line-to-ground; recompute the line-to-line ones from the engine
    # side only where the monitor needs phase angles, so compare at line-to-ground nodes.
    lg = np.array([not b for b in node_b])
    limits = tuple(float(x) for x in s["v_limits_pu"])
    dt_h = float(s["dt_h"])
    ours_metrics = voltage_metrics(vm_ours[..., lg], limits, dt_h)
    engine_metrics = voltage_metrics(vm_engine[..., lg], limits, dt_h, engine_converged)
    return {
        "run_dir": str(run_dir),
        "days": int(days),
        "steps": int(steps),
        "engine": f"OpenDSS (dss-python {getattr(dss, '__version__', '?')})",
        "engine_tolerance": tolerance,
        "engine_nonconverged": failed,
        "engine_seconds": engine_seconds,
        "max_abs_vm_difference_pu": float(np.abs(np.abs(v_engine) - vm_gridflex).max()),
        "max_rel_source_power_difference": float(
            np.abs(p_source - s["source_power_kw"]).max() / np.abs(s["source_power_kw"]).max()
        ),
        "monitored_line_to_ground_nodes": int(lg.sum()),
        "gridflex": ours_metrics,
        "opendss": engine_metrics,
    }


def print_report(report: dict) -> None:
    print(f"replayed {report['days']} test days x {report['steps']} steps of {report['run_dir']} "
          f"in {report['engine']} ({report['engine_seconds']:.1f} s, "
          f"{report['engine_nonconverged']} non-converged)")
    print(f"max | |V| gridflex - |V| OpenDSS | = {report['max_abs_vm_difference_pu']:.2e} pu; "
          f"max relative source-power difference {report['max_rel_source_power_difference']:.2e}")
    keys = list(report["gridflex"])
    width = max(len(k) for k in keys)
    print(f"{'metric'.ljust(width)}  {'gridflex':>12}  {'OpenDSS':>12}")
    for key in keys:
        print(f"{key.ljust(width)}  {report['gridflex'][key]:>12.6g}  {report['opendss'][key]:>12.6g}")


def run_verify(run_dir: Path, json_out: Path | None = None) -> int:
    report = replay(run_dir)
    print_report(report)
    if json_out is not None:
        json_out.write_text(json.dumps(report, indent=2))
    return 0
