"""Plots of a run folder, made from its files (so they can be redrawn later): the validation
history of a training learner and the test-day voltage envelope of every controller.

    runs/<name>/<stamp>/plots/history.png           validation violation rate and cost vs clock
    runs/<name>/<stamp>/plots/voltage_envelope.png  min/max monitored |V| per hour, test days
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only; works without a display
    import matplotlib.pyplot as plt

    return plt


def _controllers(run_dir: Path) -> dict[str, Path]:
    """Controller name -> its folder (the run's learner first, then the reference controllers)."""
    import json

    found = {}
    for folder in [run_dir, *sorted((run_dir / "baselines").glob("*"))]:
        metrics = folder / "metrics.json"
        if metrics.is_file() and (folder / "schedules.npz").is_file():
            found[json.loads(metrics.read_text())["learner"]] = folder
    return found


def plot_voltage_envelope(run_dir: Path, out: Path) -> Path:
    """Per hour of day: lowest and highest monitored line-to-ground |V| over the test days."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 4.5))
    limits, treatment = None, "frozen"
    for name, folder in _controllers(run_dir).items():
        with np.load(folder / "schedules.npz", allow_pickle=False) as s:
            treatment = str(s["tap_treatment"]) if "tap_treatment" in s.files else treatment
            names = [str(n) for n in s["node_names"]]
            lg = [names.index(str(a)) for a, b in zip(s["monitor_node_a"], s["monitor_node_b"]) if not str(b)]
            vm = s["vm_pu"][..., lg]  # [days, steps, monitored]
            dt_h = float(s["dt_h"])
            limits = s["v_limits_pu"]
        hours = np.arange(vm.shape[1]) * dt_h
        low, high = vm.min(axis=(0, 2)), vm.max(axis=(0, 2))
        line, = ax.plot(hours, high, label=f"{name} (max)")
        ax.plot(hours, low, color=line.get_color(), linestyle="--", label=f"{name} (min)")
    if limits is not None:
        for v in limits:
            ax.axhline(float(v), color="k", linewidth=0.8)
    ax.set_xlabel("hour of day")
    ax.set_ylabel("monitored |V| (pu)")
    ax.set_title(f"Test days ({treatment} taps): voltage envelope")
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


def plot_history(history_csv: Path, out: Path, target: dict | None = None,
                 selected_wall_s: float | None = None) -> Path:
    """Validation violation rate and cost against the training clock, with the target's lines,
    the first point that met the target (dotted vertical line) and the selected checkpoint
    (``selected_wall_s``, a ring)."""
    plt = _pyplot()
    with history_csv.open() as fh:
        rows = list(csv.DictReader(fh))
    wall = [float(r["wall_s"]) for r in rows]
    fig, (ax_v, ax_c) = plt.subplots(1, 2, figsize=(10, 4))
    ax_v.plot(wall, [100 * float(r["val_violation_rate"]) for r in rows], marker="o")
    target = target or {}
    if target.get("max_violation_rate") is not None:
        ax_v.axhline(100 * target["max_violation_rate"], color="k", linewidth=0.8, label="target")
        ax_v.legend()
    ax_v.set_xlabel("training clock (s)")
    ax_v.set_ylabel("validation voltage violations (%)")
    ax_c.plot(wall, [float(r["val_cost_per_day"]) for r in rows], marker="o")
    if target.get("max_cost_per_day") is not None:
        ax_c.axhline(target["max_cost_per_day"], color="k", linewidth=0.8, label="target")
        ax_c.legend()
    ax_c.set_xlabel("training clock (s)")
    ax_c.set_ylabel("validation cost (per day)")
    met = next((float(r["wall_s"]) for r in rows if r.get("meets_target") == "1"), None)
    for ax, values in ((ax_v, [100 * float(r["val_violation_rate"]) for r in rows]),
                       (ax_c, [float(r["val_cost_per_day"]) for r in rows])):
        if met is not None:
            ax.axvline(met, color="tab:green", linestyle=":", label=f"target met ({met:.1f} s)")
        if selected_wall_s is not None and wall:
            k = int(np.argmin(np.abs(np.asarray(wall) - selected_wall_s)))
            ax.plot([wall[k]], [values[k]], "o", markersize=12, markerfacecolor="none",
                    markeredgecolor="tab:red", label="selected checkpoint")
        if met is not None or selected_wall_s is not None:
            ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


def write_plots(run_dir: Path) -> list[Path]:
    """Every plot the run folder's files allow; returns the files written."""
    import json

    plots = run_dir / "plots"
    plots.mkdir(exist_ok=True)
    written = [plot_voltage_envelope(run_dir, plots / "voltage_envelope.png")]
    history = run_dir / "history.csv"
    if history.is_file():
        metrics = json.loads((run_dir / "metrics.json").read_text())
        selected = (metrics.get("validation") or {}).get("wall_s")
        written.append(plot_history(history, plots / "history.png", metrics.get("target"),
                                    None if selected is None else float(selected)))
    return written
