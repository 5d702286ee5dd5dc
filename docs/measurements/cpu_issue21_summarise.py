"""Tables for docs/ippo.md from runs/issue21/*/ (metrics.json, history.csv, baselines/)."""
import csv, json, sys
from pathlib import Path

root = Path(__file__).parent
runs = [d for d in sorted(root.iterdir()) if (d / "metrics.json").exists()]
def test(m, key="test"):
    t = m[key]
    return t["cost_per_day"], t["voltage_violation_rate"], t.get("line_overload_rate", 0.0)
print("| controller | train s | power-flow solves | iterations | policy updates | best val. V viol. (at s) | it.-0 val. cost EUR/day | test cost EUR/day | test V viol. | test line overl. | test V viol., regulated taps |")
print("| --- | ---: | ---: | ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: |")
ref = runs[0] / "baselines"
for name in ("no_control", "droop", "rule_based"):
    m = json.loads((ref / name / "metrics.json").read_text())
    c, v, l = test(m); _, vr, _ = test(m, "test_regulated")
    print(f"| {name} | 0 | 0 | - | 0 | - | - | {c:,.1f} | {100*v:.2f} % | {100*l:.2f} % | {100*vr:.2f} % |")
for d in runs:
    m = json.loads((d / "metrics.json").read_text())
    rows = list(csv.DictReader((d / "history.csv").open()))
    best = min(rows, key=lambda r: (float(r["val_violation_rate"]), float(r["val_cost_per_day"])))
    c, v, l = test(m); _, vr, _ = test(m, "test_regulated")
    print(f"| {d.name} ({m['learner']}) | {m['train_seconds']:.0f} | {m['power_flow_solves']:,} | {m['training_iterations']} | "
          f"{m['policy_updates']:,} | {100*float(best['val_violation_rate']):.2f} % ({float(best['wall_s']):.0f} s) | "
          f"{float(rows[0]['val_cost_per_day']):,.1f} | {c:,.1f} | {100*v:.2f} % | {100*l:.2f} % | {100*vr:.2f} % |")
print()
for d in runs:
    rows = list(csv.DictReader((d / "history.csv").open()))
    pts = ", ".join(f"{float(r['wall_s']):.0f} s/{int(r['power_flow_solves'])//1000}k: {100*float(r['val_violation_rate']):.2f} %, {float(r['val_cost_per_day']):,.0f}"
                    for r in rows[:: max(1, len(rows) // 12)] + ([rows[-1]] if (len(rows) - 1) % max(1, len(rows) // 12) else []))
    print(f"* `{d.name}` validation (training s / k solves: V viol., EUR/day): {pts}")
