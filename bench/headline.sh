#!/usr/bin/env bash
# The committed headline comparison (docs/benchmarks.md, "Tuned comparison"): both scenarios,
# every learner with its tuned overlay, then gridflex report. CPU, 2 worker processes, one core each.
set -euo pipefail
PY=${PY:-.venv/bin/python}
OUT=${OUT:-runs/headline}
"$PY" bench/headline.py scenarios/ieee13_small.yaml --seeds 0-9 --budget-s 20 --out "$OUT/ieee13_small"
"$PY" bench/headline.py scenarios/ieee123_1000.yaml --seeds 0-4 --budget-s 40 --marl-validation tenth \
  --out "$OUT/ieee123_1000" \
  --reuse reference=docs/measurements/cpu_issue13_ieee123_reference_test_metrics.json
