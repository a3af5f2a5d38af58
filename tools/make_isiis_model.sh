#!/usr/bin/env bash
# Build segplank's real-organism models from the NDSB ISIIS vignettes (../shared/data/ndsb or
# NDSB=...) and from drawn synthetic frames, on 2 CPU cores:
#   0. the bundled vignette classifier (segplank/data/isiis_classifier.pt, what `segplank
#      classify` uses by default): the library's 121 taxa, trained on 80 % of each taxon
#      (seed 0; the other 20 % are never seen by any step and are what the README's held-out
#      figures use); 6,000 iterations, 26 min with bf16 autocast;
#   1. frames composed from the library's training split (a line scan and an area camera,
#      --preset cfe: vignetting, lens shading, gain drift, JPEG blocking), and drawn synthetic frames;
#   2. the detector: the drawn-shapes demo detector's weights fine-tuned as two classes,
#      plankton and non-plankton (configs/train_isiis.yaml; 600 iterations, 48 min on 2026-12-03);
#   3. the vignette classifier on the detector's mined candidates, every annotated object and
#      the library's training split, naming the library's taxa and the drawn particles
#      (plankton_first decision, half the objects drawn from each side: --plankton-share;
#      8 min of cutting and mining, 13 min of training).
# The detector + classifier model it builds is not the bundled one (docs/models/own-data.md says why).
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-.venv/bin}
WORK=${WORK:-build/isiis_model}
NDSB=${NDSB:-../shared/data/ndsb/train}
OUT=${OUT:-$WORK/isiis_model.pt}
mkdir -p "$WORK"
lib=(--organisms "$NDSB" --organisms-split train)
# bfloat16 autocast where the CPU has the instructions (1.6x faster), float32 elsewhere
bf16=(); grep -q avx512_bf16 /proc/cpuinfo 2>/dev/null && bf16=(--bf16)
CLF=${CLF:-$WORK/isiis_classifier.pt}
[ -f "$CLF" ] || "$BIN/segplank" train-classifier --library "$NDSB" --held-out 0.2 --iterations 6000 --width 32 \
  --seed 0 "${bf16[@]}" -o "$CLF"
[ -d "$WORK/train_real" ] || "$BIN/segplank" synth "$WORK/train_real" --frames 30 --seed 1500 --plankton-share 0.25 "${lib[@]}" --workers 2
[ -d "$WORK/train_cfe" ] || "$BIN/segplank" synth "$WORK/train_cfe" --preset cfe --frames 12 --seed 1700 --plankton-share 0.25 "${lib[@]}" --workers 2
[ -d "$WORK/train_synth" ] || "$BIN/segplank" synth "$WORK/train_synth" --frames 30 --seed 1000 --plankton-share 0.25 --workers 2
[ -d "$WORK/val_real" ] || "$BIN/segplank" synth "$WORK/val_real" --frames 3 --seed 2500 --plankton-share 0.25 "${lib[@]}"
[ -d "$WORK/val_cfe" ] || "$BIN/segplank" synth "$WORK/val_cfe" --preset cfe --frames 3 --seed 2700 --plankton-share 0.25 "${lib[@]}"
[ -d "$WORK/val_synth" ] || "$BIN/segplank" synth "$WORK/val_synth" --frames 3 --seed 2000 --plankton-share 0.25
# the detector starts from the drawn-shapes demo detector bundled before this model replaced it
INIT=${INIT:-$WORK/drawn_demo_model.pt}
[ -f "$INIT" ] || git show ca73faf:segplank/data/demo_model.pt > "$INIT"
train=("$WORK/train_real/ground_truth.coco.json" "$WORK/train_synth/ground_truth.coco.json")
val=(--val "$WORK/val_real/ground_truth.coco.json" --val "$WORK/val_synth/ground_truth.coco.json")
[ -f "$WORK/detector.pt" ] || "$BIN/segplank" train "${train[@]}" "${val[@]}" -c configs/train_isiis.yaml \
  --init "$INIT" -o "$WORK/detector.pt" --demo
# candidates are mined on the first 52 frames: the 12 area-camera ones, the 30 line-scan ones, 10 drawn
"$BIN/segplank" train-classifier "$WORK/train_cfe/ground_truth.coco.json" "${train[@]}" "${val[@]}" \
  --val "$WORK/val_cfe/ground_truth.coco.json" --model "$WORK/detector.pt" --library "$NDSB" --held-out 0.2 \
  --mine-frames 52 --iterations 3000 --width 32 --seed 0 "${bf16[@]}" --vignettes "$WORK/vignettes_cfe.npz" -o "$OUT"
echo "built $CLF and $OUT; score them with tools/score_isiis_model.sh (MODEL=$OUT CLASSIFIER=$CLF)"
