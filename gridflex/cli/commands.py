"""Implementations of the CLI sub-commands (kept apart from argument parsing)."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from gridflex.errors import UserError
from gridflex.plugins.registry import load_registry
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
    from gridflex.plugins.registry import blocked_plugin_names

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
    from gridflex.runs.run import (RESOLVED, check_device, check_resume, clear_run_outputs,
                              existing_run_outputs, plan_run)

    resume, force = getattr(args, "resume", False), getattr(args, "force", False)
    # every refusal comes before any work and before anything is written
    if resume and force:
        raise UserError("--resume and --force exclude each other: --resume continues the run in "
                        "--out, --force deletes it and starts over; give one of them")
    if resume and args.out is None:
        raise UserError("--resume needs --out RUN_DIR: the folder of the earlier run to continue "
                        "(it holds checkpoint.pt and scenario.resolved.yaml); e.g. gridflex run "
                        "SCENARIO --out runs/NAME/STAMP --resume")
    if args.out is not None:
        check_output_dir(args.out, "--out")
    if args.device:
        check_device(args.device)
    overrides = list(args.override)
    if args.device:
        overrides.append(f"device={args.device}")
    pm, registry = load_registry()
    loaded = load_scenario(args.scenario, overrides, registry)
    check_device(loaded.config.device, "the scenario's device")
    if resume:
        if loaded.config.learner is None or not registry.get("learner", loaded.config.learner.type).trains:
            what = "no learner" if loaded.config.learner is None else \
                f"learner {loaded.config.learner.type!r}, which does not train"
            raise UserError(f"--resume continues training, but the scenario has {what}; drop --resume")
        check_resume(loaded, args.out)
    elif args.out is not None:
        previous = [n for n in existing_run_outputs(args.out) if n not in (RESOLVED, "plan.txt")]
        if previous and not force:
            state = "a finished run" if "metrics.json" in previous else "an unfinished run"
            raise UserError(f"--out {args.out} already holds {state} ({', '.join(previous)}); gridflex "
                            "never mixes two runs' results in one folder: add --resume to continue "
                            "training it (same scenario; only the budget may change), --force to "
                            "replace it (its outputs are deleted first), or choose another --out")
    out_dir = args.out
    if out_dir is None and loaded.config.learner is not None:
        from gridflex.runs.run import default_out_dir

        out_dir = base = default_out_dir(loaded.config.name)
        n = 1
        while existing_run_outputs(out_dir):  # two runs started in the same second
            n += 1
            out_dir = base.with_name(f"{base.name}-{n}")
        check_output_dir(out_dir, "the default output folder (give --out DIR to choose another)")
    plan = plan_run(loaded, registry, pm)
    print(plan.describe())
    if force and args.out is not None:
        removed = clear_run_outputs(args.out)
        if removed:
            print(f"--force: removed the previous run's {', '.join(removed)} from {args.out}",
                  file=sys.stderr)
    if loaded.config.learner is None:
        if args.out is not None:
            written = plan.write(args.out)
            print(f"wrote {', '.join(str(p) for p in written)}")
        return EXIT_OK
    from gridflex.runs.run import execute_run, results_table

    created = not Path(out_dir).exists()
    written = plan.write(out_dir)
    try:
        documents = execute_run(loaded, registry, pm, out_dir, plan.device, resume=resume,
                                references=not args.no_references)
    except UserError:
        # a mistake found while building the world (e.g. more devices than households) leaves no
        # half-written folder behind: only the plan had been written, and it is taken back
        if not resume and not any(n not in (RESOLVED, "plan.txt") for n in existing_run_outputs(out_dir)):
            for path in written:
                path.unlink(missing_ok=True)
            if created and not any(Path(out_dir).iterdir()):
                Path(out_dir).rmdir()
        raise
    n_days = next(iter(documents.values()))["n_test_days"]
    print(f"\ntest metrics over {n_days} test days (exact AC power flow):")
    print(results_table(documents))
    where = f" (reference controllers in {out_dir}/baselines/)" if len(documents) > 1 else ""
    print(f"\nwrote {out_dir}/metrics.json{where}")
    from gridflex.runs.report import write_plots

    plots = write_plots(out_dir)
    print(f"plots: {', '.join(str(p) for p in plots)}")
    return EXIT_OK


# ------------------------------------------------------------------------------------------------
# Output paths: checked before any long work starts (exit 2 with one paragraph)
# ------------------------------------------------------------------------------------------------


def _existing_ancestor(path: Path) -> Path:
    for candidate in (path, *path.parents):
        if candidate.exists():
            return candidate
    return Path(".")


def _check_creatable(path: Path, option: str, what: str) -> None:
    """``path`` (missing) can be created: its nearest existing ancestor is a writable folder."""
    ancestor = _existing_ancestor(path.parent if path.parent != path else path)
    if not ancestor.is_dir():
        raise UserError(f"{option} {path}: cannot create the {what} because {ancestor} is a file, not "
                        f"a folder; give a path whose parent folders are folders (or do not exist yet)")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise UserError(f"{option} {path}: cannot create the {what} because folder {ancestor} is not "
                        "writable by this user; give a path in a writable folder")


def check_output_dir(path: Path, option: str) -> None:
    """An output folder: an existing writable folder, or a path that can be created."""
    path = Path(path)
    if path.exists():
        if not path.is_dir():
            raise UserError(f"{option} {path} is an existing file, but {option} names an output "
                            "folder (new, empty, or one gridflex wrote); give a folder path")
        if not os.access(path, os.W_OK | os.X_OK):
            raise UserError(f"{option} {path}: folder is not writable by this user; give a writable "
                            "folder or a new path")
        return
    _check_creatable(path, option, "folder")


def check_output_file(path: Path, option: str) -> None:
    """An output file: a new file in a creatable folder, or an existing writable file."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{option} {path} is an existing folder, but {option} names the file to "
                        "write; give a file path, e.g. DIR/result.json")
    if path.exists():
        if not os.access(path, os.W_OK):
            raise UserError(f"{option} {path}: file exists and is not writable by this user; give "
                            "another path")
        return
    _check_creatable(path, option, "file")


def cmd_compare(args: argparse.Namespace) -> int:
    from gridflex.runs.compare import compare, comparison_table, parse_seeds

    learners = [name.strip() for name in args.learners.split(",") if name.strip()]
    if not learners:
        raise UserError("--learners is empty")
    check_output_dir(args.out, "--out")
    pm, registry = load_registry()
    for name in learners:
        registry.get("learner", name)  # unknown names fail before any run starts
    result = compare(args.scenario, learners, parse_seeds(args.seeds), args.out,
                     overrides=list(args.override), registry=registry, pm=pm)
    print(comparison_table(result))
    print(f"\nwrote {args.out}/comparison.json")
    return EXIT_OK


def cmd_pf(args: argparse.Namespace) -> int:
    from gridflex.cli.pf import run_pf
    from gridflex.runs.run import check_device

    check_device(args.device)
    if args.json_out is not None:
        check_output_file(args.json_out, "--json")
    return run_pf(
        feeder=args.feeder,
        load_mult=args.load_mult,
        taps=args.taps,
        json_out=args.json_out,
        device=args.device,
        max_iter=args.max_iter,
    )



def cmd_verify(args: argparse.Namespace) -> int:
    from gridflex.runs.verify import run_verify

    if args.json_out is not None:
        check_output_file(args.json_out, "--json")
        args.json_out.parent.mkdir(parents=True, exist_ok=True)
    return run_verify(args.run_dir, args.json_out)


def cmd_targets(args: argparse.Namespace) -> int:
    from gridflex.learning.targets import compute_targets

    pm, registry = load_registry()
    loaded = load_scenario(args.scenario, args.override, registry)
    command = " ".join(["gridflex", "targets", str(args.scenario)] + [f"-o {o}" for o in args.override]
                       + (["--no-reference"] if args.no_reference else []))
    doc = compute_targets(loaded, registry, pm, reference=not args.no_reference, command=command)
    print(f"wrote {doc['path']}: c_ref={doc['c_ref']}, c_no_control={doc['c_no_control']:.2f} "
          f"(sha256 {doc['scenario_sha256'][:12]})")
    return EXIT_OK
