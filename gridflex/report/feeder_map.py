"""Feeder maps: one small map per controller, buses at the feeder's coordinates coloured by their
worst voltage over the test days, branches (lines, transformers) overloaded at some step drawn thick and red.

Drawn from a run's ``schedules.npz`` alone (the keys ``bus_names``, ``bus_xy``, ``branch_bus_a``,
``branch_bus_b``, ``branch_max_loading`` of :func:`gridflex.runs.evaluate.save_schedules`); files
written before those keys existed give no map (:func:`map_data` returns None with the reason).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from gridflex.report.figures import bus_voltages, pyplot, voltage_norm

MAP_KEYS = ("bus_names", "bus_xy", "branch_bus_a", "branch_bus_b", "branch_max_loading")


@dataclass
class MapData:
    """One controller's map: bus coordinates ``xy[nb, 2]`` (the feeder's units; NaN: none),
    ``worst_v_pu[nb]`` (the monitored |V| farthest from the band's middle over all test days and
    steps; NaN: bus not monitored), branch endpoints as bus indices ``[n_br, 2]`` (-1: none) and
    ``max_loading[n_br]`` (largest |I| / I_rated; NaN: not rated)."""

    buses: list[str]
    xy: np.ndarray
    worst_v_pu: np.ndarray
    branch_ends: np.ndarray
    max_loading: np.ndarray
    v_limits_pu: tuple[float, float]


def map_data(schedules_path: Path) -> tuple[MapData | None, str]:
    """The map of one ``schedules.npz``, or (None, why not)."""
    with np.load(schedules_path, allow_pickle=False) as s:
        missing = [k for k in MAP_KEYS if k not in s.files]
        if missing:
            return None, (f"{schedules_path} predates the feeder-map fields ({', '.join(missing)}); "
                          "re-run to get a map")
        buses = [str(b) for b in s["bus_names"]]
        xy = np.asarray(s["bus_xy"], dtype=float)
        if not np.isfinite(xy).all(axis=1).any():
            return None, "the feeder gives no bus coordinates"
        monitored, v, limits = bus_voltages(s)
        centre = 0.5 * sum(limits)
        flat = v.reshape(-1, v.shape[-1])
        worst = flat[np.argmax(np.abs(flat - centre), axis=0), np.arange(flat.shape[1])]
        worst_v = np.full(len(buses), np.nan)
        index = {b: k for k, b in enumerate(buses)}
        for bus, value in zip(monitored, worst):
            worst_v[index[bus]] = value
        ends = np.array([[index.get(str(a), -1), index.get(str(b), -1)]
                         for a, b in zip(s["branch_bus_a"], s["branch_bus_b"])], dtype=int).reshape(-1, 2)
        return MapData(buses, xy, worst_v, ends, np.asarray(s["branch_max_loading"], dtype=float), limits), ""


def feeder_maps(maps: dict[str, MapData], out: Path) -> Path | None:
    """Small multiples, one map per controller, one colour scale (centred in the band)."""
    if not maps:
        return None
    plt = pyplot()
    first = next(iter(maps.values()))
    norm = voltage_norm(first.v_limits_pu, [m.worst_v_pu for m in maps.values()])
    cols = min(len(maps), 3)
    rows = -(-len(maps) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.9 * rows), squeeze=False, layout="constrained")
    points = None
    for ax, (label, m) in zip(axes.flat, maps.items()):
        for (a, b), loading in zip(m.branch_ends, m.max_loading):
            if a < 0 or b < 0 or not (np.isfinite(m.xy[a]).all() and np.isfinite(m.xy[b]).all()):
                continue
            hot = bool(np.isfinite(loading) and loading > 1.0)
            ax.plot(*zip(m.xy[a], m.xy[b]), color="tab:red" if hot else "0.55", linewidth=3.2 if hot else 1.0,
                    zorder=1)
        seen = np.isfinite(m.xy).all(axis=1)
        quiet = seen & ~np.isfinite(m.worst_v_pu)
        ax.scatter(m.xy[quiet, 0], m.xy[quiet, 1], s=10, color="0.75", zorder=2)
        shown = seen & np.isfinite(m.worst_v_pu)
        points = ax.scatter(m.xy[shown, 0], m.xy[shown, 1], c=m.worst_v_pu[shown], cmap="RdBu_r", norm=norm,
                            s=46, edgecolor="k", linewidth=0.5, zorder=3)
        if len(m.buses) <= 40:  # names readable on a small map
            for k in np.flatnonzero(seen):
                ax.annotate(m.buses[k], m.xy[k], fontsize=6, color="0.3", xytext=(3, 3), textcoords="offset points")
        overloaded = int(np.sum(np.isfinite(m.max_loading) & (m.max_loading > 1.0)))
        ax.set_title(f"{label}: {overloaded} overloaded branch(es)", fontsize=9)
        ax.set_aspect("equal", adjustable="datalim")
        ax.set_xticks([])
        ax.set_yticks([])
    for ax in list(axes.flat)[len(maps):]:
        ax.axis("off")
    if points is not None:
        bar = fig.colorbar(points, ax=axes, shrink=0.8)
        bar.set_label("worst |V| over the test days (pu)")
        for v in first.v_limits_pu:
            bar.ax.axhline(v, color="k", linewidth=1.2)
    fig.suptitle("Feeder maps (grey dots: buses not monitored; thick red: a line or transformer above its rating at some step)",
                 fontsize=10)
    fig.savefig(out, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return out
