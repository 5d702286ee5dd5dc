"""Where a study lives: an embedded journal file (default) or a shared PostgreSQL database.

* **Journal** (no server): ``optuna.storages.JournalStorage`` on a ``JournalFileBackend``, by
  default ``runs/studies/<study>.journal``; safe for several worker processes on one machine.
  The folder is created ``0700`` and the files ``0600`` (readable by their owner only). Journal
  trials have no heartbeat: a trial left ``RUNNING`` by a worker process that no longer exists on
  this machine is stale (:mod:`.workers` fails and retries it).
* **PostgreSQL** (many machines): ``--storage postgresql://USER@HOST[:PORT]/DB`` through
  ``optuna.storages.RDBStorage`` (SQLAlchemy with psycopg 3), with heartbeats and Optuna's
  retry-on-stale-heartbeat callback. The password never appears in the URL: it comes from the
  environment variable ``GRIDFLEX_DB_PASSWORD`` or from ``--db-password-file FILE`` (owned by
  the user and not readable by group or others). A URL with a password in it is refused. The
  URL shown anywhere (progress, summaries, errors) is :attr:`StorageSpec.display`, password-free,
  and every error message from the driver is scrubbed of the password.

:class:`CapLock` makes "count the trials, then start one" atomic across workers (a ``flock``
beside the journal, a PostgreSQL advisory lock), which is what keeps the trial cap exact.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import stat
from dataclasses import dataclass, field
from pathlib import Path

from gridflex.errors import UserError

PASSWORD_ENV = "GRIDFLEX_DB_PASSWORD"
STUDIES_DIR = Path("runs") / "studies"
_PG = re.compile(r"^postgres(?:ql)?(?:\+psycopg)?://(?P<auth>[^@/]*@)?(?P<host>[^/:@]+)(?::(?P<port>\d+))?"
                 r"/(?P<db>[A-Za-z0-9_.-]+)$")


@dataclass
class StorageSpec:
    """A parsed ``--storage`` (``kind`` "journal" or "postgresql"); never holds a password in
    anything it prints."""

    kind: str
    path: Path | None = None  # journal file
    user: str | None = None
    host: str | None = None
    port: int = 5432
    database: str | None = None
    _password: str | None = field(default=None, repr=False)

    @property
    def display(self) -> str:
        """Password-free description (progress lines, summaries, error messages)."""
        if self.kind == "journal":
            return f"journal file {self.path}"
        return f"postgresql://{self.user}@{self.host}:{self.port}/{self.database}"

    def scrub(self, text: str) -> str:
        """``text`` with the password (if any) replaced by ``***``."""
        return text.replace(self._password, "***") if self._password else text


def parse_storage(url: str | None, study: str, password_file: Path | None = None) -> StorageSpec:
    """The study's storage: the default journal under ``runs/studies``, ``journal:PATH`` (or a
    path ending ``.journal``), or ``postgresql://USER@HOST[:PORT]/DB`` (module docstring)."""
    if url is None:
        return StorageSpec("journal", path=STUDIES_DIR / f"{study}.journal")
    if url.startswith("journal:") or url.endswith(".journal"):
        return StorageSpec("journal", path=Path(url.removeprefix("journal:")).expanduser())
    if url.startswith(("postgres://", "postgresql://", "postgresql+psycopg://")):
        match = _PG.match(url)
        if match is None:
            raise UserError("--storage: a PostgreSQL URL must look like postgresql://USER@HOST[:PORT]/DATABASE "
                            "(no password in it; it comes from the environment variable "
                            f"{PASSWORD_ENV} or --db-password-file)")
        auth = (match.group("auth") or "")[:-1]
        if ":" in auth:
            safe = f"postgresql://{auth.split(':', 1)[0]}:***@{match.group('host')}/{match.group('db')}"
            raise UserError(f"--storage {safe}: the URL holds a password, which would end up in shell "
                            "histories and process lists; drop it from the URL and give it through the "
                            f"environment variable {PASSWORD_ENV} or --db-password-file FILE (chmod 600)")
        if not auth:
            raise UserError("--storage: the PostgreSQL URL names no user; write postgresql://USER@HOST/DATABASE")
        spec = StorageSpec("postgresql", user=auth, host=match.group("host"),
                           port=int(match.group("port") or 5432), database=match.group("db"))
        spec._password = _password(spec, password_file)
        return spec
    raise UserError(f"--storage {url.split('@')[-1]!r}: not a storage gridflex knows; use none (a journal "
                    "file under runs/studies/), journal:PATH, or postgresql://USER@HOST[:PORT]/DATABASE")


def _password(spec: StorageSpec, password_file: Path | None) -> str:
    if password_file is not None:
        path = Path(password_file).expanduser()
        try:
            info = path.stat()
        except OSError:
            raise UserError(f"--db-password-file {path}: file not found or not readable") from None
        if not stat.S_ISREG(info.st_mode) or info.st_uid != os.getuid() or info.st_mode & 0o077:
            raise UserError(f"--db-password-file {path}: must be a file owned by you and readable by its "
                            f"owner only (mode {stat.S_IMODE(info.st_mode):o} now; run chmod 600 {path}), "
                            "so that no other user can read the database password")
        try:
            text = path.read_text().strip()
        except (OSError, UnicodeDecodeError):
            raise UserError(f"--db-password-file {path}: cannot be read as text") from None
        if not text:
            raise UserError(f"--db-password-file {path}: the file is empty")
        return text
    value = os.environ.get(PASSWORD_ENV)
    if not value:
        raise UserError(f"--storage {spec.display}: no password source; set the environment variable "
                        f"{PASSWORD_ENV} or give --db-password-file FILE (owned by you, chmod 600). The "
                        "password is never accepted inside the URL")
    return value


def _sqlalchemy_url(spec: StorageSpec) -> str:
    from sqlalchemy.engine import URL

    url = URL.create("postgresql+psycopg", username=spec.user, password=spec._password, host=spec.host,
                     port=spec.port, database=spec.database)
    return url.render_as_string(hide_password=False)


def open_storage(spec: StorageSpec, *, heartbeat_s: int = 60, max_retry: int = 3):
    """The Optuna storage of ``spec`` (creates the journal's folder and file privately)."""
    import optuna

    if spec.kind == "journal":
        from optuna.storages.journal import JournalFileBackend, JournalStorage

        path = spec.path
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.parent.resolve().name == "studies":
            os.chmod(path.parent, 0o700)
        os.close(os.open(path, os.O_CREAT | os.O_APPEND | os.O_WRONLY, 0o600))
        os.chmod(path, 0o600)
        old = os.umask(0o077)
        try:
            return JournalStorage(JournalFileBackend(str(path)))
        finally:
            os.umask(old)
    retry = retry_callback(max_retry)
    kwargs = {"heartbeat_interval": int(heartbeat_s), "grace_period": 3 * int(heartbeat_s)}
    try:
        with _quiet_optuna_warnings():
            try:
                return optuna.storages.RDBStorage(_sqlalchemy_url(spec), engine_kwargs={"pool_pre_ping": True},
                                                  heartbeat_stale_trial_callback=retry, **kwargs)
            except TypeError:  # optuna < 4.9: the same callback under its former name
                return optuna.storages.RDBStorage(_sqlalchemy_url(spec), engine_kwargs={"pool_pre_ping": True},
                                                  failed_trial_callback=retry, **kwargs)
    except Exception as exc:  # noqa: BLE001 - connection problems are the user's to fix
        raise UserError(f"--storage {spec.display}: cannot open the study database "
                        f"({type(exc).__name__}: {spec.scrub(_first_line(exc))}); check that the server "
                        f"runs, the user and database exist and {PASSWORD_ENV} / --db-password-file holds "
                        "the right password") from None


def retry_callback(max_retry: int):
    """Optuna's retry-on-stale-heartbeat callback (its pre-4.9 name on older Optuna)."""
    import optuna.storages as storages

    cls = getattr(storages, "RetryHeartbeatStaleTrialCallback", None) or storages.RetryFailedTrialCallback
    with _quiet_optuna_warnings():  # "experimental" since Optuna 2.8
        return cls(max_retry=max_retry)


@contextlib.contextmanager
def _quiet_optuna_warnings():
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # heartbeat_interval is "experimental" in Optuna
        yield


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:300] if text else ""


class CapLock:
    """A lock shared by every worker of one study (``with lock:``)."""

    def __init__(self, spec: StorageSpec, study: str):
        self.spec, self.study = spec, study
        self._fh = None
        self._conn = None
        if spec.kind == "journal":
            lock = spec.path.with_name(spec.path.name + ".gridflex-lock")
            fd = os.open(lock, os.O_CREAT | os.O_RDWR, 0o600)
            self._fh = os.fdopen(fd, "r+")
        else:
            import psycopg

            try:
                self._conn = psycopg.connect(host=spec.host, port=spec.port, user=spec.user,
                                             password=spec._password, dbname=spec.database, autocommit=True)
            except Exception as exc:  # noqa: BLE001
                raise UserError(f"--storage {spec.display}: cannot connect ({type(exc).__name__}: "
                                f"{spec.scrub(_first_line(exc))})") from None
            digest = hashlib.sha256(f"gridflex-tune:{study}".encode()).digest()
            self._key = int.from_bytes(digest[:8], "big", signed=True)

    def __enter__(self):
        if self._fh is not None:
            import fcntl

            fcntl.flock(self._fh, fcntl.LOCK_EX)
        else:
            self._conn.execute("SELECT pg_advisory_lock(%s)", (self._key,))
        return self

    def __exit__(self, *exc):
        if self._fh is not None:
            import fcntl

            fcntl.flock(self._fh, fcntl.LOCK_UN)
        else:
            self._conn.execute("SELECT pg_advisory_unlock(%s)", (self._key,))
        return False

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
        if self._conn is not None:
            self._conn.close()
