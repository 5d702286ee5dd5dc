"""Aggregates over seeds with intervals (rliable), for one :class:`~gridflex.report.collect.Section`.

Everything here is a plain number or list, ready for ``report.json``. The statistics follow
Agarwal et al., "Deep RL at the edge of the statistical precipice" (NeurIPS 2021), through their
maintained library **rliable**:

* **IQM**: interquartile mean over a learner's runs (``rliable.metrics.aggregate_iqm``: the mean
  of the middle 50 %, scipy's ``trim_mean(x, 0.25)``; with fewer than 4 runs nothing is trimmed
  and it is the mean), with a 95 % percentile stratified-bootstrap interval
  (``rliable.library.get_interval_estimates``, :data:`BOOTSTRAP_REPS` resamples, fixed seed).
  The bootstrap calls the statistic thousands of times, so it gets a plain-numpy copy of
  rliable's (:func:`iqm`, :func:`improvement`: 10-50 times faster than scipy's per call), checked
  equal to rliable's own on the data of every call of this module (:func:`checked`).
* **Censoring** (time to target): a run that never met the target counts at its budget (its
  ``train_seconds``, its ``env_gradient_evaluations``); its true time is larger, so the IQM and
  both interval ends are then **lower bounds** (``lower_bound: true``, ``n_censored``).
* **Probability of improvement** ``P(X < Y)`` of :data:`HEADLINE` over each other learner on a
  lower-is-better metric: rliable's ``probability_of_improvement`` (Mann-Whitney U statistic / (n_x n_y),
  ties count 1/2) on negated values, interval by the independent stratified bootstrap of both
  learners' runs. For time to target a censored run ranks as +infinity (slower than any run that
  met the target; two censored runs tie), which a rank statistic can do exactly.
* **Performance profile** of time to target: the fraction of a learner's runs that met the
  target within tau (training seconds, or environment gradients), i.e. the empirical distribution
  function of time to target, censored runs never counted; 95 % bootstrap band over runs.
* **Speed-up ratios** IQM(other) / IQM(:data:`HEADLINE`) of time to target, for the pairs of
  :data:`SPEEDUP_PAIRS` that are present, interval by the independent stratified bootstrap
  (``StratifiedIndependentBootstrap`` through ``get_interval_estimates``) of both learners' runs.
  Censored runs in the numerator only: a lower bound; in the denominator only: an upper bound;
  in both: no bound (``bound``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from gridflex.errors import UserError
from gridflex.report.collect import RunRecord, Section

BOOTSTRAP_REPS = 2000
CONFIDENCE = 0.95
BOOTSTRAP_SEED = 0
HEADLINE = "gradmap"
#: (numerator, denominator) learners of the speed-up ratios; gradmap_e1 / gradmap is GradMAP's
#: reuse factor (one policy update per environment gradient against several).
SPEEDUP_PAIRS = (("ssl_pd", HEADLINE), ("ssl_penalty", HEADLINE), ("gradmap_e1", HEADLINE))
PROFILE_POINTS = 101


@dataclass(frozen=True)
class Metric:
    """A per-run number: ``key`` in report.json, its label and unit, ``kind`` (the format of
    :func:`gridflex.report.html.fmt`), and for times to target the metrics.json key of the
    budget a censored run counts at."""

    key: str
    label: str
    kind: str
    budget_key: str | None = None


METRICS = (
    Metric("time_to_target_s", "time to target (training s)", "seconds", "train_seconds"),
    Metric("gradients_to_target", "env gradients to target", "count", "env_gradient_evaluations"),
    Metric("test_cost_per_day", "test cost (EUR/day)", "money"),
    Metric("test_violation_rate", "test voltage violations", "rate"),
    Metric("test_regulated_violation_rate", "test voltage violations, regulated taps", "rate"),
    Metric("line_overload_rate", "test line overloads", "rate"),
)
TIME_METRICS = ("time_to_target_s", "gradients_to_target")
IMPROVEMENT_METRICS = ("test_cost_per_day", "test_violation_rate", "time_to_target_s")


def _rliable():
    try:
        from rliable import library, metrics
    except ImportError as exc:
        raise UserError(f"`gridflex report` needs rliable ({exc}); install the report extra: "
                        "pip install 'gridflex[report]'") from None
    return library, metrics


def run_values(run: RunRecord) -> dict[str, float | None]:
    """The run's value of every :data:`METRICS` key (None: not defined for this run)."""
    test = run.metrics.get("test") or {}
    regulated = run.metrics.get("test_regulated") or {}
    return {
        "time_to_target_s": run.time_to_target_s,
        "gradients_to_target": run.gradients_to_target,
        "test_cost_per_day": _num(test.get("cost_per_day")),
        "test_violation_rate": _num(test.get("voltage_violation_rate")),
        "test_regulated_violation_rate": _num(regulated.get("voltage_violation_rate")),
        "line_overload_rate": _num(test.get("line_overload_rate")),
    }


def _num(value) -> float | None:
    return None if value is None or isinstance(value, bool) else float(value)


def uses_gradients(runs: list[RunRecord]) -> bool:
    """Whether the learner spends environment gradients (an RL learner, e.g. ippo, spends none:
    its time to target in gradients is not defined)."""
    return any(bool(r.metrics.get("env_gradient_evaluations")) for r in runs)


def censored_values(runs: list[RunRecord], metric: Metric) -> tuple[np.ndarray, np.ndarray]:
    """Time to target per run ``[n]`` with a censored run at its budget, and the censored mask."""
    values, censored = [], []
    for run in runs:
        value = run_values(run)[metric.key]
        censored.append(value is None)
        values.append(float(run.metrics.get(metric.budget_key) or 0.0) if value is None else value)
    return np.asarray(values, dtype=float), np.asarray(censored, dtype=bool)


def _interval(library, metrics, scores: dict[str, object], func) -> tuple[dict, dict]:
    """rliable's point estimate and percentile interval of ``func``, seeded (arch's notice that
    ``random_state`` will be renamed is silenced: it is rliable's call).

    rliable 1.2's ``StratifiedBootstrap.update_indices`` draws from numpy's *global* generator and
    ignores ``random_state``, so the global generator is seeded here too (and restored after):
    the same folders give the same intervals to the last digit."""
    import warnings

    saved = np.random.get_state()
    np.random.seed(BOOTSTRAP_SEED)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="random_state is deprecated", category=FutureWarning)
            return library.get_interval_estimates(scores, func, reps=BOOTSTRAP_REPS,
                                                  confidence_interval_size=CONFIDENCE,
                                                  random_state=np.random.RandomState(BOOTSTRAP_SEED))
    finally:
        np.random.set_state(saved)


def iqm(scores: np.ndarray) -> float:
    """Interquartile mean of ``scores`` (any shape, flattened): ``rliable.metrics.aggregate_iqm``,
    i.e. ``scipy.stats.trim_mean(scores, 0.25, axis=None)``, in plain numpy (the bootstrap calls
    it thousands of times; :func:`checked` compares it with rliable's on the data)."""
    flat = np.sort(np.asarray(scores, dtype=float).ravel())
    cut = int(0.25 * flat.size)
    return float(np.mean(flat[cut: flat.size - cut]))


def improvement(scores_x: np.ndarray, scores_y: np.ndarray) -> float:
    """P(X > Y) + P(X = Y) / 2 over all run pairs, one task: rliable's
    ``probability_of_improvement`` (Mann-Whitney U / (n_x n_y)) in plain numpy (see :func:`iqm`)."""
    x, y = np.asarray(scores_x, dtype=float)[:, 0], np.asarray(scores_y, dtype=float)[:, 0]
    if np.array_equal(x, y):
        return 0.5  # rliable's convention for identical samples
    greater = x[:, None] > y[None, :]
    equal = x[:, None] == y[None, :]
    return float(np.mean(greater + 0.5 * equal))


def checked(metrics, *args) -> None:
    """Assert that the numpy statistics equal rliable's on this data (IQM with one argument,
    probability of improvement with two)."""
    if len(args) == 1:
        ours, theirs = iqm(args[0]), float(metrics.aggregate_iqm(args[0]))
    else:
        ours, theirs = improvement(*args), float(metrics.probability_of_improvement(*args))
    if not math.isclose(ours, theirs, rel_tol=1e-9, abs_tol=1e-12):
        raise AssertionError(f"statistic differs from rliable's: {ours} != {theirs}")


def learner_aggregates(runs: list[RunRecord]) -> dict[str, dict]:
    """Per metric: ``iqm`` with ``ci_low``/``ci_high`` (None for a single run), ``n`` runs,
    ``n_censored``, ``lower_bound`` (times to target); metrics no run defines are left out."""
    library, metrics = _rliable()
    trains = any(r.trains for r in runs)
    out: dict[str, dict] = {}
    for metric in METRICS:
        if metric.key in TIME_METRICS:
            if not trains or (metric.key == "gradients_to_target" and not uses_gradients(runs)):
                continue
            values, censored = censored_values(runs, metric)
        else:
            raw = [run_values(r)[metric.key] for r in runs]
            if any(v is None for v in raw):
                continue
            values, censored = np.asarray(raw, dtype=float), np.zeros(len(raw), dtype=bool)
        entry = {"n": int(values.size), "n_censored": int(censored.sum()),
                 "lower_bound": bool(censored.any()), "iqm": None, "ci_low": None, "ci_high": None}
        if metric.key in TIME_METRICS:
            entry["n_reached"] = int(values.size - censored.sum())
        if values.size == 1:
            entry["iqm"] = float(values[0])
        else:
            checked(metrics, values[:, None])
            point, interval = _interval(library, metrics, {"x": values[:, None]}, lambda a: np.array([iqm(a)]))
            entry.update(iqm=float(np.asarray(point["x"]).ravel()[0]),
                         ci_low=float(np.asarray(interval["x"]).ravel()[0]),
                         ci_high=float(np.asarray(interval["x"]).ravel()[1]))
        out[metric.key] = entry
    return out


def _ranked(runs: list[RunRecord], key: str) -> np.ndarray:
    """Values ``[n, 1]`` for a rank statistic, lower is better; a missing time is +inf."""
    values = [run_values(r)[key] for r in runs]
    return np.asarray([math.inf if v is None else v for v in values], dtype=float)[:, None]


def probability_of_improvement(section: Section) -> dict[str, dict]:
    """``{"<HEADLINE>_vs_<other>": {metric: {p, ci_low, ci_high, n_x, n_y}}}`` (module docstring);
    empty without :data:`HEADLINE` or with a single run of it."""
    library, metrics = _rliable()
    mine = section.learners.get(HEADLINE)
    if not mine or len(mine) < 2:
        return {}
    out: dict[str, dict] = {}
    for other, theirs in section.learners.items():
        if other == HEADLINE:
            continue
        entry = {}
        for key in IMPROVEMENT_METRICS:
            if key in TIME_METRICS and not any(r.trains for r in theirs):
                continue
            x, y = _ranked(mine, key), _ranked(theirs, key)
            if key not in TIME_METRICS and (np.isinf(x).any() or np.isinf(y).any()):
                continue
            # negated: rliable's P(X > Y) on -value is P(X better than Y) for lower-is-better
            pair = {"p": (-x, -y)}
            finite = np.isfinite(x).all() and np.isfinite(y).all()
            if finite:  # scipy's Mann-Whitney test refuses infinities; ours ranks them
                checked(metrics, -x, -y)
            point, interval = _interval(library, metrics, pair, lambda a, b: np.array([improvement(a, b)]))
            ci = np.asarray(interval["p"]).ravel()
            entry[key] = {"p": float(np.asarray(point["p"]).ravel()[0]), "ci_low": float(ci[0]),
                          "ci_high": float(ci[1]), "n_x": len(mine), "n_y": len(theirs)}
        if entry:
            out[f"{HEADLINE}_vs_{other}"] = entry
    return out


def speedups(section: Section) -> dict[str, dict]:
    """``{"<num>/<den>": {metric: {ratio, ci_low, ci_high, bound}}}`` for the present pairs of
    :data:`SPEEDUP_PAIRS` (module docstring). ``bound``: ``"exact"`` (nothing censored),
    ``"lower"`` (censored runs in the numerator only: the true ratio is at least this),
    ``"upper"`` (in the denominator only: at most this) or ``"none"`` (in both)."""
    library, metrics = _rliable()
    out: dict[str, dict] = {}
    by_key = {m.key: m for m in METRICS}
    for num, den in SPEEDUP_PAIRS:
        if num not in section.learners or den not in section.learners:
            continue
        entry = {}
        for key in TIME_METRICS:
            if key == "gradients_to_target" and not (uses_gradients(section.learners[num])
                                                     and uses_gradients(section.learners[den])):
                continue
            x, x_cens = censored_values(section.learners[num], by_key[key])
            y, y_cens = censored_values(section.learners[den], by_key[key])
            if iqm(y) <= 0:
                continue

            def ratio(a, b):
                return np.array([iqm(a) / max(iqm(b), 1e-300)])

            point, interval = _interval(library, metrics, {"r": (x[:, None], y[:, None])}, ratio)
            ci = np.asarray(interval["r"]).ravel()
            bound = {(False, False): "exact", (True, False): "lower", (False, True): "upper",
                     (True, True): "none"}[(bool(x_cens.any()), bool(y_cens.any()))]
            entry[key] = {"ratio": float(np.asarray(point["r"]).ravel()[0]), "ci_low": float(ci[0]),
                          "ci_high": float(ci[1]), "bound": bound, "n_num": int(x.size), "n_den": int(y.size)}
        if entry:
            out[f"{num}/{den}"] = entry
    return out


def performance_profiles(section: Section) -> dict[str, dict]:
    """Per time metric: ``tau`` (a common grid from 0 to 5 % beyond the largest budget or time) and
    per training learner ``fraction``, ``ci_low``, ``ci_high`` (lists over ``tau``)."""
    library, metrics = _rliable()
    training = {n: runs for n, runs in section.learners.items() if any(r.trains for r in runs)}
    if not training or all(len(runs) < 2 for runs in training.values()):
        return {}  # a profile of single runs (a run folder) shows nothing a table does not
    by_key = {m.key: m for m in METRICS}
    out: dict[str, dict] = {}
    for key in TIME_METRICS:
        users = {n: runs for n, runs in training.items() if key != "gradients_to_target" or uses_gradients(runs)}
        if not users:
            continue
        times = {n: _ranked(runs, key)[:, 0] for n, runs in users.items()}
        budgets = [float(r.metrics.get(by_key[key].budget_key) or 0.0) for runs in users.values() for r in runs]
        finite = [float(np.max(t[np.isfinite(t)])) for t in times.values() if np.isfinite(t).any()]
        top = 1.05 * max(budgets + finite + [0.0])  # 5 % beyond the last budget: the last step shows
        tau = np.linspace(0.0, top if top > 0 else 1.0, PROFILE_POINTS)

        def profile(scores):
            return np.mean(scores[:, :1] <= tau[None, :], axis=0)

        curves = {}
        for name, t in times.items():
            point, interval = _interval(library, metrics, {"x": t[:, None]}, profile)
            band = np.asarray(interval["x"])
            curves[name] = {"fraction": np.asarray(point["x"]).tolist(), "ci_low": band[0].tolist(),
                            "ci_high": band[1].tolist(), "n": int(t.size)}
        out[key] = {"tau": tau.tolist(), "learners": curves}
    return out
