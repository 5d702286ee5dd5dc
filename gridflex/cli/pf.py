"""``gridflex pf``: one base-case power flow of a feeder with the exact ``ac3ph`` solver.

The result JSON is a contract other tools read::

    {"converged": bool, "iterations": int, "source_power_kw": float, "source_power_kvar": float,
     "losses_kw": float, "losses_kvar": float,
     "nodes": {"150r.1": {"vm_volts": float, "vm_pu": float, "va_deg": float}, ...},
     "lines": {"l115": {"i1_amps": [...], "i2_amps": [...]}, ...},
     "transformers": {"reg1a": {"i1_amps": [...], "i2_amps": [...]}, ...},
     "reactors": {"hvmv_sub_hsb": {"i1_amps": [...], "i2_amps": [...]}, ...}}

Node names are lower-case as OpenDSS prints them; every node of the feeder is present; ``vm_pu`` is
on the bus's line-to-neutral base; ``source_power_kw`` is positive when drawn from the source;
``iK_amps`` are the current magnitudes at each conductor of terminal K, for every terminal (a
3-winding transformer has ``i1_amps``, ``i2_amps`` and ``i3_amps``; a transformer winding's last
conductor is its neutral; lines include switches; a delta shunt reactor has only ``i1_amps``).
``--load-mult`` scales the loads OpenDSS's LoadMult scales: ``status=variable`` loads, on top of
the file's own LoadMult; fixed and exempt loads and generation keep their power. A power flow that does not converge writes ``{"converged": false,
"iterations": n}`` with no voltages and exits 3.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch

from gridflex.errors import ConvergenceError, UserError
from gridflex.scenario import resolve_feeder_file

EXIT_OK, EXIT_NOT_CONVERGED = 0, 3


def solve_feeder(
    feeder: str, load_mult: float, taps: str, device: str = "cpu", max_iter: int = 100
) -> dict[str, Any]:
    """Solve the base case of ``feeder`` (path or shipped name) and return the contract dict."""
    from gridflex.runs.feeder_cache import load_feeder
    from gridflex.network.grid_build import build_grid
    from gridflex.plugins.registry import load_registry
    from gridflex.runs.torch_device import resolve_device

    if not (math.isfinite(load_mult) and 0 < load_mult <= 100):
        raise UserError(f"--load-mult must be a finite number in (0, 100], got {load_mult}")
    path = resolve_feeder_file(feeder, Path.cwd())
    pm, registry = load_registry()
    grid = build_grid(load_feeder(path, taps=taps, registry_or_pm=pm))
    solver_cls = registry.get("solver", "ac3ph")
    if max_iter < 1:
        raise UserError(f"--max-iter must be at least 1, got {max_iter}")
    config = {"vlimits_rule": True, "max_iter": max_iter}
    solver = solver_cls(grid, config, device=resolve_device(device, "--device"))
    scale = torch.full((len(grid.load_elements),), float(load_mult), dtype=torch.float64)
    if grid.load_fixed is not None:  # status=fixed/exempt loads and generation: as OpenDSS's LoadMult
        scale[torch.as_tensor(grid.load_fixed, dtype=torch.bool)] = 1.0
    with torch.no_grad():
        result = solver.solve(load_scale=scale)
    converged = bool(result.converged)
    out: dict[str, Any] = {"converged": converged, "iterations": int(result.iterations)}
    if not converged:
        return out
    v_volts = result.v_volts().cpu().numpy()
    vm_pu = result.vm_pu.cpu().numpy()
    currents = result.branch_currents_a.abs().cpu().numpy()
    out.update(
        source_power_kw=float(result.source_power_kw),
        source_power_kvar=float(result.source_power_kvar),
        losses_kw=float(result.losses_kw),
        losses_kvar=float(result.losses_kvar),
        nodes={
            name: {
                "vm_volts": float(abs(v)),
                "vm_pu": float(m),
                "va_deg": float(np.degrees(np.angle(v))),
            }
            for name, v, m in zip(result.node_names, v_volts, vm_pu)
        },
        lines={},
        transformers={},
        reactors={},
    )
    groups = {"transformer": "transformers", "reactor": "reactors"}
    for branch in grid.branches:
        values = currents[result.branch_slices[branch.name]]
        per_terminal = len(values) // branch.n_terminals
        short = branch.name.split(".", 1)[1]
        out[groups.get(branch.kind, "lines")][short] = {
            f"i{k + 1}_amps": values[k * per_terminal : (k + 1) * per_terminal].tolist()
            for k in range(branch.n_terminals)
        }
    return out


def run_pf(
    feeder: str, load_mult: float, taps: str, json_out: Path | None, device: str, max_iter: int
) -> int:
    """The ``gridflex pf`` command: print a summary, optionally write the JSON; exit 3 if diverged."""
    result = solve_feeder(feeder, load_mult, taps, device, max_iter)
    if json_out is not None:
        json_out.parent.mkdir(parents=True, exist_ok=True)
        json_out.write_text(json.dumps(result, indent=1))
    if not result["converged"]:
        raise ConvergenceError(
            f"power flow of {feeder} at load multiplier {load_mult} did not converge in "
            f"{result['iterations']} iterations"
            + (f"; wrote {json_out} with converged=false" if json_out else "")
        )
    vm = [node["vm_pu"] for node in result["nodes"].values()]
    print(f"feeder        {feeder}  (taps {taps}, load multiplier {load_mult})")
    print(f"converged     True in {result['iterations']} iterations")
    print(f"source power  {result['source_power_kw']:.3f} kW  {result['source_power_kvar']:.3f} kvar")
    print(f"losses        {result['losses_kw']:.3f} kW  {result['losses_kvar']:.3f} kvar")
    print(f"|V|           {min(vm):.5f} - {max(vm):.5f} pu over {len(vm)} nodes")
    if json_out is not None:
        print(f"wrote         {json_out}")
    return EXIT_OK
