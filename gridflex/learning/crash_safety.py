"""Crash safety of training: Ctrl-C stops after the current iteration with a checkpoint, and
policy files are read safely.

:class:`InterruptRequest` is installed by :meth:`gridflex.learning.training.Trainer.fit` while it
trains: the first SIGINT asks the loop to finish its iteration, write ``checkpoint.pt`` (learner
state, counters, history, RNG states and the best validation point, so ``--resume`` continues
exactly) and raise :class:`TrainingInterrupted`; the command line then says how to resume and
exits 130. :func:`read_policy` loads ``policy.pt`` with ``torch.load(..., weights_only=True)`` and
turns a damaged or tampered file into a :class:`~gridflex.errors.UserError` (exit 2).
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from gridflex.errors import UserError


def read_policy(path: Path, map_location=None) -> dict:
    """A ``policy.pt`` (``{"learner": state dict, "history_index": int}``) loaded with
    ``weights_only=True``; missing, damaged, tampered (a pickle that is more than tensors and
    plain containers) or foreign files are a :class:`UserError` naming the file."""
    path = Path(path)
    remedy = "re-create it with `gridflex run` (or --resume the run, which rewrites it)"
    if not path.is_file():
        raise UserError(f"policy file {path} does not exist; {remedy}")
    try:
        state = torch.load(path, weights_only=True, map_location=map_location)
    except Exception as exc:  # noqa: BLE001 - any failure here is a damaged or unsafe file
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(f"policy file {path} was refused: it is damaged or not a file that "
                        f"torch.load(..., weights_only=True) accepts (only tensors and plain "
                        f"containers are loaded, never code; {type(exc).__name__}: {reason[:200]}); "
                        f"{remedy}") from None
    if not isinstance(state, dict) or not isinstance(state.get("learner"), dict):
        raise UserError(f"policy file {path} is not a gridflex policy (no 'learner' state dict); {remedy}")
    return state


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C during training: the checkpoint at ``iteration`` was written to ``checkpoint``
    (``None`` without a run folder); the command line exits 130 and says how to resume."""

    def __init__(self, checkpoint: Path | None, iteration: int):
        super().__init__(f"training interrupted at iteration {iteration}")
        self.checkpoint, self.iteration = checkpoint, iteration


class InterruptRequest:
    """While training: the first SIGINT (Ctrl-C) asks the loop to stop after the current
    iteration, with a checkpoint (``requested``); a second one stops at once (the checkpoint of
    the last validation point stays). Only in the main thread; the previous handler is restored."""

    def __init__(self, say: bool = True):
        self.requested = False
        self.say = say
        self._previous = None

    def __enter__(self):
        import signal
        import threading

        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        if self.say:
            print("\ngridflex: Ctrl-C: stopping after this iteration to write a checkpoint "
                  "(press Ctrl-C again to stop at once)", file=sys.stderr, flush=True)

    def __exit__(self, *exc):
        import signal

        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
        return False
