#!/usr/bin/env bash
# Rebuild the bundled demo model from synthetic cruises (about an hour on 2 CPU cores).
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-.venv/bin}
WORK=${WORK:-build/demo_model}
rm -rf "$WORK" && mkdir -p "$WORK"
"$BIN/segplank" synth "$WORK/train" --frames 40 --seed 1000 --plankton-share 0.25 --workers 2
"$BIN/segplank" synth "$WORK/val" --frames 4 --seed 2000 --plankton-share 0.25
"$BIN/segplank" train "$WORK/train/ground_truth.coco.json" --val "$WORK/val/ground_truth.coco.json" \
  -c configs/train_demo.yaml -o "$WORK/demo_model.pt" --demo
# per-class thresholds for a precision of 0.9, chosen on a third cruise
"$BIN/segplank" synth "$WORK/calib" --frames 12 --seed 2100
"$BIN/segplank" eval "$WORK/calib/ground_truth.coco.json" --model "$WORK/demo_model.pt" \
  --target-precision 0.9 --write-model segplank/data/demo_model.pt
