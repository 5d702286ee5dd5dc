"""A learner's search space, owned by the learner (``Learner.search_space(trial)``).

* :func:`suggest` asks the learner for one trial's params and validates them with the learner's
  ``Config`` (a space that returns what its own ``Config`` refuses is a plugin bug: a
  :class:`~gridflex.errors.PluginError` naming the learner).
* :func:`first_trial_params` runs the space once on a recording trial that answers every
  ``suggest_*`` call with the learner's default for that name (its ``Config`` field default), so
  the defaults can be enqueued as the study's first trial. A field whose default is ``None``
  standing for another field's value by the naming rule ``X_family: None = X`` (e.g.
  ``rho_voltage: None`` means "as ``rho``") starts at ``X``'s default; otherwise (or when a
  default lies outside the declared range) the sampler picks the first trial's value.
* :func:`declared_names` says which trial parameters a space declares ({} means nothing to tune).
"""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from gridflex.errors import PluginError, UserError


class _RecordingTrial:
    """Duck-typed ``optuna.trial.Trial`` that answers with the learner's defaults."""

    def __init__(self, defaults: dict[str, Any]):
        self.defaults = defaults
        self.params: dict[str, Any] = {}  # name -> default within the range (enqueued)
        self.declared: list[str] = []

    def _default(self, name: str):
        value = self.defaults.get(name)
        if value is None and "_" in name:
            value = self.defaults.get(name.rsplit("_", 1)[0])
        return value

    def suggest_float(self, name, low, high, *, step=None, log=False):
        self.declared.append(name)
        value = self._default(name)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and low <= value <= high:
            self.params[name] = float(value)
            return float(value)
        return float(low)

    def suggest_int(self, name, low, high, *, step=1, log=False):
        self.declared.append(name)
        value = self._default(name)
        if isinstance(value, int) and not isinstance(value, bool) and low <= value <= high:
            self.params[name] = value
            return value
        return int(low)

    def suggest_categorical(self, name, choices):
        self.declared.append(name)
        value = self._default(name)
        if value in list(choices):
            self.params[name] = value
            return value
        return list(choices)[0]

    def report(self, *args, **kwargs):  # a space never reports, but be a harmless trial
        return None

    def set_user_attr(self, *args, **kwargs):
        return None


def _defaults(learner_cls) -> dict[str, Any]:
    try:
        return learner_cls.Config().model_dump(mode="json")
    except ValidationError:  # a Config with required fields: no defaults to start from
        return {}


def first_trial_params(learner_cls) -> dict[str, Any]:
    """The learner's defaults for the trial parameters its space declares (module docstring)."""
    trial = _RecordingTrial(_defaults(learner_cls))
    learner_cls.search_space(trial)
    return dict(trial.params)


def declared_names(learner_cls) -> list[str]:
    """Trial parameter names the learner's space declares, in its order."""
    trial = _RecordingTrial(_defaults(learner_cls))
    learner_cls.search_space(trial)
    return list(dict.fromkeys(trial.declared))


def require_space(learner_cls) -> list[str]:
    """The declared names; a :class:`UserError` when the learner declares nothing to tune."""
    if not learner_cls.trains:
        raise UserError(f"--learner {learner_cls.name}: it does not train (role {learner_cls.role!r}), "
                        "so there is nothing to tune; give a learner that trains, e.g. gradmap")
    names = declared_names(learner_cls)
    if not names:
        raise UserError(f"--learner {learner_cls.name}: it declares no search space "
                        "(Learner.search_space returns {}), so there is nothing to tune; a learner gets "
                        "tuning by declaring its space (docs/tuning.md, 'Search spaces')")
    return names


def suggest(learner_cls, trial) -> dict[str, Any]:
    """One trial's learner params, validated by the learner's ``Config``."""
    params = dict(learner_cls.search_space(trial))
    try:
        learner_cls.Config.model_validate(params)
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        raise PluginError(f"learner {learner_cls.name!r}: its search_space returned params that its own "
                          f"Config refuses ({'.'.join(map(str, first['loc']))}: {first['msg']}); fix "
                          "the plugin's search_space") from None
    return params
