"""Statistics of the shipped profiles for docs/data.md: per-split energy, peaks, coincidence and
PV capacity factors, and the per-source table (``python -m gridflex.fleet.profile_summary`` prints
both; a test checks the page against it). Documentation only: it reads the test days."""

from __future__ import annotations

import numpy as np

from gridflex.fleet.profiles import SEASONS, DaySet, ProfileData, read_npz, load_test_days

def coincidence_factor(household_kw: np.ndarray) -> np.ndarray:
    """Per-day coincidence factor ``[B]`` of ``household_kw[B, N, T]``.

    Peak over steps of the sum over agents, divided by the sum over agents of each agent's
    own peak over the day's steps.
    """
    return household_kw.sum(axis=1).max(axis=-1) / household_kw.max(axis=-1).sum(axis=-1)


def summary_rows(dt_h: float = 0.5, n_agents: int = 1000, seed: int = 0,
                 batch_size: int = 28) -> list[dict[str, float | int | str]]:
    """Per-split statistics for ``docs/data.md`` (reads the test days: documentation only)."""
    data = ProfileData.load(dt_h=dt_h, n_agents=n_agents, seed=seed)
    daysets = [data.split("train"), data.split("validation"),
               load_test_days(dt_h=dt_h, n_agents=n_agents, seed=seed)]
    return [_summarise(ds, batch_size) for ds in daysets]


def _summarise(dayset: DaySet, batch_size: int) -> dict[str, float | int | str]:
    mean_kw, peak_kw, max_kw, cf, pv_cf, temp, price = [], [], [], [], [], [], []
    for b in dayset.batches(batch_size):
        mean_kw.append(b.household_kw.mean(axis=(1, 2)))
        peak_kw.append(b.household_kw.max(axis=-1).mean(axis=-1))
        max_kw.append(b.household_kw.max(axis=(1, 2)))
        cf.append(coincidence_factor(b.household_kw))
        pv_cf.append(b.pv_kw_per_kwp.mean(axis=(1, 2)))
        temp.append(b.temp_out_c)
        price.append(b.price_per_kwh)
    mean_kw, peak_kw, max_kw, cf, pv_cf = (np.concatenate(x)
                                           for x in (mean_kw, peak_kw, max_kw, cf, pv_cf))
    temp, price = np.concatenate(temp), np.concatenate(price)
    weeks = np.bincount(dayset.season[::7], minlength=len(SEASONS))
    return {"split": dayset.name, "days": len(dayset),
            "weeks_w_sp_su_au": "/".join(str(w) for w in weeks),
            "household_mean_kw": float(mean_kw.mean()),
            "household_daily_peak_kw": float(peak_kw.mean()),
            "household_max_kw": float(max_kw.max()),
            "coincidence_factor_mean": float(cf.mean()),
            "coincidence_factor_min": float(cf.min()),
            "coincidence_factor_max": float(cf.max()),
            "pv_capacity_factor": float(pv_cf.mean()),
            "temp_min_c": float(temp.min()), "temp_max_c": float(temp.max()),
            "price_min": float(price.min()), "price_max": float(price.max())}


def summary_markdown(dt_h: float = 0.5, n_agents: int = 1000, seed: int = 0) -> str:
    """The summary table of ``docs/data.md`` as Markdown (``python -m gridflex.fleet.profiles``)."""
    rows = summary_rows(dt_h, n_agents, seed)
    header = ("| split | days | weeks W/Sp/Su/Au | mean household kW | mean daily peak kW "
              "| coincidence factor mean (min-max) | PV capacity factor | temperature degC "
              "| price EUR/kWh |")
    lines = [header, "|" + "---|" * 9]
    for r in rows:
        lines.append(
            f"| {r['split']} | {r['days']} | {r['weeks_w_sp_su_au']} "
            f"| {r['household_mean_kw']:.3f} | {r['household_daily_peak_kw']:.2f} "
            f"| {r['coincidence_factor_mean']:.3f} ({r['coincidence_factor_min']:.3f}-"
            f"{r['coincidence_factor_max']:.3f}) | {r['pv_capacity_factor']:.3f} "
            f"| {r['temp_min_c']:.1f} to {r['temp_max_c']:.1f} "
            f"| {r['price_min']:.3f}-{r['price_max']:.3f} |")
    return "\n".join(lines) + "\n"


def sources_markdown() -> str:
    """Per-source energy table of ``docs/data.md``: the stored data, before any agent draw."""
    raw = read_npz()
    lines = ["| series | energy over the 364 days | peak |", "|---|---|---|"]
    for name, kw, peak in zip(raw["household_profile_names"], raw["household_kw"],
                              raw["household_peak_kw"]):
        lines.append(f"| household {name} | {kw.sum() * 0.25:.0f} kWh | {peak:.1f} kW |")
    for name, pv in zip(raw["pv_orientation_names"], raw["pv_kw_per_kwp"]):
        lines.append(f"| PV {name}, tilt 35 deg | {pv.sum():.0f} kWh/kWp "
                     f"(capacity factor {pv.mean():.3f}) | {pv.max():.2f} kW/kWp |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(f"{sources_markdown()}\ndt_h = 0.5, n_agents = 1000, seed = 0\n\n"
          f"{summary_markdown()}", end="")
