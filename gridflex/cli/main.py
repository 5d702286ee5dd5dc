"""The ``gridflex`` command line.

Exit codes: 0 success, 1 internal error (a bug: please report it), 2 user error (a clear
message, never a traceback), 3 a power flow that did not converge, 4 a check that ran and found a
difference (``deploy-sim``: the exported policies do not reproduce the run).
"""

from __future__ import annotations

import argparse
import os
import sys
import traceback
from collections.abc import Sequence
from pathlib import Path

from gridflex import __version__
from gridflex.errors import ConvergenceError, GridflexError, PluginError, UserError

EXIT_OK, EXIT_INTERNAL, EXIT_USER, EXIT_NOT_CONVERGED = 0, 1, 2, 3
DEVICE_HELP = ("torch device: cpu, cuda, cuda:N or auto (cuda when available, else cpu); overrides "
               "the scenario's `device`")


class UsageError(UserError):
    """A command-line usage mistake (already formatted with the command's usage)."""


class _ArgumentParser(argparse.ArgumentParser):
    """argparse that raises :class:`UsageError` instead of exiting, so main() owns exit codes."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise UsageError(f"{self.format_usage().strip()}\n{self.prog}: error: {message}")


def build_parser() -> argparse.ArgumentParser:
    parser = _ArgumentParser(
        prog="gridflex",
        description="Decentralised learning for grid-edge flexibility with differentiable "
        "three-phase AC power flow.",
        epilog="Exit codes: 0 ok, 1 internal error, 2 user error, 3 power flow not converged, "
               "4 a check found a difference (deploy-sim).",
    )
    parser.add_argument("--version", action="version", version=f"gridflex {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_ArgumentParser)
    sub.required = True

    run = sub.add_parser(
        "run",
        help="run a scenario (the main job)",
        description="Run a scenario: validate it, build the feeder, grid, solver, fleet and "
        "learner it names, solve the base-case power flow and print the resolved plan. "
        "Then the scenario's learner trains (a learner that trains, e.g. gradmap, within its "
        "budget) and is evaluated on the test days, beside no_control, rule_based and droop "
        "unless --no-references; results go to the run folder. With no learner configured the "
        "run stops after the plan. With no SCENARIO the embedded default scenario "
        "(scenarios/ieee13_small.yaml) is used.",
    )
    run.add_argument("scenario", nargs="?", help="scenario YAML (default: embedded default)")
    _add_overrides(run)
    run.add_argument("--device", help=DEVICE_HELP)
    run.add_argument("--params", type=Path, metavar="TUNED_YAML",
                     help="learner params overlay (`learner: {type, params}`, e.g. the tuned.yaml of "
                     "`gridflex tune`); applied over the scenario, under -o overrides")
    run.add_argument("--out", type=Path, help="output folder (default: runs/<name>/<stamp>); one that "
                     "holds an earlier run needs --resume or --force (see docs/cli.md)")
    run.add_argument(
        "--no-references",
        action="store_true",
        help="skip evaluating no_control, rule_based and droop beside the learner",
    )

    run.add_argument("--resume", action="store_true",
                     help="continue training the run in --out from its checkpoint.pt; the scenario "
                     "must match the folder's scenario.resolved.yaml except "
                     "learner.params.budget_seconds/budget_iterations")
    run.add_argument("--force", action="store_true",
                     help="--out holds an earlier run: delete its outputs (metrics, history, "
                     "checkpoint, policy, baselines/, plots/) and start over")

    compare = sub.add_parser(
        "compare",
        help="compare learners over seeds on one scenario (time to target)",
        description="Train and evaluate each learner with each seed on the same scenario and "
        "machine; write DIR/comparison.json (test metrics and time to the scenario's validation "
        "target, medians with IQR) and print a table. Seeds seed the learners; the world is the "
        "scenario's. `-o learner.params.KEY=VALUE` applies to every learner that trains.",
    )
    compare.add_argument("scenario", nargs="?", help="scenario YAML (default: embedded default)")
    compare.add_argument("--learners", required=True, help="comma-separated learner names")
    compare.add_argument("--seeds", default="0-4", help="seeds, e.g. 0-4 or 0,2,5 (default 0-4)")
    compare.add_argument("--out", type=Path, required=True, help="output folder")
    compare.add_argument("--device", help=DEVICE_HELP)
    compare.add_argument("--params", type=Path, action="append", default=[], metavar="TUNED_YAML",
                         help="learner params overlay for the learner it names (repeatable, one per "
                         "learner; e.g. gridflex tune's tuned.yaml); -o learner.params.* still applies on top")
    compare.add_argument("--jobs", type=int, default=1,
                         help="run the (learner, seed) runs in this many worker processes, each pinned to "
                         "one CPU core with one thread (default 1: in this process)")
    compare.add_argument("--reuse", action="append", default=[], metavar="NAME=METRICS_JSON",
                         help="take a finished run of a controller that does not train (e.g. "
                         "reference=runs/x/metrics.json) instead of running it again; same scenario and "
                         "test days (repeatable)")
    _add_overrides(compare)

    report = sub.add_parser(
        "report",
        help="one self-contained HTML page (plus Markdown, JSON, PNGs) from comparison or run folders",
        description="Summarise comparison folders (gridflex compare) and run folders (gridflex run): "
        "interquartile means over seeds with 95 % stratified-bootstrap intervals (rliable; the "
        "report extra), censored times to target as lower bounds, probability of improvement of "
        "gradmap over each other learner, speed-up ratios, performance profiles, learning curves, "
        "feeder maps, a bus x hour voltage heatmap and a cost-violation scatter. Writes "
        "report.html (one offline page), report.md, report.json and the PNGs (docs/report.md).",
    )
    report.add_argument("folders", nargs="+", type=Path, metavar="DIR",
                        help="a comparison folder (comparison.json) or a run folder (metrics.json); several "
                        "give one page with a section each")
    report.add_argument("--out", type=Path, help="output folder (default: DIR/report for one DIR; required for several)")
    report.add_argument("--day", type=int, help="test day of the voltage heatmap (default: the day of most "
                        "no-control violations, else 0)")

    tune = sub.add_parser(
        "tune",
        help="tune a learner's hyper-parameters over scenario files and seeds (Optuna study)",
        description="Run (or continue) an Optuna study of one learner's search space. Each trial "
        "trains on every SCENARIO with every seed under the same budget, judged on validation days "
        "only (test days never touched); its value is a censored time to target (docs/tuning.md). "
        "The study lives in a journal file under runs/studies/ (no server) or in PostgreSQL "
        "(--storage postgresql://USER@HOST/DB, password from GRIDFLEX_DB_PASSWORD or "
        "--db-password-file). Writes runs/studies/<study>/ summary.json, PNGs and tuned.yaml, "
        "the best params as a --params overlay.",
    )
    tune.add_argument("scenarios", nargs="+", metavar="SCENARIO", help="scenario YAML files (one or more)")
    tune.add_argument("--learner", required=True, help="the learner to tune (it declares its search space)")
    tune.add_argument("--trials", type=int, required=True,
                      help="the study's total of finished (complete or pruned) trials, over all workers")
    tune.add_argument("--storage", help="journal:PATH or postgresql://USER@HOST[:PORT]/DB (default: "
                      "runs/studies/<study>.journal)")
    tune.add_argument("--study", help="study name (default: <learner>-<scenario names>)")
    tune.add_argument("--budget-s", type=float, help="training-clock budget per scenario and seed (s; default 60)")
    tune.add_argument("--budget-iterations", type=int, help="iteration budget instead (reproducible; tests)")
    tune.add_argument("--seeds", default="0", help="learner seeds, e.g. 0-2 or 0,5 (default 0)")
    tune.add_argument("--jobs", type=int, default=1, help="worker processes on this machine (default 1)")
    tune.add_argument("--multi-objective", action="store_true",
                      help="minimise (time to target, validation cost); no pruning; Pareto front written")
    tune.add_argument("--pruner", default="wilcoxon", choices=("wilcoxon", "median", "none"),
                      help="wilcoxon: stop bad trials on their per-(scenario, seed) values (default); median: "
                      "on the validation checkpoints; none (docs/tuning.md)")
    tune.add_argument("--sampler-seed", type=int, default=0, help="seed of the TPE sampler (default 0)")
    tune.add_argument("--startup-trials", type=int, default=10,
                      help="random trials (the defaults included) before TPE models the space (default 10, "
                           "Optuna's; lower it for studies of few trials)")
    tune.add_argument("--db-password-file", type=Path,
                      help="file holding the database password (owned by you, chmod 600)")
    tune.add_argument("--heartbeat-s", type=int, default=60,
                      help="PostgreSQL trial heartbeat (s); a trial silent for 3 beats is retried (default 60)")
    tune.add_argument("--out", type=Path, help="summary folder (default: runs/studies/<study>/)")
    tune.add_argument("--no-summary", action="store_true", help=argparse.SUPPRESS)
    tune.add_argument("--worker-index", type=int, default=0, help=argparse.SUPPRESS)
    _add_overrides(tune)

    validate = sub.add_parser(
        "validate",
        help="validate scenario files",
        description="Validate scenario files (structure and each component's params); report "
        "every problem with its YAML path. Exit 2 if any file is invalid.",
    )
    validate.add_argument("scenarios", nargs="+", help="scenario YAML files")
    _add_overrides(validate)

    sub.add_parser(
        "plugins",
        help="list installed plugins and their components",
        description="List every installed gridflex plugin: name, kinds, distribution, version "
        "and the components it registers.",
    )
    schema = sub.add_parser(
        "schema",
        help="print the JSON schema of scenario files",
        description="Print the JSON schema of scenario files, including every installed "
        "component's params schema.",
    )
    schema.add_argument("--no-components", action="store_true", help="structure only")

    pf = sub.add_parser(
        "pf",
        help="solve one power flow of a feeder with the ac3ph solver",
        description="Solve the base-case power flow of a feeder with gridflex's exact three-phase "
        "AC solver (ac3ph). The OpenDSS engine, if used at all, only reads the file; a cached "
        "feeder is used when present. OpenDSS's vminpu/vmaxpu constant-impedance rule is applied. "
        "Exit 3 if the power flow does not converge.",
    )
    pf.add_argument("feeder", help="a .dss master file, a gridflex feeder .json(.gz) or a shipped name")
    pf.add_argument("--load-mult", type=float, default=1.0, help="scale every variable load's kW and kvar, as OpenDSS's LoadMult (status=fixed/exempt loads and generation stay as the file sets them)")
    pf.add_argument("--taps", choices=("file", "opendss"), default="file", help="regulator taps")
    pf.add_argument("--json", type=Path, dest="json_out", help="write the result JSON here")
    pf.add_argument("--device", default="cpu", help="torch device: cpu, cuda, cuda:N or auto (default cpu)")
    pf.add_argument("--max-iter", type=int, default=100, help="iteration cap (default 100)")

    targets = sub.add_parser(
        "targets",
        help="compute C_ref and C_no_control of a scenario into its sidecar file",
        description="Compute the validation-day cost per day of no_control (C_no_control) and of "
        "the centralised perfect-foresight reference (C_ref, a convex OPF on the linearised "
        "network re-evaluated with the AC solver; needs the convex extra) and write them to "
        "<scenario folder>/<name>.targets.json, keyed by the scenario's sha256 without its "
        "learner section. Training reads that file for its cost target, or a shipped "
        "scenario's sidecar with the same key (a copied scenario); with none the target is "
        "violation-only and the run says so (docs/design.md §3, docs/gradmap.md).",
    )
    targets.add_argument("scenario", help="scenario YAML")
    _add_overrides(targets)
    targets.add_argument("--force", action="store_true",
                         help="recompute even when the sidecar already holds this scenario's costs "
                         "(without it, an up-to-date sidecar is never overwritten)")
    targets.add_argument("--no-reference", action="store_true", help="only C_no_control (c_ref: null)")
    targets.add_argument("--device", help=DEVICE_HELP)

    verify = sub.add_parser(
        "verify",
        help="replay a run's test days in OpenDSS and compare",
        description="Replay the frozen-tap test-day schedules of a `gridflex run` output folder "
        "in the OpenDSS engine (an independent oracle; needs dss-python) and report the voltage "
        "metrics and source power from both engines side by side.",
    )
    verify.add_argument("run_dir", type=Path, help="output folder of gridflex run")
    verify.add_argument("--json", type=Path, dest="json_out", help="write the report JSON here")

    export = sub.add_parser(
        "export",
        help="export a run's trained policies: one ONNX file per agent, or weights.npz",
        description="Export the trained per-agent policies of a finished `gridflex run` folder: "
        "one ONNX file per agent (raw local measurements in, the device's physical set-point out; "
        "needs the export extra: onnx, onnxruntime) or one weights.npz with a pure-numpy reference "
        "implementation (policy_numpy.py) beside it, and policy_contract.json (device, parameters, "
        "bus and phase, ordered inputs and features with units, the action's meaning and units, "
        "the feeder, the scenario's sha256, the gridflex version). Every file is checked against "
        "the trained policy on the run's test days. See docs/deploy.md.",
    )
    export.add_argument("run_dir", type=Path, help="output folder of a finished gridflex run")
    export.add_argument("--format", choices=("onnx", "npz"), default="onnx", dest="export_format",
                        help="onnx (default): one file per agent; npz: weights.npz + policy_numpy.py")
    export.add_argument("--out", type=Path, help="export folder (default: RUN_DIR/export_<format>); "
                        "new, empty or an earlier export (replaced)")

    deploy_sim = sub.add_parser(
        "deploy-sim",
        help="replay the test days with every agent acting through its exported file",
        description="Rebuild the exported run's world and replay its test days (the devices and "
        "the AC power flow as in evaluation) with every agent acting only through its own exported "
        "file (onnxruntime, or the numpy implementation), then print the metrics beside the run's "
        "own metrics.json and the largest difference.",
    )
    deploy_sim.add_argument("export_dir", type=Path, help="folder written by gridflex export")
    deploy_sim.add_argument("--json", type=Path, dest="json_out", help="write both metrics and the differences here")
    return parser


def _add_overrides(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "-o",
        "--override",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="dotted override, e.g. -o learner.params.eta=0.05 -o devices[0].count=10",
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``gridflex`` command; returns the exit code."""
    try:
        args = build_parser().parse_args(argv)
        return _dispatch(args)
    except ConvergenceError as exc:
        print(f"gridflex: {exc}", file=sys.stderr)
        return EXIT_NOT_CONVERGED
    except UsageError as exc:
        print(exc, file=sys.stderr)
        return EXIT_USER
    except (UserError, PluginError) as exc:
        print(f"gridflex: error: {exc}", file=sys.stderr)
        _let_rank_0_speak()
        return EXIT_USER
    except BrokenPipeError:  # output piped into e.g. `head`
        sys.stderr.close()
        return EXIT_OK
    except KeyboardInterrupt:
        print("gridflex: interrupted", file=sys.stderr)
        return 130
    except GridflexError as exc:
        print(f"gridflex: error: {exc}", file=sys.stderr)
        return EXIT_INTERNAL
    except Exception:  # noqa: BLE001 - a bug: show it
        launch = sys.modules.get("gridflex.runs.launch")  # a quieted rank still shows its crash
        stream = sys.stderr if launch is None else launch.error_stream()
        traceback.print_exc(file=stream)
        print(
            "gridflex: internal error (a bug in gridflex or a plugin); please report it with the "
            "traceback above",
            file=stream,
        )
        return EXIT_INTERNAL


def _let_rank_0_speak() -> None:
    """On a quieted rank of a torchrun launch (docs/distributed.md) every rank refuses bad input
    alike; waiting a moment lets rank 0 print the paragraph before torchrun stops the others."""
    launch = sys.modules.get("gridflex.runs.launch")
    if launch is not None and launch.quieted():
        import time

        time.sleep(2.0)


def _dispatch(args: argparse.Namespace) -> int:
    from gridflex.cli import commands, report

    if args.command != "run" and os.environ.get("WORLD_SIZE", "1").strip() not in ("", "1"):
        from gridflex.runs.launch import refuse_other_commands  # torchrun: only `run` shards

        refuse_other_commands(args.command)
    handler = {
        "run": commands.cmd_run,
        "compare": commands.cmd_compare,
        "report": report.cmd_report,
        "tune": commands.cmd_tune,
        "validate": commands.cmd_validate,
        "plugins": commands.cmd_plugins,
        "schema": commands.cmd_schema,
        "pf": commands.cmd_pf,
        "verify": commands.cmd_verify,
        "targets": commands.cmd_targets,
        "export": commands.cmd_export,
        "deploy-sim": commands.cmd_deploy_sim,
    }[args.command]
    return handler(args)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
