"""Profile data: provenance, leak-free split, shapes, units and resampling."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import numpy as np
import pytest

from gridflex.fleet import profile_summary as summary
from gridflex.fleet import profiles as gp

N_AGENTS = 200


@pytest.fixture(scope="module")
def data() -> gp.ProfileData:
    return gp.ProfileData.load(dt_h=1.0, n_agents=N_AGENTS, seed=0)


@pytest.fixture(scope="module")
def raw() -> dict[str, np.ndarray]:
    return gp.read_npz()


@pytest.fixture(scope="module")
def test_days() -> gp.DaySet:
    return gp.load_test_days(dt_h=1.0, n_agents=N_AGENTS, seed=0)


# ----------------------------------------------------------------------------- provenance
def test_sha256_of_data_file_matches_provenance():
    provenance = json.loads((gp.data_dir() / gp.PROVENANCE_FILE).read_text())
    digest = hashlib.sha256((gp.data_dir() / gp.DATA_FILE).read_bytes()).hexdigest()
    assert provenance["file"] == gp.DATA_FILE
    assert digest == provenance["sha256"]
    assert {"simbench", "demandlib", "pvlib"} <= set(provenance["packages"])
    assert provenance["command"].startswith("python scenarios/data/generate_profiles.py")


def test_licences_are_carried_in_the_data_file(raw):
    notice = str(raw["licence_notice"])
    assert "ODbL" in notice and "SimBench" in notice and "Deutscher Wetterdienst" in notice
    assert str(raw["currency"]) == "EUR"
    readme = (gp.data_dir() / "README.md").read_text()
    assert "ODbL" in readme and "Deutscher Wetterdienst" in readme


# ----------------------------------------------------------------------------- split
def test_split_is_whole_weeks_stratified_by_season_and_deterministic(raw):
    split = gp.split_of_days(raw["month"])
    assert split.size == 364 and np.array_equal(split, gp.split_of_days(raw["month"]))
    weeks = split.reshape(52, 7)
    assert (weeks == weeks[:, :1]).all(), "a week straddles two splits"
    season = gp.week_seasons(raw["month"])
    for s in range(len(gp.SEASONS)):
        counts = np.bincount(weeks[season == s, 0], minlength=3)
        assert counts[1] == gp.N_WEEKS_PER_SEASON["validation"]
        assert counts[2] == gp.N_WEEKS_PER_SEASON["test"]
        assert counts[0] >= 1
    assert np.array_equal(raw["weekday"][::7], np.full(52, raw["weekday"][0]))


def test_splits_are_disjoint_and_cover_the_year(data, test_days):
    train, val = data.split("train"), data.split("validation")
    sets = [set(train.days), set(val.days), set(test_days.days)]
    assert not (sets[0] & sets[1]) and not (sets[0] & sets[2]) and not (sets[1] & sets[2])
    assert set().union(*sets) == set(range(1, 365))
    assert len(train) % 7 == len(val) % 7 == len(test_days) % 7 == 0


def test_no_test_day_is_reachable_from_the_training_api(data, test_days):
    test = set(test_days.days)
    assert not test & set(data._arrays["day_of_year"])  # not even loaded
    for name in gp.TRAINING_SPLITS:
        ds = data.split(name)
        assert not test & set(ds.days)
        assert not test & set(ds.days[ds.source_day].ravel())  # household traces too
        rng = np.random.default_rng(1)
        for _ in range(5):
            batch = ds.batch(min(16, len(ds)), rng)
            assert not test & set(batch.day_of_year)
    with pytest.raises(ValueError, match="load_test_days"):
        data.split("test")


def test_source_days_share_split_season_and_day_type(data, test_days):
    for ds in (data.split("train"), data.split("validation"), test_days):
        assert ds.source_day.shape == (len(ds), N_AGENTS)
        assert np.array_equal(ds.season[ds.source_day], np.broadcast_to(ds.season[:, None],
                                                                        ds.source_day.shape))
        assert np.array_equal(ds.day_type[ds.source_day],
                              np.broadcast_to(ds.day_type[:, None], ds.source_day.shape))
        assert np.abs(ds.shift_quarter_hours).max() <= gp.MAX_SHIFT_QUARTER_HOURS


def test_agent_assignment_is_seeded_and_shared_across_splits(data, test_days):
    again = gp.ProfileData.load(dt_h=1.0, n_agents=N_AGENTS, seed=0).split("train")
    train = data.split("train")
    assert np.array_equal(again.source_day, train.source_day)
    for field in ("profile", "scale", "pv_orientation"):
        assert np.array_equal(getattr(test_days.households, field),
                              getattr(data.households, field))
    other = gp.ProfileData.load(dt_h=1.0, n_agents=N_AGENTS, seed=1)
    assert not np.array_equal(other.households.profile, data.households.profile)
    assert len(np.unique(train.source_day[0])) > 1  # agents do not share one day


def test_bad_arguments_give_clear_errors():
    with pytest.raises(ValueError, match=r"dt_h=0\.25 .*dt_h=1\.0 or dt_h=0\.5"):
        gp.ProfileData.load(dt_h=0.25)
    with pytest.raises(ValueError, match="dt_h"):
        gp.load_test_days(dt_h=2.0)
    with pytest.raises(ValueError, match=r"split='tain'.*'train', 'validation'"):
        gp.ProfileData.load(n_agents=3).split("tain")
    with pytest.raises(ValueError, match="n_days"):
        gp.ProfileData.load(n_agents=3).split("validation").batch(1000,
                                                                  np.random.default_rng(0))


# ----------------------------------------------------------------------------- content
@pytest.mark.parametrize("dt_h", [1.0, 0.5])
def test_batch_shapes_and_dtypes(dt_h):
    ds = gp.ProfileData.load(dt_h=dt_h, n_agents=N_AGENTS).split("train")
    b = ds.batch(4, np.random.default_rng(0))
    t = int(24 / dt_h)
    assert b.household_kw.shape == b.pv_kw_per_kwp.shape == (4, N_AGENTS, t)
    assert b.temp_out_c.shape == b.price_per_kwh.shape == (4, t)
    assert b.day_of_year.shape == b.weekday.shape == b.season.shape == (4,)
    assert len(set(b.day_of_year)) == 4 and b.steps_per_day == t and b.dt_h == dt_h
    assert all(a.dtype == np.float32 for a in (b.household_kw, b.pv_kw_per_kwp,
                                               b.temp_out_c, b.price_per_kwh))
    tensors = b.as_tensors()
    assert tuple(tensors["household_kw"].shape) == (4, N_AGENTS, t)


def test_values_are_physically_plausible(data):
    b = data.split("train").get(np.arange(len(data.split("train"))))
    assert b.currency == "EUR"
    assert 0.0 <= b.household_kw.min() and b.household_kw.max() < 3.0 * 4  # 3 kW peak x scale
    assert 0.1 < b.household_kw.mean() < 0.6  # ~1.5-3.7 MWh per household and year
    assert 0.0 <= b.pv_kw_per_kwp.min() and b.pv_kw_per_kwp.max() <= 1.0
    assert b.pv_kw_per_kwp[..., :3].max() == 0.0  # night, 00:00-03:00 CET
    assert 0.07 < b.pv_kw_per_kwp.mean() < 0.14  # German rooftop capacity factor
    assert -25.0 < b.temp_out_c.min() and b.temp_out_c.max() < 40.0
    assert 0.0 < b.price_per_kwh.min() and b.price_per_kwh.max() < 1.0
    summer, winter = b.season == 2, b.season == 0
    assert b.temp_out_c[summer].mean() > b.temp_out_c[winter].mean() + 10.0
    assert b.pv_kw_per_kwp[summer].mean() > 3.0 * b.pv_kw_per_kwp[winter].mean()


def test_half_hour_and_hour_resolution_carry_the_same_energy():
    half = gp.ProfileData.load(dt_h=0.5, n_agents=N_AGENTS).split("validation")
    hour = gp.ProfileData.load(dt_h=1.0, n_agents=N_AGENTS).split("validation")
    days = np.arange(len(half))
    b_half, b_hour = half.get(days), hour.get(days)
    for name in ("household_kw", "pv_kw_per_kwp", "temp_out_c", "price_per_kwh"):
        e_half = getattr(b_half, name).sum(axis=-1, dtype=np.float64) * 0.5
        e_hour = getattr(b_hour, name).sum(axis=-1, dtype=np.float64) * 1.0
        np.testing.assert_allclose(e_half, e_hour, rtol=1e-5, atol=1e-5, err_msg=name)
    # the hourly step is the mean of its two half-hours
    np.testing.assert_allclose(b_half.household_kw.reshape(len(days), N_AGENTS, 24, 2)
                               .mean(-1), b_hour.household_kw, rtol=1e-5, atol=1e-6)


def test_coincidence_factor_definition():
    kw = np.array([[[1.0, 0.0], [0.0, 1.0]]])  # two agents peaking at different steps
    np.testing.assert_allclose(summary.coincidence_factor(kw), [0.5])
    np.testing.assert_allclose(summary.coincidence_factor(np.ones((1, 3, 4))), [1.0])


def test_docs_summary_table_is_current():
    doc = (Path(__file__).resolve().parents[1] / "docs" / "data.md").read_text()
    table = re.search(r"<!-- summary:start -->\n(.*?)<!-- summary:end -->", doc, re.S)
    assert table, "docs/data.md lacks the summary markers"
    assert table.group(1).strip() == summary.summary_markdown().strip(), (
        "docs/data.md summary is stale: paste the output of `python -m gridflex.fleet.profile_summary`")
    sources = re.search(r"<!-- sources:start -->\n(.*?)<!-- sources:end -->", doc, re.S)
    assert sources and sources.group(1).strip() == summary.sources_markdown().strip()
