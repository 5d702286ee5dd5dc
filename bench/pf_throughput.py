"""Power-flow throughput on IEEE 123: the OpenDSS engine in a loop vs gridflex ``ac3ph``.

Snapshots are independent random per-load factors in U(0.5, 1.3). Both engines solve to 1e-8 pu.
Prints one table; not a test. Examples::

    python bench/pf_throughput.py                         # CPU, float64, B = 1,000 and 10,000
    python bench/pf_throughput.py --device cuda --batch 1000 10000 100000

Rows: ``opendss`` (the engine, one snapshot at a time, single-threaded; it starts each solve from
the previous snapshot's voltages, its default), ``fwd`` (gridflex forward, cold start from the
no-load voltages), ``fwd+bwd`` (forward and the implicit backward of a scalar loss of all |V| and
the source power w.r.t. every load factor), ``fwd warm`` (warm start from the solution of a
snapshot 2% away, as in a time series).

Large feeders (issue 19): ``--method dense sparse`` builds the network once per method and
reports its set-up time (feeder from the warm cache + Grid + network) and a single snapshot's time
(B = 1, best of ``--repeats``) beside the batched rows, e.g. IEEE 8500 on a CPU::

    python bench/pf_throughput.py --feeder scenarios/feeders/outside/IEEETestCases/8500-Node/Master.dss \
        --method sparse dense --batch 256 --engine-solves 100 --vlimits-rule
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

from gridflex.shipped import builtin_feeder_path  # noqa: E402

FEEDER = builtin_feeder_path("ieee123")


def load_grid(path: Path, taps: str):
    """The project's Grid from the feeder cache (no engine needed) or, failing that, the engine's."""
    try:
        from gridflex.runs.feeder_cache import load_feeder
        from gridflex.network.grid_build import build_grid

        return build_grid(load_feeder(path, taps=taps)), "gridflex.runs.feeder_cache"
    except ImportError:
        from opendss_oracle import grid_from_engine

        return grid_from_engine(path), "opendss_oracle"


def timed(fn, device: torch.device, repeats: int) -> tuple[float, object]:
    """Best wall time of ``repeats`` calls (after one warm-up call) and the last result."""
    out = fn()
    best = float("inf")
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        out = fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
    return best, out


def opendss_rate(path: Path, scales: np.ndarray, tol: float) -> tuple[float, float] | None:
    """Solves/s and mean iterations of the engine looping over snapshots, or None without it."""
    try:
        from opendss_oracle import EngineCase
    except ImportError:
        return None
    try:
        case = EngineCase(path, tolerance=tol)
    except ImportError:
        return None
    iterations = []
    start = time.perf_counter()
    for row in scales:
        case.set_load_scale(row)
        case.circuit.Solution.Solve()
        iterations.append(case.circuit.Solution.Iterations)
    return len(scales) / (time.perf_counter() - start), float(np.mean(iterations))


def histogram(iterations: torch.Tensor) -> str:
    counts = np.bincount(iterations.cpu().numpy().ravel())
    return " ".join(f"{k}:{c}" for k, c in enumerate(counts) if c)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--batch", type=int, nargs="+", default=[1000, 10000], help="batch sizes")
    parser.add_argument("--dtype", default="float64", choices=["float64", "float32"])
    parser.add_argument("--tol", type=float, default=1e-8, help="convergence tolerance (pu)")
    parser.add_argument("--anderson-m", type=int, default=5)
    parser.add_argument("--chunk-rows", type=int, default=None, help="row chunk (default: 2048 on CPU)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--engine-solves", type=int, default=1000, help="snapshots for the OpenDSS loop")
    parser.add_argument("--feeder", type=Path, default=FEEDER)
    parser.add_argument("--taps", default="opendss", help="feeder taps mode (file or opendss)")
    parser.add_argument("--profile", action="store_true", help="print the top kernels of one fwd+bwd at the last batch")
    parser.add_argument("--method", nargs="+", default=["dense"], choices=["dense", "sparse"],
                        help="Z-bus products: dense inverse and/or sparse LU (each timed in turn)")
    parser.add_argument("--vlimits-rule", action="store_true", help="OpenDSS Vminpu/Vmaxpu load rule (as the engine)")
    args = parser.parse_args(argv)

    # the numerics directly (the plugin adds pydantic, which the GPU machine's image lacks)
    from gridflex.network.powerflow import build_network

    device = torch.device(args.device)
    start = time.perf_counter()
    grid, source = load_grid(args.feeder, args.taps)
    grid_seconds = time.perf_counter() - start
    dtype = {"float64": torch.float64, "float32": torch.float32}[args.dtype]
    rng = np.random.default_rng(0)
    n_loads = len(grid.load_elements)
    print(f"feeder {args.feeder.name} ({grid.n_nodes} nodes, grid from {source} in {grid_seconds:.2f} s); "
          f"device {device} ({torch.cuda.get_device_name(device) if device.type == 'cuda' else f'{torch.get_num_threads()} threads'}); "
          f"{args.dtype}; tol {args.tol:g} pu; anderson m={args.anderson_m}")
    engine = None
    if args.engine_solves > 0:
        engine = opendss_rate(args.feeder, rng.uniform(0.5, 1.3, (args.engine_solves, n_loads)), args.tol)
    if args.engine_solves <= 0:
        print(f"{'opendss':10s} {'-':>8s} {'skipped':>12s}           (--engine-solves 0)")
    elif engine is None:
        print(f"{'opendss':10s} {'-':>8s} {'skipped':>12s}           (the OpenDSS engine is not installed here)")
    else:
        print(f"{'opendss':10s} {args.engine_solves:8d} {engine[0]:12,.0f} {engine[1]:8.2f}  "
              f"(single-threaded loop: {1e3 / engine[0]:.2f} ms per snapshot)")
    for method in args.method:
        start = time.perf_counter()
        network = build_network(grid, dtype=dtype, device=device, method=method, vlimits_rule=args.vlimits_rule)
        build_seconds = time.perf_counter() - start
        print(f"--- method {method}: set-up {grid_seconds + build_seconds:.2f} s (grid {grid_seconds:.2f} s + "
              f"network {build_seconds:.2f} s), {network.n_iter} iterated nodes")
        chunk = args.chunk_rows or ((32 if method == "sparse" else 2048) if device.type == "cpu" else None)
        bench_method(args, network, grid, device, dtype, chunk, rng, engine)
        del network
    return 0


def bench_method(args, network, grid, device, dtype, chunk, rng, engine) -> None:
    """The rows of one network: single snapshot, then fwd / fwd+bwd / fwd warm per batch size."""
    from gridflex.network.powerflow import AdjointReport, SolveOptions, solve_power_flow

    options = SolveOptions(tol_pu=args.tol, anderson_m=args.anderson_m, chunk_rows=chunk)
    adjoint = AdjointReport()
    n_loads = len(grid.load_elements)

    def solve(load_scale, warm_start=None):
        return solve_power_flow(network, load_scale, warm_start=warm_start, options=options,
                                adjoint_report=adjoint)

    print(f"{'engine':10s} {'B':>8s} {'solves/s':>12s} {'mean it':>8s}  iteration histogram")
    one = torch.as_tensor(rng.uniform(0.5, 1.3, (1, n_loads)), dtype=dtype, device=device)
    with torch.no_grad():
        seconds, result = timed(lambda: solve(one), device, args.repeats)
    ratio = f"; {engine[0] * seconds:.2f}x the engine's time" if engine else ""
    print(f"{'single':10s} {1:8d} {1 / seconds:12,.0f} {result.iterations.double().mean():8.2f}  "
          f"{seconds * 1e3:.1f} ms per snapshot{ratio}")

    for batch in args.batch:
        scales = torch.as_tensor(rng.uniform(0.5, 1.3, (batch, n_loads)), dtype=dtype, device=device)

        def forward(s=scales, warm=None):
            with torch.no_grad():
                return solve(s, warm)

        def forward_backward(s=scales):
            s = s.clone().requires_grad_()
            result = solve(s)
            (result.vm_pu.sum() + result.source_power_kw.sum() / 1e3).backward()
            return result

        seconds, result = timed(forward, device, args.repeats)
        speedup = f", {batch / seconds / engine[0]:.1f}x the engine" if engine else ""
        print(f"{'fwd':10s} {batch:8d} {batch / seconds:12,.0f} {result.iterations.double().mean():8.2f}  "
              f"{histogram(result.iterations)}  (non-converged {result.n_nonconverged}; "
              f"{seconds / batch * 1e3:.2f} ms per snapshot{speedup})")
        seconds, _ = timed(forward_backward, device, args.repeats)
        print(f"{'fwd+bwd':10s} {batch:8d} {batch / seconds:12,.0f} {'':8s}  adjoint it max "
              f"{int(adjoint.iterations.max())}, residual max {float(adjoint.residual.max()):.1e}")
        previous = forward(scales * (1 + 0.02 * torch.randn_like(scales)))
        seconds, result = timed(lambda: forward(scales, previous), device, args.repeats)
        print(f"{'fwd warm':10s} {batch:8d} {batch / seconds:12,.0f} {result.iterations.double().mean():8.2f}  "
              f"{histogram(result.iterations)}")
        if args.profile and batch == args.batch[-1]:
            from torch.profiler import ProfilerActivity, profile

            activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
            with profile(activities=activities) as prof:
                forward_backward()
                if device.type == "cuda":
                    torch.cuda.synchronize()
            key = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
            print(prof.key_averages().table(sort_by=key, row_limit=18))
        del scales, result, previous
        if device.type == "cuda":
            torch.cuda.empty_cache()


if __name__ == "__main__":
    raise SystemExit(main())
