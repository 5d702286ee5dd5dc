"""The ``gridflex`` command line.

Exit codes: 0 success, 1 internal error (a bug: please report it), 2 user error (a clear
message, never a traceback), 3 a power flow that did not converge.
"""

from __future__ import annotations

import argparse
import sys
import traceback
from collections.abc import Sequence
from pathlib import Path

from gridflex import __version__
from gridflex.errors import ConvergenceError, GridflexError, PluginError, UserError

EXIT_OK, EXIT_INTERNAL, EXIT_USER, EXIT_NOT_CONVERGED = 0, 1, 2, 3


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
        epilog="Exit codes: 0 ok, 1 internal error, 2 user error, 3 power flow not converged.",
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
    run.add_argument("--device", help="torch device (cpu, cuda or auto), overrides the scenario's `device`")
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
    _add_overrides(compare)

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
    pf.add_argument("--load-mult", type=float, default=1.0, help="scale every load's kW and kvar")
    pf.add_argument("--taps", choices=("file", "opendss"), default="file", help="regulator taps")
    pf.add_argument("--json", type=Path, dest="json_out", help="write the result JSON here")
    pf.add_argument("--device", default="cpu", help="torch device: cpu, cuda or auto (default cpu)")
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
    targets.add_argument("--no-reference", action="store_true", help="only C_no_control (c_ref: null)")

    verify = sub.add_parser(
        "verify",
        help="replay a run's test days in OpenDSS and compare",
        description="Replay the frozen-tap test-day schedules of a `gridflex run` output folder "
        "in the OpenDSS engine (an independent oracle; needs dss-python) and report the voltage "
        "metrics and source power from both engines side by side.",
    )
    verify.add_argument("run_dir", type=Path, help="output folder of gridflex run")
    verify.add_argument("--json", type=Path, dest="json_out", help="write the report JSON here")
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
        traceback.print_exc()
        print(
            "gridflex: internal error (a bug in gridflex or a plugin); please report it with the "
            "traceback above",
            file=sys.stderr,
        )
        return EXIT_INTERNAL


def _dispatch(args: argparse.Namespace) -> int:
    from gridflex.cli import commands

    handler = {
        "run": commands.cmd_run,
        "compare": commands.cmd_compare,
        "validate": commands.cmd_validate,
        "plugins": commands.cmd_plugins,
        "schema": commands.cmd_schema,
        "pf": commands.cmd_pf,
        "verify": commands.cmd_verify,
        "targets": commands.cmd_targets,
    }[args.command]
    return handler(args)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
