"""``gridflex report``: one self-contained page (HTML, Markdown, JSON, PNGs) from comparison and
run folders; see docs/report.md.

``collect`` reads folders, ``aggregate`` computes the interval estimates (rliable), ``figures``
and ``feeder_map`` draw, ``page`` writes HTML and Markdown, ``build`` ties them together.
"""

from __future__ import annotations

__all__ = ["build_report"]


def build_report(*args, **kwargs):
    """See :func:`gridflex.report.build.build_report`."""
    from gridflex.report.build import build_report as build

    return build(*args, **kwargs)
