"""Convert PyPI-shipped source data into ``profiles.npz`` (run once; output is committed).

Sources (all read from installed PyPI packages, nothing downloaded at run time):

* **SimBench** (``simbench`` package, data under ODbL 1.0 / DbCL 1.0): the five household
  load profiles ``H0-A, H0-B, H0-C, H0-G, H0-L`` of the year 2016 at 15 min, normalised to a
  peak of 1, each scaled by the median ``pLoad`` of the SimBench low-voltage household loads
  that use it (read from SimBench's ``Load.csv``).
* **DWD test reference year TRY2010, region 4 (Potsdam)**, as shipped inside the
  ``demandlib`` package: hourly outdoor temperature, wind speed, direct and diffuse horizontal
  irradiance of a "mean year" compiled by Deutscher Wetterdienst from 1988-2007 observations.
* **pvlib** (BSD-3) turns the TRY irradiance into rooftop-PV AC output per kWp (Perez
  transposition, physical IAM, Faiman cell temperature, PVWatts DC model, PVWatts default
  losses and inverter) for five roof orientations.

The price is derived, not measured: a day-ahead-like hourly signal affine in the residual load
(mean household load minus PV) of the same data; see ``residual_load_price_eur_per_kwh``.

Regenerate (needs the ``data`` extra)::

    pip install -e ".[data]"
    python scenarios/data/generate_profiles.py

Writes ``profiles.npz`` and ``profiles.provenance.json`` next to this file.
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import hashlib
import importlib.metadata
import importlib.util
import json
import sys
from pathlib import Path

import numpy as np

OUT_DIR = Path(__file__).resolve().parent
NPZ_NAME = "profiles.npz"
PROVENANCE_NAME = "profiles.provenance.json"

YEAR = 2016  # SimBench profile year; 2016-01-01 is a Friday
N_WEEKS = 52  # whole 7-day blocks from 1 January: days 2016-01-01 .. 2016-12-29
N_DAYS = 7 * N_WEEKS
STEPS_15MIN = 96
HOURS = 24

SIMBENCH_GRID = "1-complete_data-mixed-all-0-sw"
HOUSEHOLD_PROFILES = ("H0-A", "H0-B", "H0-C", "H0-G", "H0-L")
HOUSEHOLD_VOLT_LEVEL = "7"  # SimBench voltage level 7 = low voltage

TRY_FILE = "TRY2010_04_Jahr.dat"  # region 4, station Potsdam (DIN V 18599 reference climate)

# Roof orientations for PV: (name, surface azimuth deg clockwise from north, tilt deg).
PV_ORIENTATIONS = (("S", 180.0, 35.0), ("SE", 135.0, 35.0), ("SW", 225.0, 35.0),
                   ("E", 90.0, 35.0), ("W", 270.0, 35.0))
PV_GAMMA_PDC_PER_C = -0.0037  # crystalline-Si power temperature coefficient
PV_ALBEDO = 0.2

# Synthetic price: price = fixed + span * (R - R_min) / (R_max - R_min), R the residual load.
PRICE_FIXED_EUR_PER_KWH = 0.20  # network charges and levies (flat), chosen, not measured
PRICE_SPAN_EUR_PER_KWH = 0.20  # range of the energy component over the year, chosen
PRICE_PV_KWP_PER_HOUSEHOLD = 1.0  # feeder-average PV assumed when forming the residual load

# German nationwide public holidays in 2016 (treated like Sundays for the day type).
HOLIDAYS_2016 = ("2016-01-01", "2016-03-25", "2016-03-28", "2016-05-01", "2016-05-05",
                 "2016-05-16", "2016-10-03", "2016-12-25", "2016-12-26")

LICENCE_NOTICE = (
    "gridflex profiles.npz. Household load profiles: SimBench (simbench.de), "
    "(c) University of Kassel, TU Dortmund, RWTH Aachen University, Fraunhofer IEE; made "
    "available under the Open Database License ODbL 1.0 "
    "(http://opendatacommons.org/licenses/odbl/1.0/), contents under the Database Contents "
    "License DbCL 1.0. This file is a Derived Database of SimBench and is itself made "
    "available under ODbL 1.0 (share-alike). Weather: Deutscher Wetterdienst (DWD), Test "
    "Reference Year TRY2010 region 4 (Potsdam), as redistributed in the demandlib package "
    "(MIT); source attribution: Deutscher Wetterdienst. PV output computed with pvlib (BSD-3). "
    "Prices are synthetic (derived from the residual load of this data), not market data."
)


# ----------------------------------------------------------------------------- sources
def package_dir(name: str) -> Path:
    """Directory of an installed package, found without importing it."""
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit(f"package {name!r} is not installed: pip install -e '.[data]'")
    return Path(spec.submodule_search_locations[0])


def read_simbench_households(grid_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    """SimBench household profiles in kW.

    Returns ``(p_kw[profile, step], p_peak_kw[profile])`` with 35,136 quarter-hour steps of 2016;
    ``p_peak_kw`` is the median ``pLoad`` of the LV household loads using each profile.
    """
    with open(grid_dir / "LoadProfile.csv", newline="") as fh:
        header = fh.readline().strip().split(";")
    columns = [header.index(f"{name}_pload") for name in HOUSEHOLD_PROFILES]
    p_pu = np.loadtxt(grid_dir / "LoadProfile.csv", delimiter=";", skiprows=1,
                      usecols=columns, dtype=np.float64).T
    if p_pu.shape[1] != 366 * STEPS_15MIN:
        raise ValueError(f"expected a 15-min leap year, got {p_pu.shape[1]} steps")

    p_load_mw: dict[str, list[float]] = {name: [] for name in HOUSEHOLD_PROFILES}
    with open(grid_dir / "Load.csv", newline="") as fh:
        for row in csv.DictReader(fh, delimiter=";"):
            if row["profile"] in p_load_mw and row["voltLvl"] == HOUSEHOLD_VOLT_LEVEL:
                p_load_mw[row["profile"]].append(float(row["pLoad"]))
    p_peak_kw = np.array([1e3 * np.median(p_load_mw[n]) for n in HOUSEHOLD_PROFILES])
    return p_pu * p_peak_kw[:, None], p_peak_kw


def read_dwd_try(path: Path) -> dict[str, np.ndarray]:
    """Hourly DWD TRY2010 columns (8,760 rows, hour ending HH in CET, no DST).

    Keys: month, day, hour (1..24), temp_c (2 m, value at the hour), wind_m_s (10 m),
    b_w_m2 / d_w_m2 (direct / diffuse horizontal irradiance, mean over the hour ending HH),
    plus ``lat_deg``, ``lon_deg``, ``alt_m`` parsed from the header.
    """
    lines = path.read_text(encoding="utf-8").splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("***")) + 1
    rows = np.array([line.split() for line in lines[start:] if line.strip()], dtype=float)
    if rows.shape != (8760, 19):
        raise ValueError(f"unexpected TRY table shape {rows.shape}")
    location = next(line for line in lines[:5] if line.startswith("Lage"))
    lat = _deg_minutes(location.split(":")[1].split("N")[0])
    lon = _deg_minutes(location.split("B.")[1].split("O")[0])
    alt = float(location.split("<- L.")[1].split("Meter")[0])
    return {"month": rows[:, 2].astype(int), "day": rows[:, 3].astype(int),
            "hour": rows[:, 4].astype(int), "wind_m_s": rows[:, 7], "temp_c": rows[:, 8],
            "b_w_m2": rows[:, 13], "d_w_m2": rows[:, 14],
            "lat_deg": np.float64(lat), "lon_deg": np.float64(lon), "alt_m": np.float64(alt)}


def _deg_minutes(text: str) -> float:
    degrees, minutes = text.strip().replace("'", "").split("°")
    return float(degrees) + float(minutes) / 60.0


# ----------------------------------------------------------------------------- models
def pv_kw_per_kwp_hourly(weather: dict[str, np.ndarray]) -> np.ndarray:
    """Rooftop-PV AC output per kWp DC, ``[orientation, hour]`` for the 8,760 TRY hours.

    Hourly-mean irradiance is evaluated with the sun position at the middle of each hour.
    """
    import pandas as pd
    import pvlib

    # Any non-leap year: the TRY is a typical year; only the sun position depends on the date.
    times = pd.date_range("2015-01-01 00:30", periods=8760, freq="h", tz="Etc/GMT-1")
    lat, lon, alt = (float(weather[k]) for k in ("lat_deg", "lon_deg", "alt_m"))
    temp_c = pd.Series(weather["temp_c"], index=times)
    sun = pvlib.solarposition.get_solarposition(times, lat, lon, altitude=alt,
                                                temperature=temp_c)
    dhi = pd.Series(weather["d_w_m2"], index=times)
    ghi = dhi + weather["b_w_m2"]
    dni = pvlib.irradiance.dni(ghi, dhi, sun["zenith"]).fillna(0.0).clip(lower=0.0)
    dni_extra = pvlib.irradiance.get_extra_radiation(times)
    airmass = pvlib.atmosphere.get_relative_airmass(sun["apparent_zenith"])
    wind = pd.Series(weather["wind_m_s"], index=times)

    out = []
    for _, azimuth, tilt in PV_ORIENTATIONS:
        poa = pvlib.irradiance.get_total_irradiance(
            tilt, azimuth, sun["apparent_zenith"], sun["azimuth"], dni, ghi, dhi,
            dni_extra=dni_extra, airmass=airmass, albedo=PV_ALBEDO, model="perez")
        aoi = pvlib.irradiance.aoi(tilt, azimuth, sun["apparent_zenith"], sun["azimuth"])
        iam = pvlib.iam.physical(aoi)
        effective = (poa["poa_direct"] * iam + poa["poa_diffuse"]).fillna(0.0)
        temp_cell = pvlib.temperature.faiman(poa["poa_global"].fillna(0.0), temp_c, wind)
        p_dc = pvlib.pvsystem.pvwatts_dc(effective, temp_cell, 1.0, PV_GAMMA_PDC_PER_C)
        p_dc = p_dc * (1.0 - pvlib.pvsystem.pvwatts_losses() / 100.0)
        p_ac = pvlib.inverter.pvwatts(p_dc, 1.0).clip(lower=0.0).fillna(0.0)
        out.append(p_ac.to_numpy())
    return np.asarray(out)


def temperature_at_15min_midpoints(temp_c_hourly: np.ndarray) -> np.ndarray:
    """Linear interpolation of hourly instants (at hour ends) to quarter-hour midpoints.

    ``temp_c_hourly[h]`` is the value at hour ``h + 1`` of the (periodic, typical) TRY year.
    Returns ``[8760 * 4]`` values at ``0.125 h, 0.375 h, ...``.
    """
    t_h = np.arange(1, temp_c_hourly.size + 1, dtype=float)
    t_h = np.concatenate([[0.0], t_h])  # 00:00 on 1 Jan = 24:00 on 31 Dec (periodic year)
    values = np.concatenate([[temp_c_hourly[-1]], temp_c_hourly])
    mid_h = (np.arange(temp_c_hourly.size * 4) + 0.5) / 4.0
    return np.interp(mid_h, t_h, values)


def residual_load_price_eur_per_kwh(mean_household_kw: np.ndarray,
                                    pv_south_kw_per_kwp: np.ndarray) -> np.ndarray:
    """Day-ahead-like hourly price ``[day, hour]`` in EUR/kWh, affine in the residual load.

    R = mean household load - PRICE_PV_KWP_PER_HOUSEHOLD * PV(south), hourly means in kW;
    price = fixed + span * (R - min R) / (max R - min R), min and max over the year.
    """
    residual_kw = mean_household_kw - PRICE_PV_KWP_PER_HOUSEHOLD * pv_south_kw_per_kwp
    scaled = (residual_kw - residual_kw.min()) / (residual_kw.max() - residual_kw.min())
    return PRICE_FIXED_EUR_PER_KWH + PRICE_SPAN_EUR_PER_KWH * scaled


# ----------------------------------------------------------------------------- calendar
def calendar() -> dict[str, np.ndarray]:
    """Calendar of the ``N_DAYS`` stored days of 2016 (whole weeks from 1 January)."""
    dates = [dt.date(YEAR, 1, 1) + dt.timedelta(days=i) for i in range(N_DAYS)]
    holidays = {dt.date.fromisoformat(s) for s in HOLIDAYS_2016}
    return {"date_iso": np.array([d.isoformat() for d in dates]),
            "month": np.array([d.month for d in dates], dtype=np.int8),
            "day_of_month": np.array([d.day for d in dates], dtype=np.int8),
            "day_of_year": np.array([d.timetuple().tm_yday for d in dates], dtype=np.int16),
            "weekday": np.array([d.weekday() for d in dates], dtype=np.int8),
            "is_holiday": np.array([d in holidays for d in dates])}


def try_day_index(cal: dict[str, np.ndarray], weather: dict[str, np.ndarray]) -> np.ndarray:
    """Index of the TRY day with the same month and day (29 Feb takes 28 Feb)."""
    first_hour = np.flatnonzero(weather["hour"] == 1)
    key = {(int(weather["month"][h]), int(weather["day"][h])): i for i, h in enumerate(first_hour)}
    return np.array([key[(int(m), min(int(d), 28) if m == 2 else int(d))]
                     for m, d in zip(cal["month"], cal["day_of_month"])])


# ----------------------------------------------------------------------------- assemble
def build_arrays() -> tuple[dict[str, np.ndarray], dict]:
    """All arrays of ``profiles.npz`` and the source description for the provenance."""
    simbench_dir = package_dir("simbench") / "networks" / SIMBENCH_GRID
    try_path = package_dir("demandlib") / "vdi" / "resources_weather" / TRY_FILE

    p_kw, p_peak_kw = read_simbench_households(simbench_dir)
    household_kw = p_kw.reshape(len(HOUSEHOLD_PROFILES), 366, STEPS_15MIN)[:, :N_DAYS]

    weather = read_dwd_try(try_path)
    cal = calendar()
    try_day = try_day_index(cal, weather)
    pv_hourly = pv_kw_per_kwp_hourly(weather).reshape(len(PV_ORIENTATIONS), 365, HOURS)
    pv_kw_per_kwp = pv_hourly[:, try_day]
    temp_15 = temperature_at_15min_midpoints(weather["temp_c"]).reshape(365, STEPS_15MIN)
    temp_out_c = temp_15[try_day]

    mean_household_hourly_kw = household_kw.mean(axis=0).reshape(N_DAYS, HOURS, 4).mean(-1)
    price = residual_load_price_eur_per_kwh(mean_household_hourly_kw, pv_kw_per_kwp[0])

    arrays = {
        "household_kw": household_kw.astype(np.float32),
        "household_profile_names": np.array(HOUSEHOLD_PROFILES),
        "household_peak_kw": p_peak_kw.astype(np.float32),
        "pv_kw_per_kwp": pv_kw_per_kwp.astype(np.float32),
        "pv_orientation_names": np.array([o[0] for o in PV_ORIENTATIONS]),
        "pv_azimuth_deg": np.array([o[1] for o in PV_ORIENTATIONS], dtype=np.float32),
        "pv_tilt_deg": np.array([o[2] for o in PV_ORIENTATIONS], dtype=np.float32),
        "temp_out_c": temp_out_c.astype(np.float32),
        "price_per_kwh": price.astype(np.float32),
        "currency": np.array("EUR"),
        "licence_notice": np.array(LICENCE_NOTICE),
        **cal,
    }
    sources = {
        "simbench": {"files": [f"simbench/networks/{SIMBENCH_GRID}/LoadProfile.csv",
                               f"simbench/networks/{SIMBENCH_GRID}/Load.csv"],
                     "columns": [f"{n}_pload" for n in HOUSEHOLD_PROFILES],
                     "licence": "ODbL-1.0 (database), DbCL-1.0 (contents); code BSD-3-Clause",
                     "attribution": "SimBench, simbench.de: University of Kassel, TU Dortmund, "
                                    "RWTH Aachen University, Fraunhofer IEE"},
        "demandlib": {"files": [f"demandlib/vdi/resources_weather/{TRY_FILE}"],
                      "licence": "package MIT; data: Deutscher Wetterdienst (DWD) TRY2010, "
                                 "attribution 'Deutscher Wetterdienst'",
                      "station": "Potsdam, WMO 10379, 52°23'N 13°04'E, 81 m; mean year "
                                 "from 1988-2007 observations"},
        "pvlib": {"licence": "BSD-3-Clause",
                  "models": "solarposition.get_solarposition, irradiance.dni, "
                            "irradiance.get_total_irradiance(model='perez'), iam.physical, "
                            "temperature.faiman, pvsystem.pvwatts_dc, pvsystem.pvwatts_losses, "
                            "inverter.pvwatts"},
    }
    return arrays, sources


def save_npz_reproducibly(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """``np.savez_compressed`` with fixed zip timestamps, so equal data gives equal bytes."""
    import zipfile

    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name, array in arrays.items():
            info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            with zf.open(info, "w") as fh:
                np.lib.format.write_array(fh, np.asarray(array), allow_pickle=False)


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out-dir", type=Path, default=OUT_DIR)
    args = parser.parse_args(argv)

    arrays, sources = build_arrays()
    npz_path = args.out_dir / NPZ_NAME
    save_npz_reproducibly(npz_path, arrays)

    packages = ("simbench", "demandlib", "pvlib", "pandas", "numpy")
    provenance = {
        "file": NPZ_NAME,
        "sha256": sha256_of(npz_path),
        "command": "python scenarios/data/generate_profiles.py",
        "python": sys.version.split()[0],
        "packages": {name: importlib.metadata.version(name) for name in packages},
        "sources": sources,
        "licence": "ODbL-1.0 (Derived Database of SimBench); see scenarios/data/README.md",
        "licence_notice": LICENCE_NOTICE,
        "parameters": {
            "year": YEAR, "n_days": N_DAYS, "holidays": list(HOLIDAYS_2016),
            "pv_orientations": [list(o) for o in PV_ORIENTATIONS],
            "pv_gamma_pdc_per_c": PV_GAMMA_PDC_PER_C, "pv_albedo": PV_ALBEDO,
            "price_fixed_eur_per_kwh": PRICE_FIXED_EUR_PER_KWH,
            "price_span_eur_per_kwh": PRICE_SPAN_EUR_PER_KWH,
            "price_pv_kwp_per_household": PRICE_PV_KWP_PER_HOUSEHOLD,
        },
        "arrays": {k: {"shape": list(v.shape), "dtype": str(v.dtype)} for k, v in arrays.items()},
    }
    (args.out_dir / PROVENANCE_NAME).write_text(json.dumps(provenance, indent=2,
                                                           ensure_ascii=False) + "\n")
    print(f"wrote {npz_path} ({npz_path.stat().st_size / 1e6:.2f} MB), sha256 "
          f"{provenance['sha256'][:12]}...")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
