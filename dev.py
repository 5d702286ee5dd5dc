#!/usr/bin/env python3
"""Set-up and entry commands for a fresh machine with only Python >= 3.11 and pip.

    python3 dev.py run [ARGS...]   # create/update .venv, then `gridflex run ARGS` (default scenario)
    python3 dev.py test [ARGS...]  # create/update .venv with the test extra, then pytest ARGS

The virtual environment lives in ``.venv`` next to this file and is updated only when
``pyproject.toml`` changed since the last install. PyTorch is installed first as
``torch==2.13.0`` (``GRIDFLEX_TORCH_SPEC`` overrides it) so nothing pulls a larger build.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
TORCH_SPEC = os.environ.get("GRIDFLEX_TORCH_SPEC", "torch==2.13.0")


def venv_python() -> Path:
    return VENV / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


def run(cmd: list[str]) -> None:
    print("+", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True, cwd=ROOT)


def ensure_venv(extras: str) -> Path:
    """Create ``.venv`` if needed and install gridflex (editable) with ``extras``."""
    if sys.version_info < (3, 11):
        sys.exit(f"gridflex needs Python >= 3.11; this is {sys.version.split()[0]}")
    python = venv_python()
    if not python.exists():
        print(f"creating virtual environment {VENV}", flush=True)
        venv.EnvBuilder(with_pip=True).create(VENV)
    stamp_file = VENV / f".gridflex-installed-{extras or 'base'}"
    digest = hashlib.sha256((ROOT / "pyproject.toml").read_bytes() + TORCH_SPEC.encode()).hexdigest()
    if stamp_file.exists() and stamp_file.read_text() == digest:
        return python
    pip = [str(python), "-m", "pip", "install", "--disable-pip-version-check", "-q"]
    print(f"installing {TORCH_SPEC} and gridflex{f'[{extras}]' if extras else ''} into {VENV} "
          "(a minute or two the first time; quiet while it works)", flush=True)
    run(pip + [TORCH_SPEC])
    run(pip + ["-e", f".[{extras}]" if extras else "."])
    print("installed", flush=True)
    stamp_file.write_text(digest)
    return python


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in {"run", "test"}:
        print(__doc__)
        return 2
    command, rest = argv[0], argv[1:]
    if command == "run":
        python = ensure_venv("")
        return subprocess.call([str(python), "-m", "gridflex", "run", *rest], cwd=ROOT)
    python = ensure_venv("test")
    return subprocess.call([str(python), "-m", "pytest", *rest], cwd=ROOT)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
