"""``python -m gridflex``: the same command line as ``gridflex``."""

import sys

from gridflex.cli.main import main

if __name__ == "__main__":
    sys.exit(main())
