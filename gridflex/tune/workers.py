"""The worker loop: trials shared by N workers, an exact cap, stale trials retried once each.

Every worker (a ``gridflex tune`` process, or one of its ``--jobs``) repeats, under the study's
:class:`~gridflex.tune.storage.CapLock`:

1. fail the stale trials and enqueue their retries: on PostgreSQL those whose heartbeat stopped
   for the grace period (``optuna.storages.fail_stale_trials`` with the storage's
   retry-on-stale-heartbeat callback); on a journal file those whose worker process (recorded as
   ``user_attrs["worker"] = host:pid:start``) no longer exists on this machine, failed and
   retried with the same callback. A retry is a ``WAITING`` copy of the trial's params;
2. count the finished trials (``COMPLETE`` and ``PRUNED``) and the ``RUNNING`` ones; stop when
   ``finished >= cap``; start a trial (``study.ask()``, which takes a waiting retry first) only
   when ``finished + running < cap``, else wait and look again (a running trial may still die).

Because counting and starting happen under one lock, no two workers can both take the last slot,
so the study ends with exactly ``cap`` finished trials (Optuna's ``MaxTrialsCallback`` stops a
worker only *after* its trial, so concurrent workers may overshoot the cap; it is not used). A
failed trial is never counted and its retry runs its params again: none lost, none duplicated.
While a trial runs on PostgreSQL a thread records its heartbeat every ``heartbeat_s``.
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time
from dataclasses import dataclass
from typing import Callable

WORKER_ATTR = "worker"


@dataclass
class Counts:
    """Trials of a study by state."""

    complete: int = 0
    pruned: int = 0
    failed: int = 0
    running: int = 0
    waiting: int = 0

    @property
    def finished(self) -> int:
        return self.complete + self.pruned


def count_states(study) -> Counts:
    from optuna.trial import TrialState

    counts = Counts()
    names = {TrialState.COMPLETE: "complete", TrialState.PRUNED: "pruned", TrialState.FAIL: "failed",
             TrialState.RUNNING: "running", TrialState.WAITING: "waiting"}
    for trial in study.get_trials(deepcopy=False):
        name = names.get(trial.state)
        if name:
            setattr(counts, name, getattr(counts, name) + 1)
    return counts


def _start_ticks(pid: int) -> str:
    """The process's start time in clock ticks since boot (tells a reused pid apart)."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return "?"


def worker_id() -> str:
    """``host:pid:start`` of this process."""
    return f"{socket.gethostname()}:{os.getpid()}:{_start_ticks(os.getpid())}"


def worker_alive(worker: str) -> bool | None:
    """Whether the process ``worker`` still runs; ``None`` when it ran on another machine."""
    try:
        host, pid, start = worker.rsplit(":", 2)
        pid_i = int(pid)
    except ValueError:
        return None
    if host != socket.gethostname():
        return None
    try:
        os.kill(pid_i, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return start == "?" or _start_ticks(pid_i) == start


def reap_stale(study, kind: str, retry: Callable, grace_s: float = 60.0) -> list[int]:
    """Fail stale running trials (see the module docstring); returns their numbers. A running
    trial with no worker recorded (its worker died between ``ask`` and recording itself, inside
    the lock) is stale once it is older than ``grace_s``, on either storage."""
    import datetime

    import optuna
    from optuna.trial import TrialState

    running = [t for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))]
    reaped = []
    if kind == "postgresql":
        optuna.storages.fail_stale_trials(study)
        still = {t.number for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))}
        reaped = [t.number for t in running if t.number not in still]
        running = [t for t in running if t.number in still]
    storage = study._storage  # noqa: SLF001 - Optuna exposes no public "fail this trial" call
    for trial in running:
        worker = trial.user_attrs.get(WORKER_ATTR)
        start = trial.datetime_start
        orphan = not worker and start is not None and \
            (datetime.datetime.now(tz=start.tzinfo) - start).total_seconds() > grace_s
        if orphan or (kind != "postgresql" and worker and worker_alive(worker) is False):
            if storage.set_trial_state_values(trial._trial_id, TrialState.FAIL):  # noqa: SLF001
                retry(study, storage.get_trial(trial._trial_id))  # noqa: SLF001
                reaped.append(trial.number)
    return reaped


class _Heartbeat:
    """Records a trial's heartbeat every ``interval_s`` on storages that have heartbeats."""

    def __init__(self, storage, trial_id: int, interval_s: float):
        self.storage, self.trial_id, self.interval_s = storage, trial_id, interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, daemon=True)

    def _beat(self):
        while not self._stop.wait(self.interval_s):
            with contextlib.suppress(Exception):  # a missed beat is retried at the next interval
                self.storage.record_heartbeat(self.trial_id)

    def __enter__(self):
        self.storage.record_heartbeat(self.trial_id)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        return False


def work(study, objective: Callable, *, cap: int, lock, kind: str, retry: Callable, heartbeat_s: float,
         on_trial: Callable | None = None, poll_s: float | None = None) -> Counts:
    """Run trials of ``study`` until it holds ``cap`` finished trials (module docstring)."""
    import optuna
    from optuna.trial import TrialState

    import warnings

    # Optuna warns that heartbeats are "supposed to be used with Study.optimize"; this loop records
    # them itself (_Heartbeat), which is what optimize does
    warnings.filterwarnings("ignore", message="Heartbeat of storage")
    me = worker_id()
    poll_s = poll_s if poll_s is not None else min(2.0, heartbeat_s)
    while True:
        with lock:
            reap_stale(study, kind, retry, grace_s=max(60.0, 3 * heartbeat_s))
            counts = count_states(study)
            if counts.finished >= cap:
                return counts
            trial = None
            if counts.finished + counts.running < cap:
                trial = study.ask()
                if kind == "postgresql":  # at once: a trial is never without a heartbeat
                    study._storage.record_heartbeat(trial._trial_id)  # noqa: SLF001
                trial.set_user_attr(WORKER_ATTR, me)
        if trial is None:
            time.sleep(poll_s)
            continue
        beat = _Heartbeat(study._storage, trial._trial_id, heartbeat_s) if kind == "postgresql" \
            else contextlib.nullcontext()  # noqa: SLF001
        try:
            with beat:
                values = objective(trial)
        except optuna.TrialPruned:
            frozen = study.tell(trial, state=TrialState.PRUNED)
        except BaseException:
            study.tell(trial, state=TrialState.FAIL)
            raise
        else:
            frozen = study.tell(trial, values)
        if on_trial is not None:
            on_trial(study, frozen)
