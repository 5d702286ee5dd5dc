#!/usr/bin/env python3
"""float32 against float64 on every shipped feeder: the table of docs/network.md, "Precision".

For each feeder and Z-bus method, random load factors and device injections at every load node
(sized by the feeder's mean load per node), solved in float64 (refined inverse and no-load
voltage, tolerance 1e-12) and in float32 (the solver's float32 defaults). Prints the largest
|V| difference (pu), the largest branch-current error relative to the branch's largest current
(1 A floor) with the branch, and the largest source-power error (relative); ``--plain`` also
shows the currents formed from float32 voltages (what float32 gave before the wide evaluation).

    python bench/float32_accuracy.py [--samples 16] [--plain]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from gridflex.network.grid_build import GridAssembler
from gridflex.network.powerflow import SolveOptions, build_network, solve_power_flow, zbus
from gridflex.runs.feeder_cache import load_feeder
from gridflex.scenario.loading import resolve_feeder_file
from gridflex.shipped import BUILTIN_FEEDERS

REFERENCE = SolveOptions(tol_pu=1e-12, max_iter=200)
FLOAT32 = SolveOptions(tol_pu=1e-6, adjoint_tol=1e-5)
MAX_SCALE = {"ieee34mod1": 1.1, "ieee34mod2": 1.1, "ieee8500": 1.1}
SPARSE_ONLY = {"ieee8500"}


def current_error(grid, ref: torch.Tensor, got: torch.Tensor, slices) -> tuple[float, str]:
    worst, where = 0.0, ""
    for branch in grid.branches:
        s = slices[branch.name]
        size = ref[..., s].abs().amax(-1).clamp_min(1.0)
        err = float(((ref[..., s] - got[..., s].to(torch.complex128)).abs().amax(-1) / size).max())
        if err > worst:
            worst, where = err, branch.name
    return worst, where


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=16)
    parser.add_argument("--plain", action="store_true", help="also the plain float32 currents")
    args = parser.parse_args()
    print("| feeder | method | converged | max abs(V) diff (pu) | max current error (rel.) | at | "
          "source power error (rel.) |" + (" plain float32 current error |" if args.plain else ""))
    print("|---|---|---|---|---|---|---|" + ("---|" if args.plain else ""))
    for name in sorted(BUILTIN_FEEDERS):
        feeder = load_feeder(resolve_feeder_file(name, base_dir=Path.cwd()), taps="file")
        grid = GridAssembler(feeder).grid().with_load_model("constant_pq")
        for method in ("sparse",) if name in SPARSE_ONLY else ("dense", "sparse"):
            ref_net = build_network(grid, dtype=torch.float64, precise=True, method=method)
            net = build_network(grid, dtype=torch.float32, method=method)
            rng = np.random.default_rng(0)
            per_node_kw = float(np.sum(grid.load_p_kw)) / net.n_inj
            shape = (args.samples, net.n_inj)
            scale = torch.as_tensor(rng.uniform(0.3, MAX_SCALE.get(name, 1.5), (args.samples, net.n_loads)))
            p_kw = torch.as_tensor(rng.uniform(-0.4, 0.6, shape) * per_node_kw)
            q_kvar = torch.as_tensor(rng.uniform(-0.15, 0.15, shape) * per_node_kw)
            ref = solve_power_flow(ref_net, scale, p_kw, q_kvar, options=REFERENCE)
            got = solve_power_flow(net, scale.float(), p_kw.float(), q_kvar.float(), options=FLOAT32)
            ok = ref.converged & got.converged
            dv = float((ref.v_pu.abs() - got.v_pu.abs().double())[ok].abs().max())
            di, where = current_error(grid, ref.branch_currents_a[ok], got.branch_currents_a[ok], ref.branch_slices)
            s_ref = torch.complex(ref.source_power_kw, ref.source_power_kvar)[ok]
            s_got = torch.complex(got.source_power_kw.double(), got.source_power_kvar.double())[ok]
            ds = float(((s_ref - s_got).abs() / s_ref.abs()).max())
            row = (f"| {name} | {method} | {int(ok.sum())}/{args.samples} | {dv:.1e} | {di:.1e} | {where} | "
                   f"{ds:.1e} |")
            if args.plain:
                plain = zbus.terminal_currents_a(net, got.v_pu)
                row += f" {current_error(grid, ref.branch_currents_a[ok], plain[ok], ref.branch_slices)[0]:.1e} |"
            print(row, flush=True)


if __name__ == "__main__":
    main()
