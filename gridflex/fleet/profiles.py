"""Household load, rooftop PV, outdoor temperature and price for one-day episodes.

The data live in ``gridflex/scenarios/data/profiles.npz`` (made once by
``scenarios/data/generate_profiles.py``; sources, licences and numbers in ``docs/data.md``):
364 days of 2016 (52 whole weeks from Friday 1 January) of

* five SimBench household profiles (ODbL), kW at 15 min,
* DWD TRY2010 Potsdam outdoor temperature (15-min midpoints) and pvlib rooftop-PV output per
  kWp for five roof orientations (hourly means),
* a synthetic day-ahead-like price in EUR/kWh (hourly), affine in the residual load.

**Split.** The 52 weeks are split per season (winter DJF, spring MAM, summer JJA, autumn SON,
season of a week = month of its middle day) into train / validation / test by a fixed seed, so
whole weeks (and their weather) never straddle two splits. :meth:`ProfileData.load` keeps only
train and validation days; test days are read by :func:`load_test_days` alone, the
evaluation-only entry point. A :class:`DaySet` holds the data of one split only.

**Agents.** Agent ``a`` is one household with a fixed SimBench profile, a fixed annual scale
(log-normal, synthetic) and a fixed PV roof orientation, all drawn from ``seed``. On calendar day
``d`` it plays the trace of its profile on a *source day* drawn from the days of the same split,
season and day type (workday / Saturday / Sunday or holiday), circularly shifted by up to
``MAX_SHIFT_QUARTER_HOURS`` quarter-hours (synthetic). Weather, PV and price are those of
``d`` itself, common to all agents. The draws depend on (seed, d, agent) only.

**Resolution.** ``dt_h`` is 1.0 or 0.5. Quantities are interval means (power averaged over the
step, so energy is preserved); hourly sources are held constant over both half-hours.
Only numpy is needed; :meth:`DayBatch.as_tensors` converts to torch.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

from gridflex.shipped import shipped_data_dir

DATA_FILE = "profiles.npz"
PROVENANCE_FILE = "profiles.provenance.json"

ALLOWED_DT_H = (0.5, 1.0)
TRAINING_SPLITS = ("train", "validation")
SPLIT_NAMES = ("train", "validation", "test")
SEASONS = ("winter", "spring", "summer", "autumn")
DAY_TYPES = ("workday", "saturday", "sunday_or_holiday")

SPLIT_SEED = 2016  # fixed: the split is part of the benchmark, not a run option
N_WEEKS_PER_SEASON = {"validation": 2, "test": 2}  # the remaining weeks of a season train

HOUSEHOLD_SCALE_SIGMA_LOG = 0.3  # spread of the per-agent scale, log-normal with mean 1
MAX_SHIFT_QUARTER_HOURS = 2  # per-(agent, day) circular time shift in [-2, 2] x 15 min

_STEPS_15MIN = 96
_HOURS = 24


# ----------------------------------------------------------------------------- file access
def data_dir() -> Path:
    """Directory holding ``profiles.npz``, its provenance JSON and the licence text."""
    return shipped_data_dir()


def read_npz() -> dict[str, np.ndarray]:
    with np.load(data_dir() / DATA_FILE, allow_pickle=False) as npz:
        return {name: npz[name] for name in npz.files}


# ----------------------------------------------------------------------------- calendar
def season_index(month: np.ndarray) -> np.ndarray:
    """Season index (0 winter DJF, 1 spring MAM, 2 summer JJA, 3 autumn SON) of months 1..12."""
    return (np.asarray(month) % 12) // 3


def day_type_index(weekday: np.ndarray, is_holiday: np.ndarray) -> np.ndarray:
    """Day type (0 workday, 1 Saturday, 2 Sunday or public holiday); ``weekday`` 0 = Monday."""
    weekday = np.asarray(weekday)
    day_type = np.where(weekday == 5, 1, 0)
    return np.where((weekday == 6) | np.asarray(is_holiday), 2, day_type)


def week_seasons(month: np.ndarray) -> np.ndarray:
    """Season of each 7-day block ``[week]``: the season of the block's middle (4th) day."""
    return season_index(np.asarray(month)[3::7])


def split_weeks(season_of_week: np.ndarray, seed: int = SPLIT_SEED) -> np.ndarray:
    """Split id per week ``[week]`` (0 train, 1 validation, 2 test), stratified by season.

    Within each season the weeks are permuted by ``seed``; the first ``N_WEEKS_PER_SEASON
    ["validation"]`` go to validation, the next ``["test"]`` to test, the rest to train.
    """
    rng = np.random.default_rng(seed)
    split = np.zeros(season_of_week.size, dtype=np.int8)
    n_val, n_test = N_WEEKS_PER_SEASON["validation"], N_WEEKS_PER_SEASON["test"]
    for season in range(len(SEASONS)):
        weeks = rng.permutation(np.flatnonzero(season_of_week == season))
        split[weeks[:n_val]] = 1
        split[weeks[n_val:n_val + n_test]] = 2
    return split


def split_of_days(month: np.ndarray) -> np.ndarray:
    """Split id per stored day ``[day]`` (0 train, 1 validation, 2 test)."""
    return np.repeat(split_weeks(week_seasons(month)), 7)


# ----------------------------------------------------------------------------- resampling
def resample_mean(x: np.ndarray, steps_out: int) -> np.ndarray:
    """Resample interval means along the last axis to ``steps_out`` steps per day.

    Down: average of the finer steps inside each coarse step (energy-preserving). Up: each
    coarse value held over its finer steps (a zero-order hold, also energy-preserving).
    """
    steps_in = x.shape[-1]
    if steps_in == steps_out:
        return x
    if steps_in % steps_out == 0:
        return x.reshape(*x.shape[:-1], steps_out, steps_in // steps_out).mean(axis=-1)
    if steps_out % steps_in == 0:
        return np.repeat(x, steps_out // steps_in, axis=-1)
    raise ValueError(f"cannot resample {steps_in} to {steps_out} steps per day")


def _check_dt_h(dt_h: float) -> float:
    if dt_h not in ALLOWED_DT_H:
        raise ValueError(
            f"dt_h={dt_h!r} is not supported. The profile data resolve time steps of "
            f"{' or '.join(str(v) for v in ALLOWED_DT_H)} hours (interval means derived by "
            "averaging the 15-min household data and holding the hourly weather and price "
            "values); pass dt_h=1.0 or dt_h=0.5.")
    return float(dt_h)


# ----------------------------------------------------------------------------- agents
@dataclass(frozen=True)
class HouseholdIdentities:
    """Fixed identity of ``n_agents`` households (which profile, how scaled, which roof), drawn
    from ``seed``. Where they are connected is :class:`gridflex.fleet.population.HouseholdSites`.

    ``profile[agent]`` index into the SimBench profiles, ``scale[agent]`` multiplies the
    profile's kW (log-normal, mean 1), ``pv_orientation[agent]`` index into the roof
    orientations of the PV data.
    """

    seed: int
    profile: np.ndarray
    scale: np.ndarray
    pv_orientation: np.ndarray

    @classmethod
    def draw(cls, n_agents: int, n_profiles: int, n_orientations: int, seed: int) -> HouseholdIdentities:
        rng = np.random.default_rng([seed, 0x686F757365])  # stream of the household identity
        sigma = HOUSEHOLD_SCALE_SIGMA_LOG
        return cls(seed=seed,
                   profile=rng.integers(n_profiles, size=n_agents),
                   scale=rng.lognormal(-0.5 * sigma**2, sigma, size=n_agents).astype(np.float32),
                   pv_orientation=rng.integers(n_orientations, size=n_agents))


def draw_source_days(day_of_year: np.ndarray, pool_key: np.ndarray, n_agents: int,
                     seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Source day and time shift of every agent on every day of one split.

    ``day_of_year[day]`` identifies the days, ``pool_key[day]`` their (season, day type) class.
    Returns ``source[day, agent]`` (positions into the same days, same ``pool_key``) and
    ``shift[day, agent]`` in quarter-hours. Day ``d``'s draws depend on (seed, d) only.
    """
    source = np.empty((day_of_year.size, n_agents), dtype=np.int32)
    shift = np.empty((day_of_year.size, n_agents), dtype=np.int8)
    for i, (doy, key) in enumerate(zip(day_of_year, pool_key)):
        rng = np.random.default_rng([seed, int(doy)])
        pool = np.flatnonzero(pool_key == key)
        source[i] = pool[rng.integers(pool.size, size=n_agents)]
        shift[i] = rng.integers(-MAX_SHIFT_QUARTER_HOURS, MAX_SHIFT_QUARTER_HOURS + 1,
                                size=n_agents)
    return source, shift


# ----------------------------------------------------------------------------- batches
@dataclass(frozen=True)
class DayBatch:
    """A batch of B days for N agents with T = 24 / dt_h steps; all float32 interval means.

    household_kw[B, N, T]   uncontrolled household demand, kW (positive = drawn from grid)
    pv_kw_per_kwp[B, N, T]  rooftop-PV AC output per kWp installed, kW/kWp (>= 0)
    temp_out_c[B, T]        outdoor air temperature, degC
    price_per_kwh[B, T]     energy price, ``currency`` per kWh
    day_of_year[B]          1..364 of 2016; weekday[B] 0 = Monday; season[B] 0..3;
    day_type[B]             0 workday, 1 Saturday, 2 Sunday or holiday
    """

    dt_h: float
    currency: str
    household_kw: np.ndarray
    pv_kw_per_kwp: np.ndarray
    temp_out_c: np.ndarray
    price_per_kwh: np.ndarray
    day_of_year: np.ndarray
    weekday: np.ndarray
    season: np.ndarray
    day_type: np.ndarray

    @property
    def steps_per_day(self) -> int:
        return self.temp_out_c.shape[-1]

    def as_tensors(self, dtype=None, device=None) -> dict:
        """The arrays as torch tensors (float fields in ``dtype``, default float32)."""
        import torch

        dtype = torch.float32 if dtype is None else dtype
        out = {}
        for name in ("household_kw", "pv_kw_per_kwp", "temp_out_c", "price_per_kwh"):
            out[name] = torch.as_tensor(getattr(self, name), dtype=dtype, device=device)
        for name in ("day_of_year", "weekday", "season", "day_type"):
            out[name] = torch.as_tensor(getattr(self, name).astype(np.int64), device=device)
        return out


class DaySet:
    """The days of one split, for a fixed set of households. Holds no other split's data.

    Built by :meth:`ProfileData.split` (train, validation) or :func:`load_test_days` (test).
    ``len(dayset)`` days; ``days`` their day-of-year (1-based, 2016); ``dates`` ISO strings.
    """

    def __init__(self, name: str, arrays: dict[str, np.ndarray], households: HouseholdIdentities,
                 dt_h: float):
        self.name = name
        self.dt_h = dt_h
        self.households = households
        self.currency = str(arrays["currency"])
        self.days = arrays["day_of_year"].astype(np.int64)
        self.dates = arrays["date_iso"]
        self.weekday = arrays["weekday"].astype(np.int64)
        self.season = season_index(arrays["week_month"])
        self.day_type = day_type_index(arrays["weekday"], arrays["is_holiday"])
        self._household_kw_15min = arrays["household_kw"]  # [profile, day, 96]
        self._pv_kw_per_kwp_hourly = arrays["pv_kw_per_kwp"]  # [orientation, day, 24]
        self._temp_out_c = resample_mean(arrays["temp_out_c"], self.steps_per_day)
        self._price_per_kwh = resample_mean(arrays["price_per_kwh"], self.steps_per_day)
        pool_key = self.season * len(DAY_TYPES) + self.day_type
        self.source_day, self.shift_quarter_hours = draw_source_days(
            self.days, pool_key, self.n_agents, households.seed)

    @property
    def n_agents(self) -> int:
        return self.households.profile.size

    @property
    def steps_per_day(self) -> int:
        return int(round(24 / self.dt_h))

    def __len__(self) -> int:
        return self.days.size

    def __repr__(self) -> str:
        return (f"DaySet({self.name!r}, days={len(self)}, n_agents={self.n_agents}, "
                f"dt_h={self.dt_h})")

    def get(self, positions: np.ndarray) -> DayBatch:
        """The days at ``positions`` (0 .. len-1 within this split) as a :class:`DayBatch`."""
        positions = np.asarray(positions, dtype=np.int64).reshape(-1)
        if positions.size and (positions.min() < 0 or positions.max() >= len(self)):
            raise IndexError(f"positions must lie in [0, {len(self)}) for split {self.name!r}")
        return DayBatch(
            dt_h=self.dt_h, currency=self.currency,
            household_kw=self._household_kw(positions),
            pv_kw_per_kwp=self._pv_kw_per_kwp(positions),
            temp_out_c=self._temp_out_c[positions],
            price_per_kwh=self._price_per_kwh[positions],
            day_of_year=self.days[positions], weekday=self.weekday[positions],
            season=self.season[positions], day_type=self.day_type[positions])

    def batch(self, n_days: int, generator: np.random.Generator) -> DayBatch:
        """``n_days`` distinct days drawn uniformly from this split with ``generator``."""
        if not 1 <= n_days <= len(self):
            raise ValueError(f"n_days={n_days} must lie in [1, {len(self)}] for split "
                             f"{self.name!r}")
        return self.get(generator.choice(len(self), size=n_days, replace=False))

    def batches(self, batch_size: int) -> Iterator[DayBatch]:
        """All days in calendar order, ``batch_size`` at a time (for evaluation sweeps)."""
        for start in range(0, len(self), batch_size):
            yield self.get(np.arange(start, min(start + batch_size, len(self))))

    def _household_kw(self, positions: np.ndarray) -> np.ndarray:
        hh = self.households
        source = self.source_day[positions]  # [B, N]
        trace = self._household_kw_15min[hh.profile[None, :], source]  # [B, N, 96]
        steps = np.arange(_STEPS_15MIN)
        rolled = (steps[None, None, :] - self.shift_quarter_hours[positions][..., None]) \
            % _STEPS_15MIN
        trace = np.take_along_axis(trace, rolled, axis=-1) * hh.scale[None, :, None]
        return resample_mean(trace, self.steps_per_day).astype(np.float32)

    def _pv_kw_per_kwp(self, positions: np.ndarray) -> np.ndarray:
        pv = self._pv_kw_per_kwp_hourly[:, positions]  # [orientation, B, 24]
        pv = pv[self.households.pv_orientation].transpose(1, 0, 2)  # [B, N, 24]
        return resample_mean(pv, self.steps_per_day)


# ----------------------------------------------------------------------------- entry points
class ProfileData:
    """Training-side access to the profile data: train and validation days only.

    >>> data = ProfileData.load(dt_h=1.0, n_agents=1000, seed=0)
    >>> batch = data.split("train").batch(8, np.random.default_rng(0))
    >>> batch.household_kw.shape
    (8, 1000, 24)

    Test days are removed when loading; use :func:`load_test_days` in evaluation code.
    """

    def __init__(self, arrays: dict[str, np.ndarray], households: HouseholdIdentities, dt_h: float):
        self._arrays = arrays
        self.households = households
        self.dt_h = dt_h
        self.licence_notice = str(arrays["licence_notice"])
        self.profile_names = tuple(str(s) for s in arrays["household_profile_names"])
        self.pv_orientation_names = tuple(str(s) for s in arrays["pv_orientation_names"])

    @classmethod
    def load(cls, dt_h: float = 1.0, n_agents: int = 1000, seed: int = 0) -> ProfileData:
        """Read the data file, keep train and validation days, draw ``n_agents`` households."""
        dt_h = _check_dt_h(dt_h)
        raw = read_npz()
        split = split_of_days(raw["month"])
        arrays = _select_days(raw, split != SPLIT_NAMES.index("test"))
        arrays["split"] = split[split != SPLIT_NAMES.index("test")]
        return cls(arrays, _households(raw, n_agents, seed), dt_h)

    @property
    def n_agents(self) -> int:
        return self.households.profile.size

    def split(self, name: str) -> DaySet:
        """The :class:`DaySet` of split ``name``, "train" or "validation"."""
        if name not in TRAINING_SPLITS:
            hint = (" Test days are for final evaluation only: call "
                    "gridflex.fleet.profiles.load_test_days(...) from evaluation code."
                    if name == "test" else "")
            raise ValueError(
                f"split={name!r} is not available from ProfileData. The training-side data "
                f"offer the splits {', '.join(repr(s) for s in TRAINING_SPLITS)} (whole weeks "
                f"stratified by season).{hint}")
        keep = self._arrays["split"] == SPLIT_NAMES.index(name)
        return DaySet(name, _select_days(self._arrays, keep), self.households, self.dt_h)


def load_test_days(dt_h: float = 1.0, n_agents: int = 1000, seed: int = 0) -> DaySet:
    """Evaluation only: the held-out test weeks as a :class:`DaySet`.

    Same households as ``ProfileData.load(dt_h, n_agents, seed)``; never call this from
    training or tuning code.
    """
    dt_h = _check_dt_h(dt_h)
    raw = read_npz()
    keep = split_of_days(raw["month"]) == SPLIT_NAMES.index("test")
    return DaySet("test", _select_days(raw, keep), _households(raw, n_agents, seed), dt_h)


def _households(raw: dict[str, np.ndarray], n_agents: int, seed: int) -> HouseholdIdentities:
    if int(n_agents) < 1:
        raise ValueError(f"n_agents={n_agents!r} must be a positive integer")
    return HouseholdIdentities.draw(int(n_agents), raw["household_kw"].shape[0],
                           raw["pv_kw_per_kwp"].shape[0], int(seed))


_PER_DAY_AXIS = {"household_kw": 1, "pv_kw_per_kwp": 1}  # [profile/orientation, day, step]
_PER_DAY = ("temp_out_c", "price_per_kwh", "date_iso", "month", "day_of_month", "day_of_year",
            "weekday", "is_holiday", "week_month", "split")


def _select_days(arrays: dict[str, np.ndarray], keep: np.ndarray) -> dict[str, np.ndarray]:
    """Copy of ``arrays`` restricted to the days where ``keep`` is true (other days dropped)."""
    arrays = dict(arrays)
    if "week_month" not in arrays:  # month of each day's week middle: the week's season
        arrays["week_month"] = np.repeat(arrays["month"][3::7], 7)
    out = {}
    for name, value in arrays.items():
        if name in _PER_DAY_AXIS:
            out[name] = np.ascontiguousarray(np.compress(keep, value, axis=_PER_DAY_AXIS[name]))
        elif name in _PER_DAY:
            out[name] = value[keep]
        else:
            out[name] = value
    return out
