#!/usr/bin/env bash
# Build the bundled model from real ISIIS organisms (the NDSB vignettes, ../shared/data/ndsb or
# NDSB=...) and from drawn synthetic frames, on 2 CPU cores:
#   1. frames composed from the library's training split (80 % of each taxon, seed 0; the other
#      20 % are never seen by any step, and are what the README's held-out figures use), and
#      drawn synthetic frames;
#   2. the detector: the drawn-shapes demo detector's weights fine-tuned as two classes,
#      plankton and non-plankton (configs/train_isiis.yaml; 600 iterations, 48 min on 2026-12-03);
#   3. the vignette classifier on the detector's mined candidates, every annotated object and
#      the library's training split, naming the library's taxa and the drawn particles
#      (plankton_first decision; 8 min of mining, 24 min of training).
# The model it builds is not the bundled one (see the README's "Real organisms" for why).
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-.venv/bin}
WORK=${WORK:-build/isiis_model}
NDSB=${NDSB:-../shared/data/ndsb/train}
OUT=${OUT:-$WORK/isiis_model.pt}
mkdir -p "$WORK"
lib=(--organisms "$NDSB" --organisms-split train)
[ -d "$WORK/train_real" ] || "$BIN/segplank" synth "$WORK/train_real" --frames 30 --seed 1500 --plankton-share 0.25 "${lib[@]}" --workers 2
[ -d "$WORK/train_synth" ] || "$BIN/segplank" synth "$WORK/train_synth" --frames 30 --seed 1000 --plankton-share 0.25 --workers 2
[ -d "$WORK/val_real" ] || "$BIN/segplank" synth "$WORK/val_real" --frames 3 --seed 2500 --plankton-share 0.25 "${lib[@]}"
[ -d "$WORK/val_synth" ] || "$BIN/segplank" synth "$WORK/val_synth" --frames 3 --seed 2000 --plankton-share 0.25
# the detector starts from the drawn-shapes demo detector bundled before this model replaced it
INIT=${INIT:-$WORK/drawn_demo_model.pt}
[ -f "$INIT" ] || git show ca73faf:segplank/data/demo_model.pt > "$INIT"
train=("$WORK/train_real/ground_truth.coco.json" "$WORK/train_synth/ground_truth.coco.json")
val=(--val "$WORK/val_real/ground_truth.coco.json" --val "$WORK/val_synth/ground_truth.coco.json")
[ -f "$WORK/detector.pt" ] || "$BIN/segplank" train "${train[@]}" "${val[@]}" -c configs/train_isiis.yaml \
  --init "$INIT" -o "$WORK/detector.pt" --demo
"$BIN/segplank" train-classifier "${train[@]}" "${val[@]}" --model "$WORK/detector.pt" --library "$NDSB" \
  --held-out 0.2 --mine-frames 40 --iterations 3000 --seed 0 --vignettes "$WORK/vignettes.npz" -o "$OUT"
echo "built $OUT; score it with tools/score_isiis_model.sh"
