"""Shared studies survive killed workers: issue #15 item 4 (storage), on a real PostgreSQL server
and on the embedded journal file.

CI (.ci/run) starts PostgreSQL through .ci/postgres.sh and exports GRIDFLEX_TEST_PG_*; elsewhere the
test extra's pgserver binaries start a throwaway server (tests/pg_server.py). Without a
reachable server these tests FAIL: a missing feature never hides behind a skip.

One test per backend: two workers share a study with a cap of 5 finished trials; worker A is
killed with SIGKILL in the middle of a trial; worker B fails it as stale (PostgreSQL: its
heartbeat stopped for 3 s; journal: its process is gone) and runs its retry; B is killed too in
the middle of a trial, so every worker has died; the same command once more (worker C) resumes
and ends the study with exactly 5 finished trials: every failed trial's params finished exactly
once in a retry, nothing left running or waiting. On PostgreSQL the database password is then
looked for, and must not be found, in every worker's output, every file of the summary folder and
the messages of the refusals.
"""

from __future__ import annotations

import os
import signal
import uuid
from pathlib import Path

import pytest

from tune_helpers import start_worker, trials_of, tune_argv, wait_for, write_tiny

CAP = 5


def _pg_params() -> dict | None:
    keys = ("HOST", "PORT", "USER", "DB", "PASSWORD")
    values = {k.lower(): os.environ.get(f"GRIDFLEX_TEST_PG_{k}") for k in keys}
    return values if all(values.values()) else None


@pytest.fixture(scope="module")
def pg():
    """The database's connection parts: CI's server (GRIDFLEX_TEST_PG_*), else a throwaway server
    from the test extra's pgserver binaries (tests/pg_server.py); fail when neither is reachable."""
    params = _pg_params()
    why, stop = None, None
    if params is None:
        import tempfile

        import pg_server

        try:  # a short path: PostgreSQL's socket names are limited to ~100 characters
            params, stop = pg_server.start(Path(tempfile.mkdtemp(prefix="gfpg")))
        except Exception as exc:  # noqa: BLE001 - reported below, with the way out
            why = f"GRIDFLEX_TEST_PG_* are not set and no throwaway server started ({type(exc).__name__}: {exc})"
    if params is not None:
        import psycopg

        try:
            psycopg.connect(host=params["host"], port=int(params["port"]), user=params["user"],
                            password=params["password"], dbname=params["db"], connect_timeout=5).close()
        except Exception as exc:  # noqa: BLE001
            why = f"cannot connect ({type(exc).__name__})"
    if why is not None:
        message = (f"PostgreSQL is needed for the shared-study tests and is not reachable: {why}. Start it "
                   "with `source .ci/postgres.sh` (installs and starts PostgreSQL, exports "
                   "GRIDFLEX_TEST_PG_*), or install the test extra (its pgserver wheel starts a "
                   "throwaway server)")
        pytest.fail(message)
    yield params
    if stop is not None:
        stop()


@pytest.fixture(params=["journal", "postgresql"])
def backend(request, tmp_path):
    """(name, --storage URL, extra environment, an Optuna storage to look into the study)."""
    if request.param == "journal":
        from optuna.storages.journal import JournalFileBackend, JournalStorage

        path = tmp_path / "shared.journal"
        url = f"journal:{path}"
        path.touch(mode=0o600)
        return "journal", url, {}, JournalStorage(JournalFileBackend(str(path)))
    pg = request.getfixturevalue("pg")
    import optuna
    from sqlalchemy.engine import URL

    url = f"postgresql://{pg['user']}@{pg['host']}:{pg['port']}/{pg['db']}"
    sa_url = URL.create("postgresql+psycopg", username=pg["user"], password=pg["password"], host=pg["host"],
                        port=int(pg["port"]), database=pg["db"]).render_as_string(hide_password=False)
    return "postgresql", url, {"GRIDFLEX_DB_PASSWORD": pg["password"]}, optuna.storages.RDBStorage(sa_url)


def _running_of(storage, study: str, pid: int):
    """The trial worker ``pid`` is training (its params all drawn: in the middle of the trial)."""
    return next((t for t in trials_of(storage, study) if t.state.name == "RUNNING"
                 and f":{pid}:" in t.user_attrs.get("worker", "") and "learner_params" in t.user_attrs), None)


def test_killed_workers_trials_are_retried_and_the_study_resumes(backend, tmp_path):
    name, url, env_extra, storage = backend
    scenario = write_tiny(tmp_path)
    study = f"kill-{name}-{uuid.uuid4().hex[:8]}"
    argv = tune_argv(scenario, study, CAP, "--storage", url, "--heartbeat-s", "1", iterations=6)
    env = dict(os.environ, **env_extra)
    logs = [tmp_path / f"{w}.log" for w in "ABC"]
    a = start_worker(argv + ["--no-summary"], tmp_path, env, logs[0])
    b = start_worker(argv + ["--no-summary", "--worker-index", "1"], tmp_path, env, logs[1])
    try:
        victim_a = wait_for(lambda: _running_of(storage, study, a.pid), 90, "worker A to run a trial")
        a.send_signal(signal.SIGKILL)
        a.wait()
        # B fails A's trial as stale and enqueues its retry (the same params, WAITING, then RUNNING)
        wait_for(lambda: any(t.system_attrs.get("failed_trial") == victim_a.number
                             for t in trials_of(storage, study)), 60, "the retry of A's trial")
        victim_b = wait_for(lambda: _running_of(storage, study, b.pid), 60, "worker B to run a trial")
        b.send_signal(signal.SIGKILL)
        b.wait()
    finally:
        for proc in (a, b):
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    states = {t.number: t.state.name for t in trials_of(storage, study)}
    assert states[victim_a.number] == "FAIL" and states[victim_b.number] == "RUNNING"  # all workers died

    # the next command resumes the study (PostgreSQL: the password from a private file this time)
    extra: list[str] = []
    env_c = dict(env)
    if name == "postgresql":
        secret = tmp_path / "db_password"
        secret.write_text(env_extra["GRIDFLEX_DB_PASSWORD"] + "\n")
        secret.chmod(0o600)
        env_c.pop("GRIDFLEX_DB_PASSWORD")
        extra = ["--db-password-file", str(secret)]
    c = start_worker(argv + extra + ["--out", str(tmp_path / "summary")], tmp_path, env_c, logs[2])
    assert c.wait(timeout=180) == 0, logs[2].read_text()

    trials = trials_of(storage, study)
    finished = [t for t in trials if t.state.name in ("COMPLETE", "PRUNED")]
    failed = [t for t in trials if t.state.name == "FAIL"]
    assert len(finished) == CAP, f"{len(finished)} finished trials, cap {CAP}: {[t.state.name for t in trials]}"
    assert not [t for t in trials if t.state.name in ("RUNNING", "WAITING")]
    assert {victim_a.number, victim_b.number} <= {t.number for t in failed}
    for dead in failed:  # none lost: each failed trial's params finished in exactly one retry
        retries = [t for t in finished if dead.number in t.system_attrs.get("retry_history", [])]
        assert len(retries) == 1, (dead.number, [t.number for t in retries])
        assert retries[0].params == dead.params
    lineages = [t.system_attrs.get("failed_trial") for t in finished if "failed_trial" in t.system_attrs]
    assert len(lineages) == len(set(lineages))  # none duplicated
    summary = (tmp_path / "summary" / "summary.json").read_text()
    assert f'"finished": {CAP}' in summary

    if name == "postgresql":  # the password appears nowhere a user or a log could see it
        password = env_extra["GRIDFLEX_DB_PASSWORD"]
        seen = [p for p in logs + sorted((tmp_path / "summary").iterdir()) if password.encode() in p.read_bytes()]
        assert not seen, f"the database password leaked into {seen}"


def test_refusals_never_show_the_password(pg, tmp_path, cli, monkeypatch):
    scenario = write_tiny(tmp_path)
    monkeypatch.chdir(tmp_path)
    url = f"postgresql://{pg['user']}@{pg['host']}:{pg['port']}/{pg['db']}"
    wrong = "wrong-" + pg["password"][:8] + "-secret"
    monkeypatch.setenv("GRIDFLEX_DB_PASSWORD", wrong)
    code, out, err = cli(*tune_argv(scenario, "refused", 1, "--storage", url))
    assert code == 2 and "cannot" in err and wrong not in out + err and "Traceback" not in err
    inline = f"postgresql://{pg['user']}:{pg['password']}@{pg['host']}/{pg['db']}"
    code, out, err = cli(*tune_argv(scenario, "refused", 1, "--storage", inline))
    assert code == 2 and "holds a password" in err and pg["password"] not in out + err
    loose = tmp_path / "loose_password"
    loose.write_text(pg["password"])
    loose.chmod(0o644)
    monkeypatch.delenv("GRIDFLEX_DB_PASSWORD")
    code, out, err = cli(*tune_argv(scenario, "refused", 1, "--storage", url, "--db-password-file", str(loose)))
    assert code == 2 and "chmod 600" in err and pg["password"] not in out + err
    code, out, err = cli(*tune_argv(scenario, "refused", 1, "--storage", url))
    assert code == 2 and "no password source" in err
    assert not Path(tmp_path / "runs").exists()  # nothing was written by a refused command
