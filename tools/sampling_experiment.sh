#!/usr/bin/env bash
# Does balanced sampling help the rarest class? Fine-tunes the demo model's stage-1 weights
# (tools/make_demo_model.sh) for 300 iterations on a natural-mix synthetic cruise, once with
# `sampling: none` and once with `repeat_factor`, and scores both on a held-out cruise.
# About 40 min on 2 CPU cores.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-.venv/bin}
WORK=${WORK:-build/sampling}
INIT=${INIT:-build/demo_model/stage1.pt}
mkdir -p "$WORK"
[ -d "$WORK/train" ] || "$BIN/segplank" synth "$WORK/train" --frames 30 --seed 6000 --workers 2
[ -d "$WORK/val" ] || "$BIN/segplank" synth "$WORK/val" --frames 4 --seed 2000 --plankton-share 0.25
[ -d "$WORK/heldout" ] || "$BIN/segplank" synth "$WORK/heldout" --frames 10 --seed 3100
for mode in none repeat_factor; do
  "$BIN/segplank" train "$WORK/train/ground_truth.coco.json" --val "$WORK/val/ground_truth.coco.json" \
    -c "configs/experiments/sampling_$mode.yaml" -o "$WORK/$mode.pt" --init "$INIT"
  "$BIN/segplank" eval "$WORK/heldout/ground_truth.coco.json" --model "$WORK/$mode.pt" --no-coco --json "$WORK/$mode.eval.json"
done
