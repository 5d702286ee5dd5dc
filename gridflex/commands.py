"""Implementations of the CLI sub-commands (kept apart from argument parsing)."""

from __future__ import annotations

import argparse
import json
import sys

from gridflex.errors import UserError
from gridflex.plugins import load_registry
from gridflex.scenario import load_scenario, scenario_json_schema

EXIT_OK, EXIT_USER = 0, 2


def cmd_validate(args: argparse.Namespace) -> int:
    _, registry = load_registry()
    failures = 0
    for path in args.scenarios:
        try:
            loaded = load_scenario(path, args.override, registry)
        except UserError as exc:
            failures += 1
            print(f"gridflex: error: {exc}", file=sys.stderr)
            continue
        print(f"{path}: ok (scenario {loaded.config.name!r}, sha256 {loaded.sha256()[:12]})")
    return EXIT_USER if failures else EXIT_OK


def cmd_plugins(args: argparse.Namespace) -> int:
    pm, registry = load_registry()
    by_plugin: dict[str, list] = {}
    for kind_components in registry.components.values():
        for info in kind_components.values():
            by_plugin.setdefault(info.plugin, []).append(info)
    dists = pm.distributions
    rows = []
    for plugin_name in sorted(name for name in (pm.get_name(p) for p in pm.get_plugins()) if name):
        infos = by_plugin.get(plugin_name, [])
        dist = dists.get(plugin_name)
        rows.append(
            (
                plugin_name,
                ",".join(sorted({i.kind for i in infos})) or "-",
                dist.metadata["name"] if dist else "-",
                dist.version if dist else "-",
                ", ".join(sorted(i.name for i in infos)) or "-",
            )
        )
    _print_table(("plugin", "kind", "distribution", "version", "components"), rows)
    blocked = sorted(name for name in _blocked(pm))
    if blocked:
        print(f"\nblocked: {', '.join(blocked)}")
    return EXIT_OK


def _blocked(pm) -> list[str]:
    from gridflex.plugins import blocked_plugin_names

    return [name for name in blocked_plugin_names() if pm.is_blocked(name)]


def _print_table(header: tuple[str, ...], rows: list[tuple[str, ...]]) -> None:
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    print(fmt.format(*header))
    print(fmt.format(*("-" * w for w in widths)))
    for row in rows:
        print(fmt.format(*row))


def cmd_schema(args: argparse.Namespace) -> int:
    registry = None if args.no_components else load_registry()[1]
    json.dump(scenario_json_schema(registry), sys.stdout, indent=2, sort_keys=True)
    sys.stdout.write("\n")
    return EXIT_OK


def cmd_run(args: argparse.Namespace) -> int:
    from gridflex.run import plan_run

    overrides = list(args.override)
    if args.device:
        overrides.append(f"device={args.device}")
    pm, registry = load_registry()
    loaded = load_scenario(args.scenario, overrides, registry)
    plan = plan_run(loaded, registry, pm)
    print(plan.describe())
    if loaded.config.learner is None:
        if args.out is not None:
            written = plan.write(args.out)
            print(f"wrote {', '.join(str(p) for p in written)}")
        return EXIT_OK
    from gridflex.run import default_out_dir, execute_run, results_table

    out_dir = args.out or default_out_dir(loaded.config.name)
    plan.write(out_dir)
    documents = execute_run(loaded, registry, pm, out_dir, plan.device,
                            resume=getattr(args, "resume", False),
                            references=not args.no_references)
    n_days = next(iter(documents.values()))["n_test_days"]
    print(f"\ntest metrics over {n_days} test days (exact AC power flow):")
    print(results_table(documents))
    where = f" (reference controllers in {out_dir}/baselines/)" if len(documents) > 1 else ""
    print(f"\nwrote {out_dir}/metrics.json{where}")
    from gridflex.report import write_plots

    plots = write_plots(out_dir)
    print(f"plots: {', '.join(str(p) for p in plots)}")
    return EXIT_OK


def cmd_compare(args: argparse.Namespace) -> int:
    from gridflex.compare import compare, comparison_table, parse_seeds

    learners = [name.strip() for name in args.learners.split(",") if name.strip()]
    if not learners:
        raise UserError("--learners is empty")
    pm, registry = load_registry()
    for name in learners:
        registry.get("learner", name)  # unknown names fail before any run starts
    result = compare(args.scenario, learners, parse_seeds(args.seeds), args.out,
                     overrides=list(args.override), registry=registry, pm=pm)
    print(comparison_table(result))
    print(f"\nwrote {args.out}/comparison.json")
    return EXIT_OK


def cmd_pf(args: argparse.Namespace) -> int:
    from gridflex.pf import run_pf

    return run_pf(
        feeder=args.feeder,
        load_mult=args.load_mult,
        taps=args.taps,
        json_out=args.json_out,
        device=args.device,
        max_iter=args.max_iter,
    )



def cmd_verify(args: argparse.Namespace) -> int:
    from gridflex.verify import run_verify

    return run_verify(args.run_dir, args.json_out)


def cmd_targets(args: argparse.Namespace) -> int:
    from gridflex.targets import compute_targets

    pm, registry = load_registry()
    loaded = load_scenario(args.scenario, args.override, registry)
    command = " ".join(["gridflex", "targets", str(args.scenario)] + [f"-o {o}" for o in args.override]
                       + (["--no-reference"] if args.no_reference else []))
    doc = compute_targets(loaded, registry, pm, reference=not args.no_reference, command=command)
    print(f"wrote {doc['path']}: c_ref={doc['c_ref']}, c_no_control={doc['c_no_control']:.2f} "
          f"(sha256 {doc['scenario_sha256'][:12]})")
    return EXIT_OK
