"""``gridflex report``: the page shows exactly report.json's numbers, report.json holds exactly
what the runs wrote, the page is self-contained, bad folders exit 2, and run folders, reused runs
and old schedules files (no feeder-map fields) still report. Real rliable, a tiny comparison."""

from __future__ import annotations

import html
import json
import math
import re
import shutil

import numpy as np
import pytest

from conftest import tiny_gradmap_scenario

pytest.importorskip("rliable")

#: every compared learner's params (a learner other than the scenario's starts from its defaults)
TINY = ["learner.params.budget_iterations=3", "learner.params.budget_seconds=null",
        "learner.params.validation_interval_iterations=1", "learner.params.hidden_sizes=[8]",
        "learner.params.days_per_batch=2", "learner.params.warm_start_epochs=1"]
SPAN = re.compile(r'<span data-key="([^"]+)" data-kind="([^"]+)">([^<]*)</span>')


@pytest.fixture(scope="module")
def comparison(tmp_path_factory):
    """Two learners that train x 2 seeds and no_control, 3 iterations each, on tiny IEEE 13."""
    from gridflex.runs.compare import compare

    root = tmp_path_factory.mktemp("report")
    scenario = root / "tiny_report.yaml"
    scenario.write_text(tiny_gradmap_scenario("tiny_report", 3))
    out = root / "cmp"
    compare(scenario, ["gradmap", "ssl_penalty", "no_control"], [0, 1], out, overrides=TINY, progress=False,
            echo=lambda *a: None)
    return out


def lookup(doc, dotted: str):
    for part in dotted.split("."):
        doc = doc[int(part)] if isinstance(doc, list) else doc[part]
    return doc


def check_page_against_json(page: str, report: dict) -> int:
    """Every number on the page is a data-key span whose text is its JSON value formatted; no
    other digits in the table cells (except text cells). Returns the number of spans."""
    from gridflex.report.page import fmt

    spans = SPAN.findall(page)
    for key, kind, text in spans:
        value = lookup(report, key)
        shown = html.unescape(text)
        assert shown == fmt(value, kind), (key, shown, value)
        if value is not None:  # and independently: the printed digits round the JSON number
            number = float(re.sub(r"[^\d.\-]", "", shown))
            scale = 100.0 if kind in ("rate", "percent") else 1.0
            decimals = len(shown.split(".")[1].rstrip(" %×")) if "." in shown else 0
            assert math.isclose(number, scale * value, abs_tol=0.5 * 10 ** -decimals + 1e-12), (key, shown, value)
    for row in re.findall(r"<tr>(.*?)</tr>", page, re.S):
        for cell in re.findall(r"<td(?: class=\"(\w+)\")?>(.*?)</td>", row, re.S)[1:]:
            if cell[0] != "text":
                assert not re.search(r"\d", SPAN.sub("", cell[1])), f"a number outside a data-key span: {cell[1]}"
    return len(spans)


def test_comparison_report(comparison, cli, tmp_path):
    from gridflex.learning.targets import Target, time_to_target
    from gridflex.report.collect import read_history

    out = tmp_path / "rep"
    code, stdout, stderr = cli("report", str(comparison), "--out", str(out))
    assert code == 0, stderr
    report = json.loads((out / "report.json").read_text())
    page = (out / "report.html").read_text()
    assert check_page_against_json(page, report) > 40

    # self-contained: no external reference, no script at all
    lowered = page.lower()
    for bad in ('src="http', "src='http", "<script", 'href="http', "url(http", "@import"):
        assert bad not in lowered
    assert page.count('src="data:image/png;base64,') == len(report["sections"][0]["figures"]) >= 4
    md = (out / "report.md").read_text()
    for name in report["sections"][0]["figures"].values():
        assert (out / name).is_file() and f"({name})" in md

    # report.json per-run values are what the runs wrote
    section = report["sections"][0]
    cmp_doc = json.loads((comparison / "comparison.json").read_text())
    t = cmp_doc["target"]
    target = Target(t["max_violation_rate"], t["max_cost_per_day"], 0.0, None, None)
    assert list(section["learners"]) == ["gradmap", "ssl_penalty", "no_control"]
    for name, learner in section["learners"].items():
        for j, run in enumerate(learner["runs"]):
            folder = comparison / name / f"seed{run['seed']}"
            metrics = json.loads((folder / "metrics.json").read_text())
            values = run["values"]
            assert values["test_cost_per_day"] == metrics["test"]["cost_per_day"]
            assert values["test_violation_rate"] == metrics["test"]["voltage_violation_rate"]
            assert values["line_overload_rate"] == metrics["test"]["line_overload_rate"]
            assert run["train_seconds"] == metrics["train_seconds"]
            rows = read_history(folder / "history.csv")
            # the comparison's own times (full precision), which history.csv repeats to 6 digits
            assert values["time_to_target_s"] == cmp_doc["learners"][name]["time_to_target_s"][j]
            assert values["gradients_to_target"] == cmp_doc["learners"][name]["gradients_to_target"][j]
            recomputed = time_to_target(rows, target)
            assert values["time_to_target_s"] == (None if recomputed is None else pytest.approx(recomputed, rel=1e-5))
            assert values["gradients_to_target"] == time_to_target(rows, target, "env_gradient_evaluations")
        agg = learner["aggregates"]
        costs = [r["values"]["test_cost_per_day"] for r in learner["runs"]]
        assert agg["test_cost_per_day"]["iqm"] == pytest.approx(np.mean(costs))  # 2 runs: nothing trimmed
        if learner["trains"]:
            lo, hi = agg["test_cost_per_day"]["ci_low"], agg["test_cost_per_day"]["ci_high"]
            assert min(costs) - 1e-9 <= lo <= agg["test_cost_per_day"]["iqm"] <= hi <= max(costs) + 1e-9
            times = [r["values"]["time_to_target_s"] for r in learner["runs"]]
            tt = agg["time_to_target_s"]
            assert tt["n_reached"] == sum(v is not None for v in times) and tt["lower_bound"] == (None in times)
            censored = [r["train_seconds"] if v is None else v for r, v in zip(learner["runs"], times)]
            assert tt["iqm"] == pytest.approx(np.mean(censored))
        else:
            assert learner["deterministic"] and agg["test_cost_per_day"]["ci_low"] is None
            assert "time_to_target_s" not in agg
    poi = section["probability_of_improvement"]
    assert set(poi) == {"gradmap_vs_ssl_penalty", "gradmap_vs_no_control"}
    for entry in poi.values():
        for value in entry.values():
            assert 0.0 <= value["ci_low"] <= value["p"] <= value["ci_high"] <= 1.0
    mine = [r["values"]["test_cost_per_day"] for r in section["learners"]["gradmap"]["runs"]]
    theirs = section["learners"]["no_control"]["runs"][0]["values"]["test_cost_per_day"]
    assert poi["gradmap_vs_no_control"]["test_cost_per_day"]["p"] == pytest.approx(
        np.mean([(m < theirs) + 0.5 * (m == theirs) for m in mine]))
    assert "ssl_penalty/gradmap" in section["speedup"]
    assert {"learning_curves", "performance_profile", "scatter", "feeder_maps", "heatmap"} <= set(section["figures"])


def test_bad_input_exits_2(cli, tmp_path, comparison):
    code, _, err = cli("report", str(tmp_path / "missing"))
    assert code == 2 and "no such folder" in err and "comparison folder" in err and "Traceback" not in err
    (tmp_path / "empty").mkdir()
    code, _, err = cli("report", str(tmp_path / "empty"))
    assert code == 2 and "neither comparison.json nor metrics.json" in err
    for damage in ("{not json", json.dumps({"target": {}, "seeds": [0]})):
        broken = tmp_path / "broken"
        broken.mkdir(exist_ok=True)
        (broken / "comparison.json").write_text(damage)
        code, _, err = cli("report", str(broken))
        assert code == 2 and "comparison.json" in err and "Traceback" not in err, err
    code, _, err = cli("report", str(comparison), str(comparison))
    assert code == 2 and "--out" in err
    code, _, err = cli("report", str(comparison), "--day", "5", "--out", str(tmp_path / "day"))
    assert code == 2 and "--day 5" in err and "1 test day(s)" in err


def test_run_folder_reused_run_and_old_schedules(comparison, cli, tmp_path):
    # a run folder (gridflex run's layout; here without baselines/)
    code, _, err = cli("report", str(comparison / "gradmap" / "seed0"), "--out", str(tmp_path / "run"))
    assert code == 0, err
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    section = report["sections"][0]
    assert section["kind"] == "run" and list(section["learners"]) == ["gradmap"]
    check_page_against_json((tmp_path / "run" / "report.html").read_text(), report)
    assert "feeder_maps" in section["figures"]

    # a reused deterministic run (no folder) and a schedules file from before the map fields
    copy = tmp_path / "cmp"
    shutil.copytree(comparison, copy)
    doc = json.loads((copy / "comparison.json").read_text())
    doc["learners"]["no_control"]["runs"][0]["reused_from"] = "elsewhere/metrics.json"
    doc["learners"]["gradmap"]["time_to_target_s"][1] = None  # seed 1 censored: never met the target
    doc["learners"]["gradmap"]["gradients_to_target"][1] = None
    (copy / "comparison.json").write_text(json.dumps(doc))
    shutil.rmtree(copy / "no_control")
    path = copy / "gradmap" / "seed0" / "schedules.npz"
    with np.load(path) as s:
        old = {k: s[k] for k in s.files if not k.startswith(("bus_", "branch_"))}
    np.savez_compressed(path, **old)
    code, _, err = cli("report", str(copy), "--day", "0")
    assert code == 0, err
    report = json.loads((copy / "report" / "report.json").read_text())
    section = report["sections"][0]
    notes = " ".join(section["notes"])
    assert "reused from elsewhere/metrics.json" in notes and "predates the feeder-map fields" in notes
    assert section["learners"]["no_control"]["runs"][0]["values"]["test_cost_per_day"] == \
        doc["learners"]["no_control"]["runs"][0]["test"]["cost_per_day"]
    page = (copy / "report" / "report.html").read_text()
    check_page_against_json(page, report)
    tt = section["learners"]["gradmap"]["aggregates"]["time_to_target_s"]
    runs = section["learners"]["gradmap"]["runs"]
    assert tt["lower_bound"] and tt["n_reached"] == 1 and tt["n_censored"] == 1
    assert tt["iqm"] == pytest.approx(np.mean([runs[0]["values"]["time_to_target_s"], runs[1]["train_seconds"]]))
    assert '≥ <span data-key="sections.0.learners.gradmap.aggregates.time_to_target_s.iqm"' in page
    assert "lower bounds" in notes


@pytest.mark.parametrize("censored, bound", [((False, False), "exact"), ((True, False), "lower"),
                                              ((False, True), "upper"), ((True, True), "none")])
def test_speedup_bound_follows_which_side_is_censored(censored, bound):
    """A censored numerator makes the ratio a lower bound, a censored denominator (gradmap's time is
    at least its budget) an upper bound, both: no bound; the page marks them ≥ / ≤ / a note."""
    from gridflex.report import aggregate
    from gridflex.report.collect import RunRecord, Section
    from gridflex.report.page import _plain

    def runs(learner, times, censored_side):
        out = []
        for k, t in enumerate(times):
            reached = not (censored_side and k == 0)
            doc = {"learner": learner, "seeds": [k], "train_seconds": 20.0, "env_gradient_evaluations": 40,
                   "test": {"cost_per_day": 1.0, "voltage_violation_rate": 0.0}}
            out.append(RunRecord(learner=learner, seed=k, metrics=doc, history=[{"iteration": 0.0}],
                                 time_to_target_s=t if reached else None,
                                 gradients_to_target=10.0 if reached else None))
        return out

    section = Section(source=None, kind="comparison", scenario="x", target={}, machine="",
                      learners={"ssl_pd": runs("ssl_pd", [5.0, 6.0, 7.0], censored[0]),
                                "gradmap": runs("gradmap", [10.0, 11.0, 12.0], censored[1])})
    entry = aggregate.speedups(section)["ssl_pd/gradmap"]["time_to_target_s"]
    assert entry["bound"] == bound
    mark = _plain(entry, "ratio", "ratio")
    assert mark.startswith({"lower": "≥", "upper": "≤"}.get(bound, mark[0])) and mark[0] in "≥≤0123456789"


def test_committed_headline_report_is_rebuilt_by_the_command(tmp_path, cli):
    """docs/headline/report (README's headline, docs/benchmarks.md) is what `gridflex report` makes
    of the committed comparison folders: every aggregate, probability and ratio, and the page shows
    exactly its JSON."""
    from pathlib import Path

    root = Path(__file__).resolve().parents[1] / "docs" / "headline"
    committed = json.loads((root / "report" / "report.json").read_text())
    code, out, err = cli("report", str(root / "ieee13_small"), str(root / "ieee123_1000"), "--out", str(tmp_path))
    assert code == 0, out + err
    rebuilt = json.loads((tmp_path / "report.json").read_text())
    assert len(rebuilt["sections"]) == len(committed["sections"]) == 2
    for new, old in zip(rebuilt["sections"], committed["sections"]):
        assert new["scenario"] == old["scenario"]
        for key in ("learners", "probability_of_improvement", "speedup", "target"):
            flat_new, flat_old = _flat(new[key]), _flat(old[key])
            assert flat_new.keys() == flat_old.keys(), key
            for path, value in flat_old.items():
                if path.rstrip(".").endswith(".folder"):  # where the folders were given from, not a result
                    continue
                if isinstance(value, float):
                    assert flat_new[path] == pytest.approx(value, rel=1e-12, abs=1e-15), path
                else:
                    assert flat_new[path] == value, path
    assert check_page_against_json((tmp_path / "report.html").read_text(), rebuilt) > 100


def _flat(tree, prefix=""):
    """Nested dicts/lists as {dotted path: leaf} (numbers compared with approx, the rest exactly)."""
    if isinstance(tree, dict):
        return {k: v for key, sub in tree.items() for k, v in _flat(sub, f"{prefix}{key}.").items()}
    if isinstance(tree, list):
        return {k: v for i, sub in enumerate(tree) for k, v in _flat(sub, f"{prefix}{i}.").items()}
    return {prefix: tree}
