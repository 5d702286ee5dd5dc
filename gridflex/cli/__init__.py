"""The command line: ``gridflex COMMAND``; parsing in ``main``, the commands in ``commands`` and
``pf``. Every user mistake exits 2 with one paragraph; see docs/cli.md."""

from gridflex.cli.main import main

__all__ = ["main"]
