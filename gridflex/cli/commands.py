"""Implementations of the CLI sub-commands (kept apart from argument parsing).

Size: one function (or a few) per sub-command, each its refusals in order before any work; they
share the output-folder checks and the overlay helpers below.
"""

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
EXIT_DIFFERENT = 4  # a check ran and found a difference (deploy-sim)


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
    """``gridflex run``. Under torchrun with several processes (docs/distributed.md) every rank
    runs it with its own agents; rank 0 alone checks and writes the run folder."""
    from gridflex.runs import launch
    from gridflex.runs.torch_device import check_device

    resume, force = getattr(args, "resume", False), getattr(args, "force", False)
    # every refusal comes before any work and before anything is written
    if resume and force:
        raise UserError("--resume and --force exclude each other: --resume continues the run in "
                        "--out, --force deletes it and starts over; give one of them")
    if resume and args.out is None:
        raise UserError("--resume needs --out RUN_DIR: the folder of the earlier run to continue "
                        "(it holds checkpoint.pt and scenario.resolved.yaml); e.g. gridflex run "
                        "SCENARIO --out runs/NAME/STAMP --resume")
    one_process = launch.torchrun_world_size() <= 1
    if args.out is not None and one_process:
        check_output_dir(args.out, "--out")
    if args.device is not None:
        check_device(args.device)
    overrides = list(args.override)
    if args.device is not None:
        overrides.append(f"device={args.device}")
    pm, registry = load_registry()
    if getattr(args, "params", None) is not None:
        overrides = _overlay_overrides(args.params, args.scenario, overrides, registry)
    loaded = load_scenario(args.scenario, overrides, registry)
    check_device(loaded.config.device, "the scenario's device")
    ranks = launch.start(loaded, registry)  # None: one process
    try:
        checks = lambda: _run_folder(args, loaded, registry, resume, force, one_process)  # noqa: E731
        out_dir = checks() if ranks is None else ranks.on_main(checks)
        return _run(args, loaded, registry, pm, out_dir, resume, force, ranks)
    finally:
        launch.stop(ranks)


def _run_folder(args: argparse.Namespace, loaded, registry, resume: bool, force: bool,
                checked: bool) -> Path | None:
    """The run folder's refusals (``checked``: --out already passed check_output_dir); the
    folder to write, or ``None`` (no learner and no --out)."""
    from gridflex.runs.run import RESOLVED, check_resume, existing_run_outputs

    if args.out is not None and not checked:
        check_output_dir(args.out, "--out")
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
    return out_dir


def _run(args: argparse.Namespace, loaded, registry, pm, out_dir: Path | None, resume: bool,
         force: bool, ranks) -> int:
    """Plan, train, evaluate and report (every rank; rank 0 writes)."""
    from gridflex.runs.run import RESOLVED, clear_run_outputs, execute_run, existing_run_outputs, plan_run, results_table

    writes = ranks is None or ranks.is_main
    plan = plan_run(loaded, registry, pm, device=None if ranks is None else ranks.device,
                    progress=lambda line: print(line, file=sys.stderr, flush=True))
    print(plan.describe())
    if force and args.out is not None and writes:
        removed = clear_run_outputs(args.out)
        if removed:
            print(f"--force: removed the previous run's {', '.join(removed)} from {args.out}",
                  file=sys.stderr)
    if loaded.config.learner is None:
        if args.out is not None and writes:
            written = plan.write(args.out)
            print(f"wrote {', '.join(str(p) for p in written)}")
        return EXIT_OK
    created = not Path(out_dir).exists()
    written = plan.write(out_dir) if writes else []
    try:
        documents = execute_run(loaded, registry, pm, out_dir, plan.device, resume=resume,
                                references=not args.no_references, world=plan.world, ranks=ranks).documents
    except UserError:
        # a mistake found while building the world (e.g. more devices than households) leaves no
        # half-written folder behind: only the plan had been written, and it is taken back
        if writes and not resume and not any(n not in (RESOLVED, "plan.txt") for n in existing_run_outputs(out_dir)):
            for path in written:
                path.unlink(missing_ok=True)
            if created and not any(Path(out_dir).iterdir()):
                Path(out_dir).rmdir()
        raise
    except KeyboardInterrupt as exc:  # Ctrl-C: say how to continue (main() exits 130)
        _say_how_to_resume(args, out_dir, exc)
        raise
    n_days = next(iter(documents.values()))["n_test_days"]
    judge = loaded.config.evaluation_solver.type
    physics = "exact AC power flow, ac3ph" if judge == "ac3ph" else f"evaluation solver {judge}"
    print(f"\ntest metrics over {n_days} test days ({physics}):")
    print(results_table(documents))
    where = f" (reference controllers in {out_dir}/baselines/)" if len(documents) > 1 else ""
    print(f"\nwrote {out_dir}/metrics.json{where}")
    if writes:
        from gridflex.runs.report import write_plots

        plots = write_plots(out_dir)
        print(f"plots: {', '.join(str(p) for p in plots)}")
    return EXIT_OK


def _say_how_to_resume(args: argparse.Namespace, out_dir: Path, exc: BaseException) -> None:
    """After Ctrl-C: where the checkpoint is and the exact command that continues the run."""
    import shlex

    from gridflex.learning.training import CHECKPOINT

    checkpoint = Path(out_dir) / CHECKPOINT
    if not checkpoint.is_file():
        print(f"gridflex: interrupted before the first checkpoint; nothing to resume in {out_dir}",
              file=sys.stderr)
        return
    where = (f"at iteration {exc.iteration}" if getattr(exc, "iteration", None) is not None
             else "at its last validation point")
    command = ["gridflex", "run"] + ([str(args.scenario)] if args.scenario else [])
    if getattr(args, "params", None) is not None:
        command += ["--params", str(args.params)]
    for override in args.override:
        command += ["-o", override]
    if args.device:
        command += ["--device", args.device]
    if args.no_references:
        command.append("--no-references")
    command += ["--out", str(out_dir), "--resume"]
    print(f"gridflex: training checkpoint {where} is in {checkpoint}; continue with:\n  "
          + " ".join(shlex.quote(c) for c in command), file=sys.stderr, flush=True)


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


def _overlay_overrides(path: Path, scenario, overrides: list[str], registry) -> list[str]:
    """``--params FILE`` as overrides: the scenario < the overlay < ``-o`` (docs/tuning.md)."""
    from gridflex.tune.overlay import read_overlay

    overlay = read_overlay(path, registry)
    current = load_scenario(scenario, overrides, registry).config.learner
    return overlay.overrides(None if current is None else current.type) + list(overrides)


def _device_overrides(args: argparse.Namespace) -> list[str]:
    """``-o`` overrides plus ``device=...`` for ``--device`` (checked first, before any work)."""
    from gridflex.runs.torch_device import check_device

    overrides = list(args.override)
    if getattr(args, "device", None) is not None:
        check_device(args.device)
        overrides.append(f"device={args.device}")
    return overrides


def cmd_compare(args: argparse.Namespace) -> int:
    from gridflex.runs.compare import LEARNER_PARAMS, compare, comparison_table, parse_seeds
    from gridflex.runs.torch_device import check_device

    learners = [name.strip() for name in args.learners.split(",") if name.strip()]
    if not learners:
        raise UserError("--learners is empty")
    check_output_dir(args.out, "--out")
    overrides = _device_overrides(args)
    pm, registry = load_registry()
    for name in learners:
        registry.get("learner", name)  # unknown names fail before any run starts
    own: dict[str, list[str]] = {}
    for path in getattr(args, "params", None) or []:
        from gridflex.tune.overlay import read_overlay

        overlay = read_overlay(path, registry)
        if overlay.learner not in learners or overlay.learner in own:
            why = "is not in --learners" if overlay.learner not in learners else "has two --params files"
            raise UserError(f"--params {path}: it is for learner {overlay.learner!r}, which {why} "
                            f"({', '.join(learners)}); give one overlay per compared learner")
        own[overlay.learner] = overlay.overrides(overlay.learner)[1:]
    # the scenario's device (after --device and -o) must exist here before the first run starts
    world_overrides = [o for o in overrides if not o.startswith(LEARNER_PARAMS)]
    check_device(load_scenario(args.scenario, world_overrides, registry).config.device,
                 "the scenario's device")
    if args.jobs < 1:
        raise UserError(f"--jobs {args.jobs}: give at least 1 worker process")
    reuse: dict[str, Path] = {}
    for item in args.reuse:
        name, sep, path = item.partition("=")
        if not sep or not name.strip() or not path.strip():
            raise UserError(f"--reuse {item!r}: expected NAME=METRICS_JSON, e.g. reference=runs/ref/metrics.json")
        if name.strip() not in learners:
            raise UserError(f"--reuse {item!r}: {name.strip()!r} is not in --learners ({', '.join(learners)})")
        reuse[name.strip()] = Path(path.strip())
    result = compare(args.scenario, learners, parse_seeds(args.seeds), args.out,
                     overrides=overrides, registry=registry, pm=pm, learner_params=own, jobs=args.jobs,
                     reuse=reuse)
    print(comparison_table(result))
    print(f"\nwrote {args.out}/comparison.json")
    return EXIT_OK


def cmd_pf(args: argparse.Namespace) -> int:
    from gridflex.cli.pf import run_pf
    from gridflex.runs.torch_device import check_device

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
    from gridflex.runs.target_costs import compute_targets
    from gridflex.runs.torch_device import check_device

    overrides = _device_overrides(args)
    pm, registry = load_registry()
    loaded = load_scenario(args.scenario, overrides, registry)
    check_device(loaded.config.device, "the scenario's device")
    _refuse_up_to_date_sidecar(loaded, args)
    command = " ".join(["gridflex", "targets", str(args.scenario)] + [f"-o {o}" for o in args.override]
                       + (["--no-reference"] if args.no_reference else [])
                       + ([f"--device {args.device}"] if args.device is not None else []))
    doc = compute_targets(loaded, registry, pm, reference=not args.no_reference, command=command)
    print(f"wrote {doc['path']}: c_ref={doc['c_ref']}, c_no_control={doc['c_no_control']:.2f} "
          f"(sha256 {doc['scenario_sha256'][:12]})")
    return EXIT_OK


def _refuse_up_to_date_sidecar(loaded, args: argparse.Namespace) -> None:
    """An up-to-date sidecar (same key; C_ref present unless --no-reference) is a committed result:
    recomputing it takes minutes to hours and could only replace it, so it needs --force."""
    from gridflex.learning.targets import sidecar_path, targets_key

    path = sidecar_path(loaded)
    try:
        existing = json.loads(path.read_text())
    except (OSError, ValueError):
        return
    complete = existing.get("c_ref") is not None or args.no_reference
    if (not args.force and isinstance(existing, dict) and complete
            and existing.get("scenario_sha256") == targets_key(loaded)):
        raise UserError(f"{path} already holds this scenario's targets (c_ref={existing.get('c_ref')}, "
                        f"c_no_control={existing.get('c_no_control')}, computed "
                        f"{existing.get('computed', existing.get('created', '?'))}); gridflex never "
                        "overwrites an up-to-date result silently: add --force to recompute it")


def cmd_export(args: argparse.Namespace) -> int:
    from gridflex.deploy.export import default_out_dir, export_run

    out = args.out if args.out is not None else default_out_dir(args.run_dir, args.export_format)
    check_output_dir(out, "--out")
    say = lambda line: print(line, file=sys.stderr, flush=True)  # noqa: E731
    result = export_run(args.run_dir, args.export_format, out, progress=say)
    what = "ONNX files (one per agent)" if args.export_format == "onnx" else "weights.npz + policy_numpy.py"
    print(f"exported {result.contract['n_agents']} agents of {args.run_dir} as {what} into {result.out_dir}; "
          f"largest difference to the trained policy on the test days: {result.max_abs_diff:.3g}")
    print(f"contract: {result.out_dir / 'policy_contract.json'}; check it in closed loop with "
          f"`gridflex deploy-sim {result.out_dir}`")
    return EXIT_OK


def cmd_deploy_sim(args: argparse.Namespace) -> int:
    from gridflex.deploy.replay import deploy_sim, format_result

    if args.json_out is not None:
        check_output_file(args.json_out, "--json")
    say = lambda line: print(line, file=sys.stderr, flush=True)  # noqa: E731
    result = deploy_sim(args.export_dir, progress=say)
    print(f"deploy-sim of {args.export_dir} ({result.export_format}): test days, every agent acting "
          "through its own file, beside the run's metrics.json")
    print(format_result(result))
    if args.json_out is not None:
        args.json_out.parent.mkdir(parents=True, exist_ok=True)
        args.json_out.write_text(json.dumps({
            "export_format": result.export_format, "deploy_sim": result.metrics,
            "run": result.run_metrics, "max_abs_diff": result.max_abs_diff,
            "max_rel_diff": result.max_rel_diff, "equal": result.equal,
            "agent_calls": result.agent_calls}, indent=2))
    if not result.equal:
        print(f"gridflex: the deployed policies' metrics differ from the run's metrics.json beyond "
              f"1e-6 (relative {result.max_rel_diff:.3g}): the exported files do not reproduce the "
              "evaluated behaviour (exit 4)", file=sys.stderr)
        return EXIT_DIFFERENT
    return EXIT_OK


def cmd_tune(args: argparse.Namespace) -> int:
    from gridflex.runs.compare import parse_seeds
    from gridflex.tune.objective import Budget
    from gridflex.tune.study import TuneSettings, run_tune

    seconds = args.budget_s if args.budget_s is not None or args.budget_iterations is not None else 60.0
    settings = TuneSettings(
        scenarios=list(args.scenarios), learner=args.learner, trials=args.trials,
        budget=Budget(seconds=seconds, iterations=args.budget_iterations), seeds=parse_seeds(args.seeds),
        storage=args.storage, study=args.study, jobs=args.jobs, overrides=list(args.override),
        multi_objective=args.multi_objective, pruner=args.pruner, sampler_seed=args.sampler_seed,
        startup_trials=args.startup_trials,
        heartbeat_s=args.heartbeat_s, password_file=args.db_password_file, out=args.out,
        worker_index=args.worker_index, summary=not args.no_summary)
    pm, registry = load_registry()
    registry.get("learner", args.learner)  # an unknown learner fails before anything else
    say = lambda line: print(line, file=sys.stderr, flush=True)  # noqa: E731
    result = run_tune(settings, registry, pm, say=say)
    summary = result["summary"]
    if summary is not None:
        best = summary["best"]
        shown = "no completed trial yet" if best is None else \
            f"best trial {best['number']}: {best['values'][0]:.4g} {summary['unit']}, params {best['params']}"
        print(f"study {result['study']}: {summary['counts']['finished']} finished trials; {shown}; budget "
              f"consumed {summary['consumed']['training_s']:.1f} s of training clock "
              f"({summary['consumed']['iterations']} iterations)")
        print(f"wrote {', '.join(summary['files'])}")
    return EXIT_OK
