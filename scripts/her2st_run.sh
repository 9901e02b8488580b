#!/usr/bin/env bash
# The real run behind models/demo and docs/results.md: train on her2st C2-C5, hold out C6 (same patient)
# and B4 (another patient), evaluate against baselines, export the demo model.
# Usage: scripts/her2st_run.sh [RUN_DIR]   (data and weights from STDIFF_DATA_DIR / STDIFF_WEIGHTS_DIR)
set -euo pipefail
run=${1:-runs/her2st}
log="$run/timings.txt"
mkdir -p "$run"
source "$(dirname "$0")/steps.sh"
step prepare --run-dir "$run" --train her2st-C2 her2st-C3 her2st-C4 her2st-C5 --eval her2st-C6 her2st-B4
step train-clip "$run"
step train-ldm "$run" --steps 1200
step reconstruct "$run"
step reconstruct "$run" --name unconditional --guidance-scale 0 --n-per-spot 1
step reconstruct "$run" --name retrieved --init retrieved --strength 0.6 --n-per-spot 1
step reconstruct "$run" --name retrieved-s03 --init retrieved --strength 0.3 --n-per-spot 1
step reconstruct "$run" --name nearest --init retrieved --retrieve-by expression --strength 0.6 --n-per-spot 1
step reconstruct "$run" --name nearest-s03 --init retrieved --retrieve-by expression --strength 0.3 --n-per-spot 1
step evaluate "$run" --variants unconditional retrieved retrieved-s03 nearest nearest-s03
step export "$run" models/demo --half
data=${STDIFF_DATA_DIR:-../shared/data}
# Heatmap data shipped with the model: one training section and both held-out ones. The app computes the
# others on request.
step reconstruct-sample --model-dir models/demo --init retrieved --strength 0.6 \
  "$data"/her2st-C2 "$data"/her2st-C6 "$data"/her2st-B4
