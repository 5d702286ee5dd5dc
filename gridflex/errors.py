"""Error types. A :class:`UserError` is a user's mistake: the CLI prints it and exits 2."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class GridflexError(Exception):
    """Base class of every error gridflex raises on purpose."""


class UserError(GridflexError):
    """A mistake in the user's input (scenario, CLI arguments, files); exit status 2."""


class PluginError(GridflexError):
    """A broken or conflicting plugin (duplicate component name, unknown hook, ...)."""


class ConvergenceError(GridflexError):
    """A power flow that did not converge where convergence is required (exit status 3)."""


def did_you_mean(given: str, allowed: Iterable[str]) -> str:
    """`` (did you mean 'x'?)`` for the closest allowed name, or an empty string."""
    close = difflib.get_close_matches(str(given), [str(a) for a in allowed], n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""
