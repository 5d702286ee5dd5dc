"""``gridflex report``: the command's glue (the work is :mod:`gridflex.report`)."""

from __future__ import annotations

import argparse

from gridflex.cli.commands import EXIT_OK, check_output_dir


def cmd_report(args: argparse.Namespace) -> int:
    from gridflex.report.build import build_report, default_out, summary
    from gridflex.report.collect import read_folder

    for folder in args.folders:  # a folder that is not one says so before any output path is judged
        if not folder.is_dir():
            read_folder(folder)
    out = args.out if args.out is not None else default_out(args.folders)
    check_output_dir(out, "--out")
    print(summary(build_report(args.folders, out, args.day), out))
    return EXIT_OK
