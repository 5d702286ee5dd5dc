"""The report's pictures, except the feeder map: learning curves with bands over seeds, the
performance profile, the cost-violation scatter of all runs and the bus x hour voltage heatmap.
Every function writes one PNG (matplotlib, Agg backend) and returns its path.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from gridflex.report.collect import RunRecord, Section

CURVE_POINTS = 200
#: (history.csv column, axis label) of the learning curves' x axes.
CURVE_X = (("wall_s", "training clock (s)"), ("env_gradient_evaluations", "environment gradients"))
DETERMINISTIC_MARKERS = ("X", "D", "s", "^", "v", "P", "*", "h")


def pyplot():
    """matplotlib.pyplot on the Agg backend (files only; no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save(plt, fig, out: Path) -> Path:
    """Lay out, write ``out`` (PNG, 110 dpi) and close ``fig``."""
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def colours(names: list[str]) -> dict[str, str]:
    """One stable colour per learner name (tab10 in the given order)."""
    cycle = [f"C{k}" for k in range(10)]
    return {name: cycle[k % 10] for k, name in enumerate(names)}


def step_curve(rows: list[dict], x_key: str, y_key: str, grid: np.ndarray) -> np.ndarray:
    """A run's validation value ``y_key`` on ``grid`` ``[G]`` (units of ``x_key``): the value of
    the latest validation point at or before each grid point, NaN before the run's first point and
    after its last."""
    points = [(r[x_key], r[y_key]) for r in rows if r.get(x_key) is not None and r.get(y_key) is not None]
    out = np.full(grid.shape, np.nan)
    if not points:
        return out
    x, y = (np.asarray(v, dtype=float) for v in zip(*sorted(points, key=lambda p: p[0])))
    k = np.searchsorted(x, grid, side="right") - 1
    inside = (k >= 0) & (grid <= x[-1])
    out[inside] = y[k[inside]]
    return out


def learning_curves(section: Section, out: Path, colour: dict[str, str]) -> Path | None:
    """2 x 2 panels: validation voltage violations (%) and validation cost (EUR/day) against the
    training clock and against environment gradients; per training learner the median over its
    runs (line) and the interquartile range (band) on a common grid of :data:`CURVE_POINTS`
    points, over the runs still running at that point; the target as a black line."""
    training = {n: [r for r in runs if r.history] for n, runs in section.learners.items()}
    training = {n: runs for n, runs in training.items() if runs}
    if not training:
        return None
    axes_x = [(x_key, label) for x_key, label in CURVE_X
              if any((r.get(x_key) or 0.0) > 0 for runs in training.values() for run in runs for r in run.history)]
    if not axes_x:
        return None
    plt = pyplot()
    fig, axes = plt.subplots(2, len(axes_x), figsize=(5.5 * len(axes_x), 7), squeeze=False)
    for col, (x_key, x_label) in enumerate(axes_x):  # a learner without env gradients (RL): clock only
        top = max((r[x_key] or 0.0) for runs in training.values() for run in runs for r in run.history)
        grid = np.linspace(0.0, top if top > 0 else 1.0, CURVE_POINTS)
        for row, (y_key, scale) in enumerate((("val_violation_rate", 100.0), ("val_cost_per_day", 1.0))):
            ax = axes[row, col]
            for name, runs in training.items():
                if not any((r.get(x_key) or 0.0) > 0 for run in runs for r in run.history):
                    continue  # e.g. an RL learner on the environment-gradient axis
                curves = np.array([step_curve(r.history, x_key, y_key, grid) for r in runs]) * scale
                alive = np.isfinite(curves).any(axis=0)
                if not alive.any():
                    continue
                with np.errstate(all="ignore"):
                    q25, q50, q75 = np.nanquantile(curves[:, alive], [0.25, 0.5, 0.75], axis=0)
                ax.plot(grid[alive], q50, color=colour[name], label=f"{name} (n={len(runs)})")
                ax.fill_between(grid[alive], q25, q75, color=colour[name], alpha=0.2, linewidth=0)
            bound = section.target.get("max_violation_rate" if row == 0 else "max_cost_per_day")
            if bound is not None:
                ax.axhline(bound * scale, color="k", linewidth=0.9, linestyle="--", label="target")
            ax.set_xlabel(x_label)
            ax.set_ylabel("validation voltage violations (%)" if row == 0 else "validation cost (EUR/day)")
            ax.grid(alpha=0.3)
    axes[0, 0].legend(fontsize=8)
    fig.suptitle("Learning curves: median and interquartile range over seeds", fontsize=11)
    return save(plt, fig, out)


def performance_profile(profiles: dict, out: Path, colour: dict[str, str]) -> Path | None:
    """Fraction of runs that met the target within tau, against training seconds and against
    environment gradients, with the 95 % bootstrap band (``profiles``: the report.json entry of
    :func:`gridflex.report.aggregate.performance_profiles`)."""
    if not profiles:
        return None
    plt = pyplot()
    fig, axes = plt.subplots(1, len(profiles), figsize=(5.5 * len(profiles), 3.8), squeeze=False)
    labels = {"time_to_target_s": "tau: training clock (s)", "gradients_to_target": "tau: environment gradients"}
    for ax, (key, profile) in zip(axes[0], profiles.items()):
        tau = np.asarray(profile["tau"])
        for name, curve in profile["learners"].items():
            ax.step(tau, curve["fraction"], where="post", color=colour[name], label=f"{name} (n={curve['n']})")
            ax.fill_between(tau, curve["ci_low"], curve["ci_high"], step="post", color=colour[name], alpha=0.15,
                            linewidth=0)
        ax.set_xlabel(labels.get(key, key))
        ax.set_ylabel("fraction of runs at target")
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle("Performance profile of time to target (95 % bootstrap band)", fontsize=11)
    return save(plt, fig, out)


def cost_violation_scatter(section: Section, values: dict[str, list[dict]], out: Path,
                           colour: dict[str, str]) -> Path:
    """Test cost (EUR/day) against test voltage violations (%) of every run: a dot per seed of a
    learner that trains, a large marker per deterministic controller. ``values``: learner -> its
    runs' metric values (:func:`gridflex.report.aggregate.run_values`)."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    markers = iter(DETERMINISTIC_MARKERS * 4)
    for name, runs in section.learners.items():
        x = [v["test_cost_per_day"] for v in values[name]]
        y = [100 * v["test_violation_rate"] for v in values[name]]
        if any(r.trains for r in runs):
            ax.scatter(x, y, color=colour[name], s=28, alpha=0.8, label=f"{name} ({len(runs)} seeds)")
        else:
            ax.scatter(x, y, color=colour[name], s=110, marker=next(markers), edgecolor="k", label=name)
    ax.set_xlabel("test cost (EUR/day)")
    ax.set_ylabel("test voltage violations (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title("Every run on the test days (lower left is better)", fontsize=10)
    return save(plt, fig, out)


def bus_voltages(schedules) -> tuple[list[str], np.ndarray, tuple[float, float]]:
    """From an open ``schedules.npz``: bus names ``[nb]``, per bus the monitored line-to-ground
    ``|V|`` (pu) farthest from the middle of the voltage band ``[B, T, nb]``, and the band
    ``(v_min, v_max)`` (pu)."""
    names = [str(n) for n in schedules["node_names"]]
    monitored = [names.index(str(a)) for a, b in zip(schedules["monitor_node_a"], schedules["monitor_node_b"])
                 if not str(b)]
    v_min, v_max = (float(v) for v in schedules["v_limits_pu"])
    centre = 0.5 * (v_min + v_max)
    vm = np.asarray(schedules["vm_pu"], dtype=float)[..., monitored]  # [B, T, M]
    buses = sorted({names[k].rsplit(".", 1)[0] for k in monitored})
    out = np.empty(vm.shape[:2] + (len(buses),))
    for j, bus in enumerate(buses):
        cols = [i for i, k in enumerate(monitored) if names[k].rsplit(".", 1)[0] == bus]
        block = vm[..., cols]
        far = np.argmax(np.abs(block - centre), axis=-1)
        out[..., j] = np.take_along_axis(block, far[..., None], axis=-1)[..., 0]
    return buses, out, (v_min, v_max)


def voltage_norm(v_limits_pu: tuple[float, float], values: list[np.ndarray]):
    """A colour scale centred in the voltage band, symmetric, wide enough for every value and at
    least twice the band's half-width (diverging colormap ``RdBu_r``: blue low, red high)."""
    import matplotlib.colors as mcolors

    centre, half = 0.5 * sum(v_limits_pu), 0.5 * (v_limits_pu[1] - v_limits_pu[0])
    spread = max([2 * half] + [float(np.nanmax(np.abs(v - centre))) for v in values if np.isfinite(v).any()])
    return mcolors.Normalize(vmin=centre - spread, vmax=centre + spread)


def voltage_heatmaps(panels: dict[str, tuple[list[str], np.ndarray, float]], v_limits_pu: tuple[float, float],
                     day: int, out: Path) -> Path | None:
    """One bus x hour heatmap of ``|V|`` (pu) per controller for test day ``day``; ``panels``:
    controller label -> (bus names, ``[T, nb]`` voltages, step length h). One colour scale for all."""
    if not panels:
        return None
    plt = pyplot()
    norm = voltage_norm(v_limits_pu, [v for _, v, _ in panels.values()])
    n = len(panels)
    cols = min(n, 3)
    rows = -(-n // cols)
    n_bus = max(len(b) for b, _, _ in panels.values())
    fig, axes = plt.subplots(rows, cols, figsize=(4.6 * cols, 0.8 + max(2.6, 0.16 * n_bus) * rows), squeeze=False,
                             layout="constrained")
    image = None
    for ax, (label, (buses, v, dt_h)) in zip(axes.flat, panels.items()):
        hours = v.shape[0] * dt_h
        image = ax.imshow(v.T, aspect="auto", cmap="RdBu_r", norm=norm, interpolation="nearest",
                          extent=(0, hours, len(buses) - 0.5, -0.5))
        ax.set_yticks(range(len(buses)))
        ax.set_yticklabels(buses, fontsize=6 if len(buses) > 20 else 7)
        ax.set_xlabel("hour of day")
        ax.set_title(label, fontsize=9)
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    bar = fig.colorbar(image, ax=axes, shrink=0.8)
    bar.set_label("|V| (pu): the monitored phase farthest from the band's middle")
    for v in v_limits_pu:
        bar.ax.axhline(v, color="k", linewidth=1.2)
    fig.suptitle(f"Bus x hour voltage, test day {day} (black ticks on the scale: the voltage band)", fontsize=10)
    fig.savefig(out, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return out


def day_violation_rates(schedules) -> np.ndarray:
    """Share of monitored line-to-ground node-steps outside the band, per test day ``[B]``."""
    _, v, (v_min, v_max) = bus_voltages(schedules)
    return ((v < v_min) | (v > v_max)).mean(axis=(1, 2))


def first_with_schedules(runs: list[RunRecord]) -> RunRecord | None:
    """The first run (seed order) whose ``schedules.npz`` exists."""
    return next((r for r in runs if r.schedules is not None), None)
