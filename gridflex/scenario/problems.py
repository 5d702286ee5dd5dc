"""Scenario validation problems: one per YAML path, all reported together in one error."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ValidationError

from gridflex.errors import UserError, did_you_mean

# --------------------------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Problem:
    """One validation problem at a YAML path."""

    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path or '<top level>'}: {self.message}"


class ScenarioError(UserError):
    """Every problem found in one scenario file, in one report."""

    def __init__(self, source: str, problems: list[Problem]):
        self.source = source
        self.problems = problems
        n = len(problems)
        lines = [f"scenario {source} is invalid ({n} problem{'s' if n != 1 else ''}):"]
        lines += [f"  - {p}" for p in problems]
        super().__init__("\n".join(lines))


def yaml_path(loc: tuple[Any, ...]) -> str:
    """``('devices', 2, 'params', 'p_max_kw')`` -> ``'devices[2].params.p_max_kw'``."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


def short_repr(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _model_at(model: type[BaseModel], loc: tuple[Any, ...]) -> type[BaseModel] | None:
    """The pydantic model that holds the last key of ``loc`` (for listing allowed keys)."""
    current: Any = model
    for part in loc[:-1]:
        if isinstance(part, int):
            continue
        if not (isinstance(current, type) and issubclass(current, BaseModel)):
            return None
        info = current.model_fields.get(part)
        if info is None:
            return None
        current = _inner_model(info.annotation)
    return current if isinstance(current, type) and issubclass(current, BaseModel) else None


def _inner_model(annotation: Any) -> Any:
    """Unwrap ``list[X]``, ``X | None`` to the model class X, if any."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()):
        found = _inner_model(arg)
        if found is not None:
            return found
    return None


def problems_from_validation_error(
    exc: ValidationError, model: type[BaseModel], prefix: tuple[Any, ...] = ()
) -> list[Problem]:
    """Turn pydantic's errors into :class:`Problem` s with YAML paths and suggestions."""
    problems = []
    for err in exc.errors(include_url=False):
        loc = tuple(err["loc"])
        path = yaml_path(prefix + loc)
        kind = err["type"]
        if kind == "extra_forbidden":
            holder = _model_at(model, loc)
            allowed = sorted(holder.model_fields) if holder else []
            key = loc[-1]
            msg = f"unknown key {key!r}{did_you_mean(key, allowed)}"
            if allowed:
                msg += f"; allowed keys: {', '.join(allowed)}"
        elif kind == "missing":
            msg = "required key is missing"
        elif kind == "value_error":
            msg = err["msg"].removeprefix("Value error, ")
        elif kind in ("tuple_type", "too_short", "too_long") and len(loc) and not isinstance(loc[-1], int):
            # every tuple field of a scenario or component is a pair: a range [lo, hi] / [min, max]
            value = err.get("input")
            got = short_repr(value) if isinstance(value, (list, tuple)) else f"{with_article(type(value).__name__)}, {short_repr(value)}"
            msg = f"expected a [lo, hi] range (a list of two numbers, e.g. [5.0, 13.5]), got {got}"
        else:
            msg = f"{err['msg']} (got {short_repr(err.get('input'))})"
        problems.append(Problem(path, msg))
    return problems

def with_article(kind: str) -> str:
    """``kind`` with its indefinite article: "an int", "a list"."""
    return f"{'an' if kind[:1].lower() in 'aeiou' else 'a'} {kind}"
