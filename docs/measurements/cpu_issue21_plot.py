"""Validation curves of runs/issue21/* against training seconds and power-flow solves."""
import csv
from pathlib import Path

import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt

root = Path(__file__).parent
fig, axes = plt.subplots(2, 2, figsize=(11, 7), sharey="row")
for d in sorted(root.iterdir()):
    if not (d / "history.csv").exists():
        continue
    rows = list(csv.DictReader((d / "history.csv").open()))
    s = [float(r["wall_s"]) for r in rows]
    n = [int(r["power_flow_solves"]) for r in rows]
    v = [100 * float(r["val_violation_rate"]) for r in rows]
    c = [float(r["val_cost_per_day"]) for r in rows]
    for col, x in enumerate((s, n)):
        axes[0, col].plot(x, v, marker=".", label=d.name)
        axes[1, col].plot(x, c, marker=".", label=d.name)
for col, name in enumerate(("training clock (s)", "training power-flow solves")):
    axes[1, col].set_xlabel(name)
    for row in range(2):
        axes[row, col].set_xscale("log")
        axes[row, col].grid(True, alpha=0.3)
axes[0, 0].set_ylabel("validation V violation (%)")
axes[1, 0].set_ylabel("validation cost (EUR/day)")
axes[0, 0].legend(fontsize=8)
fig.suptitle("ieee13_small, seed 0 (issue #21); no control: 2.72 % / 7,517.7 EUR/day on validation")
fig.tight_layout()
out = Path(__file__).resolve().parents[2] / "docs" / "measurements" / "cpu_issue21_ieee13_small_curves.png"
fig.savefig(out, dpi=90)
print(out)
