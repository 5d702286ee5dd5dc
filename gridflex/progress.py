"""Progress of long steps, for people at a terminal and for logs.

On a terminal a :class:`Progress` is a tqdm bar that keeps its final figures when it closes; when
the stream is not a terminal (a log file, CI, a pipe) it writes one plain line per
:meth:`Progress.step`, each with the elapsed time, so a log shows what happened and when.
Everything goes to standard error, so standard output keeps only results.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO


def _is_terminal(stream: TextIO) -> bool:
    isatty = getattr(stream, "isatty", None)
    try:
        return bool(isatty and isatty())
    except ValueError:  # a closed stream
        return False


class Progress:
    """One long step: ``total`` units (``unit``: "s", "it", "days" ...) described by ``desc``.

    ``step(done, note)`` reports how far it got; ``close(note)`` ends it with a final line.
    ``enabled=False`` makes every call a no-op.
    """

    def __init__(self, desc: str, total: float | None = None, unit: str = "", *, enabled: bool = True,
                 stream: TextIO | None = None):
        self.desc, self.total, self.unit = desc, total, unit
        self.enabled = enabled
        self.stream = stream if stream is not None else sys.stderr
        self.start = time.perf_counter()
        self._bar = None
        if enabled and _is_terminal(self.stream):
            from tqdm.auto import tqdm

            self._bar = tqdm(total=total, desc=desc, unit=unit, leave=True, file=self.stream,
                             mininterval=1.0, bar_format="{desc}: {percentage:3.0f}%|{bar}| "
                             "{n:.0f}/{total:.0f} " + unit + " [{elapsed}]{postfix}")

    def elapsed_s(self) -> float:
        return time.perf_counter() - self.start

    def _amount(self, done: float | None) -> str:
        if done is None:
            return ""
        total = f"/{self.total:.0f}" if self.total is not None else ""
        return f" {done:.0f}{total} {self.unit}".rstrip()

    def step(self, done: float | None = None, note: str = "") -> None:
        """Progress to ``done`` units, with a short ``note`` (figures of the step)."""
        if not self.enabled:
            return
        if self._bar is not None:
            if done is not None:
                self._bar.n = min(done, self.total) if self.total is not None else done
            self._bar.set_postfix_str(note, refresh=False)
            self._bar.refresh()
            return
        amount = self._amount(done)
        text = f"{self.desc}:{amount}" + (f", {note}" if note else "") if amount or note else f"{self.desc} ..."
        print(f"{text} (elapsed {self.elapsed_s():.1f} s)", file=self.stream, flush=True)

    def close(self, note: str = "") -> None:
        """End the step; the bar keeps its last figures, a log gets a closing line."""
        if not self.enabled:
            return
        if self._bar is not None:
            if note:
                self._bar.set_postfix_str(note, refresh=False)
            self._bar.close()
            return
        print(f"{self.desc}: done" + (f", {note}" if note else "") + f" (elapsed {self.elapsed_s():.1f} s)",
              file=self.stream, flush=True)
