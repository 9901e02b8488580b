#!/usr/bin/env bash
# The spatially blocked run of docs/results.md: train on her2st C2-C5 and on the training blocks of C6, evaluate
# on C6's held-out blocks (every evaluated patch at least one patch width from every training patch), export
# the model as models/her2st-blocked.
# Usage: scripts/her2st_blocked_run.sh [RUN_DIR]   (data and weights from STDIFF_DATA_DIR / STDIFF_WEIGHTS_DIR)
set -euo pipefail
run=${1:-runs/her2st-blocked}
log="$run/timings.txt"
mkdir -p "$run"
source "$(dirname "$0")/steps.sh"
step prepare --run-dir "$run" --train her2st-C2 her2st-C3 her2st-C4 her2st-C5 --blocked her2st-C6
step train-clip "$run"
step train-ldm "$run" --steps 1200
step reconstruct "$run"
step reconstruct "$run" --name unconditional --guidance-scale 0 --n-per-spot 1
step reconstruct "$run" --name retrieved --init retrieved --strength 0.6 --n-per-spot 1
step reconstruct "$run" --name nearest-s03 --init retrieved --retrieve-by expression --strength 0.3 --n-per-spot 1
step evaluate "$run" --variants unconditional retrieved nearest-s03
step export "$run" models/her2st-blocked --half
