"""A throwaway PostgreSQL server for the shared-study tests where none is configured.

CI starts the Debian package's server (.ci/postgres.sh) and exports ``GRIDFLEX_TEST_PG_*``. On a
machine with only Python and pip, the test extra's ``pgserver`` wheel carries the PostgreSQL
binaries: :func:`start` initialises a cluster in a temporary folder, listening on 127.0.0.1 with
password (scram-sha-256) authentication as a production server would, creates the test role and
database with a fresh random password, and returns the same connection parts. As root the server
runs as an unprivileged system user (PostgreSQL refuses root), as ``pgserver`` itself does.
"""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import subprocess
from pathlib import Path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(root: Path) -> tuple[dict, callable]:
    """Start a server under ``root``; returns (connection parts, stop())."""
    from pgserver._commands import POSTGRES_BIN_PATH
    from pgserver.utils import ensure_folder_permissions, ensure_prefix_permissions, ensure_user_exists

    root = Path(root)
    data, sockets = root / "pgdata", root / "sock"
    sockets.mkdir(parents=True, exist_ok=True)
    run_as: dict = {}
    if os.geteuid() == 0:
        import pwd
        import stat

        user = pwd.getpwnam("pgserver") if _user_exists("pgserver") else None
        if user is None:
            ensure_user_exists("pgserver")
            user = pwd.getpwnam("pgserver")
        ensure_prefix_permissions(root)
        ensure_folder_permissions(POSTGRES_BIN_PATH, stat.S_IXGRP | stat.S_IXOTH | stat.S_IRGRP | stat.S_IROTH)
        ensure_folder_permissions(POSTGRES_BIN_PATH.parent / "lib", stat.S_IRGRP | stat.S_IROTH)
        for path in (root, sockets):
            os.chown(path, user.pw_uid, user.pw_gid)
        run_as = {"user": user.pw_uid, "group": user.pw_gid}
    admin_pw = secrets.token_hex(16)
    pw_file = root / "admin.pw"
    pw_file.write_text(admin_pw)
    pw_file.chmod(0o600)
    if run_as:
        os.chown(pw_file, run_as["user"], run_as["group"])
    bin_ = POSTGRES_BIN_PATH

    def pg(*args: str) -> str:
        return subprocess.run([str(bin_ / args[0]), *args[1:]], check=True, capture_output=True, text=True,
                              cwd=root, timeout=120, **run_as).stdout

    pg("initdb", "-D", str(data), "-U", "postgres", "--auth-local=trust", "--auth-host=scram-sha-256",
       f"--pwfile={pw_file}", "-E", "UTF8")
    port = _free_port()
    pg("pg_ctl", "-D", str(data), "-w", "-l", str(root / "log"), "-o",
       f"-h 127.0.0.1 -p {port} -k {sockets}", "start")
    password = secrets.token_hex(16)

    def psql(sql: str) -> None:
        # statements on stdin: the password never appears on a command line
        subprocess.run([str(bin_ / "psql"), "-h", str(sockets), "-p", str(port), "-U", "postgres",
                        "-v", "ON_ERROR_STOP=1", "-qtAX", "-d", "postgres"], input=sql, check=True,
                       capture_output=True, text=True, timeout=60, cwd=root, **run_as)

    psql(f"CREATE ROLE gridflex_test LOGIN PASSWORD '{password}';")
    psql("CREATE DATABASE gridflex_test OWNER gridflex_test;")

    def stop() -> None:
        subprocess.run([str(bin_ / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"],
                       capture_output=True, timeout=60, cwd=root, **run_as)
        shutil.rmtree(root, ignore_errors=True)

    params = {"host": "127.0.0.1", "port": str(port), "user": "gridflex_test", "db": "gridflex_test",
              "password": password}
    return params, stop


def _user_exists(name: str) -> bool:
    import pwd

    try:
        pwd.getpwnam(name)
        return True
    except KeyError:
        return False
