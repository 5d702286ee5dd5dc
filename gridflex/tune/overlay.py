"""The tuned-parameters overlay: a scenario fragment ``learner: {type, params}`` in YAML.

``gridflex tune`` writes one for the best trial; ``gridflex run --params FILE`` and
``gridflex compare --params FILE`` read it. It is validated like any scenario part: strict YAML
(duplicate keys refused), only the ``learner`` section, a known learner ``type``, ``params``
checked by the learner's own ``Config`` (unknown keys and out-of-range values reported at their
YAML paths). Any mistake is a :class:`~gridflex.errors.UserError` naming the file: exit 2.

Precedence in a run: the scenario file < the overlay < ``-o`` overrides. When the overlay names
another learner than the scenario, the scenario's learner params are dropped (the same rule as
``gridflex compare``), so only the overlay's params and the learner's defaults apply.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from gridflex.errors import UserError, did_you_mean
from gridflex.scenario import ScenarioError, read_yaml_mapping
from gridflex.scenario.problems import problems_from_validation_error

FORMAT_HINT = "an overlay holds only `learner: {type: NAME, params: {KEY: VALUE, ...}}` (docs/tuning.md)"


@dataclass(frozen=True)
class Overlay:
    """A validated overlay: the learner it is for and its params (JSON-ready values)."""

    learner: str
    params: dict[str, Any]
    source: Path

    def overrides(self, scenario_learner: str | None) -> list[str]:
        """Dotted overrides that apply the overlay to a scenario whose learner is
        ``scenario_learner`` (JSON values are YAML, so they parse back unchanged)."""
        out = [f"learner.type={self.learner}"]
        if scenario_learner != self.learner:
            out.append("learner.params={}")
        out += [f"learner.params.{key}={json.dumps(value)}" for key, value in self.params.items()]
        return out


def read_overlay(path: str | Path, registry: Any) -> Overlay:
    """Read and validate an overlay file (see the module docstring)."""
    path = Path(path).expanduser()
    where = f"--params {path}"
    if not path.exists():
        raise UserError(f"{where}: file not found; give the tuned.yaml that `gridflex tune` wrote "
                        f"(runs/studies/<study>/tuned.yaml) or a file of the same form: {FORMAT_HINT}")
    try:
        data = read_yaml_mapping(path)
    except ScenarioError as exc:
        problems = "; ".join(str(p) for p in exc.problems)
        raise UserError(f"{where}: not a readable overlay ({problems}); {FORMAT_HINT}") from None
    except UserError as exc:
        raise UserError(f"{where}: {exc}; {FORMAT_HINT}") from None
    extra = sorted(set(data) - {"learner"})
    learner = data.get("learner")
    if extra or not isinstance(learner, dict):
        what = f"unexpected top-level key(s) {', '.join(extra)}" if extra else "no `learner` mapping"
        raise UserError(f"{where}: {what}; {FORMAT_HINT}")
    bad = sorted(set(learner) - {"type", "params"})
    name, params = learner.get("type"), learner.get("params", {})
    if bad or not isinstance(name, str) or not isinstance(params, dict):
        problem = (f"unexpected key(s) learner.{', learner.'.join(bad)}" if bad else
                   "learner.type must be a learner name" if not isinstance(name, str) else
                   "learner.params must be a mapping")
        raise UserError(f"{where}: {problem}; {FORMAT_HINT}")
    allowed = registry.names("learner")
    if name not in allowed:
        raise UserError(f"{where}: learner.type: unknown learner {name!r}{did_you_mean(name, allowed)}; "
                        f"installed: {', '.join(allowed)}")
    config = registry.get("learner", name).Config
    try:
        config.model_validate(params)
    except ValidationError as exc:
        problems = problems_from_validation_error(exc, config, prefix=("learner", "params"))
        raise UserError(f"{where}: {len(problems)} invalid value(s) for learner {name!r}: "
                        + "; ".join(str(p) for p in problems)) from None
    return Overlay(name, dict(params), path)


def write_overlay(path: Path, learner: str, params: dict[str, Any], header: list[str]) -> Path:
    """Write an overlay (``header`` lines become YAML comments: where the values came from)."""
    body = yaml.safe_dump({"learner": {"type": learner, "params": params}}, sort_keys=False)
    path.write_text("".join(f"# {line}\n" for line in header) + body)
    return path

