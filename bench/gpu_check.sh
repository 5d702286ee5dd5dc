#!/usr/bin/env bash
# The prepared GPU check (one `device` call, under 5 minutes). Writes results to $OUT as it goes.
#   OUT=/tmp/gpu DEVICE=cuda bash bench/gpu_check.sh        # DEVICE=cpu for a dry run
# Expects the carried wheels in .whl/ (see ../shared/device/README.md) on the GPU machine.
set -u
OUT=${OUT:-/tmp/gridflex_gpu_check}
DEVICE=${DEVICE:-cuda}
SCALE=${SCALE:-1}            # 0 = dry run with tiny sizes
PY=${PYTHON:-python3}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
# plugins still being written elsewhere or needing cvxpy stay off the GPU path
export GRIDFLEX_BLOCK_PLUGINS=${GRIDFLEX_BLOCK_PLUGINS:-reference,linear3ph,ippo}
if [ -d .whl ] && [ "$DEVICE" = cuda ]; then
  $PY -m pip install -q --no-index --no-deps --target "$PWD/.site" .whl/*.whl >"$OUT/install.log" 2>&1
  export PYTHONPATH="$PWD/.site"
  $PY -m pip install -q --no-deps --no-build-isolation --no-index -e . >>"$OUT/install.log" 2>&1
fi
{ date -u; $PY -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'no gpu')"; } >"$OUT/machine.txt" 2>&1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv >>"$OUT/machine.txt" 2>&1

if [ "$SCALE" = 1 ]; then BATCH="1000 10000 100000"; DAYS="8 32"; BUDGET=40; else BATCH="1000"; DAYS="2"; BUDGET=5; fi

echo "== power-flow throughput" | tee -a "$OUT/progress.txt"
timeout 120 $PY bench/pf_throughput.py --device "$DEVICE" --batch $BATCH >"$OUT/pf_throughput.txt" 2>&1
echo "== power-flow throughput, float32" | tee -a "$OUT/progress.txt"
timeout 120 $PY bench/pf_throughput.py --device "$DEVICE" --batch $BATCH --dtype float32 --tol 1e-6 \
  >"$OUT/pf_throughput_float32.txt" 2>&1

echo "== environment step" | tee -a "$OUT/progress.txt"
timeout 80 $PY bench/env_step.py --device "$DEVICE" --days $DAYS --repeats 2 >"$OUT/env_step.txt" 2>&1
echo "== environment step, compiled device steps (CUDA graphs)" | tee -a "$OUT/progress.txt"
timeout 240 $PY bench/env_step.py --device "$DEVICE" --days $DAYS --repeats 2 --compile >"$OUT/env_step_compiled.txt" 2>&1
echo "== environment step, compiled device steps + sync-free power flow (30 iterations)" | tee -a "$OUT/progress.txt"
timeout 240 $PY bench/env_step.py --device "$DEVICE" --days $DAYS --repeats 2 --compile --sync-free 30 \
  >"$OUT/env_step_sync_free.txt" 2>&1

echo "== GradMAP on IEEE 123, 1,000 agents" | tee -a "$OUT/progress.txt"
timeout 150 $PY -m gridflex.cli.main run scenarios/ieee123_1000.yaml --device "$DEVICE" --no-references \
  -o learner.params.budget_seconds=$BUDGET -o learner.params.validation_interval_s=4 \
  -o environment.regulated_evaluation=false -o data.n_test_days=4 -o data.n_validation_days=4 \
  --out /tmp/gridflex_run123 >"$OUT/run123.txt" 2>&1
cp /tmp/gridflex_run123/history.csv "$OUT/history123.csv" 2>/dev/null
cp /tmp/gridflex_run123/metrics.json "$OUT/metrics123.json" 2>/dev/null
echo "== done" | tee -a "$OUT/progress.txt"
