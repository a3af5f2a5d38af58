#!/usr/bin/env bash
# Score a model (default: the bundled one) the ways the README reports it, on data no
# training step or choice saw:
#   1. the NDSB library's held-out split (20 % of each taxon, seed 0), vignette by vignette, by
#      the vignette classifier (CLASSIFIER, default the bundled one) and by the model's own;
#   2. frames composed from those held-out organisms: an area camera (cfe) and a line scan;
#   3. a drawn synthetic held-out cruise (seed 3100), as a line stream;
#   4. the real CFE ISIIS frame with its by-eye inventory (../shared), a sanity check.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-.venv/bin}
WORK=${WORK:-build/isiis_model}
NDSB=${NDSB:-../shared/data/ndsb/train}
MODEL=${MODEL:-segplank/data/demo_model.pt}
CLASSIFIER=${CLASSIFIER:-segplank/data/isiis_classifier.pt}
REAL=${REAL:-../shared/data/real_isiis}
mkdir -p "$WORK/score"
lib=(--organisms "$NDSB" --organisms-split held_out)
[ -d "$WORK/heldout_cfe" ] || "$BIN/segplank" synth "$WORK/heldout_cfe" --preset cfe --frames 8 --seed 3500 "${lib[@]}"
[ -d "$WORK/heldout_isiis" ] || "$BIN/segplank" synth "$WORK/heldout_isiis" --frames 8 --seed 3600 "${lib[@]}"
[ -d "$WORK/synth_3100" ] || "$BIN/segplank" synth "$WORK/synth_3100" --frames 10 --seed 3100
echo "== NDSB held-out vignettes, $CLASSIFIER"
"$BIN/segplank" classify "$NDSB" --split held_out --model "$CLASSIFIER" -o "$WORK/score/ndsb_heldout_classifier.csv"
echo "== NDSB held-out vignettes, the classifier of $MODEL"
"$BIN/segplank" classify "$NDSB" --split held_out --model "$MODEL" -o "$WORK/score/ndsb_heldout.csv"
echo "== composed held-out frames, area camera (cfe)"
"$BIN/segplank" eval "$WORK/heldout_cfe/ground_truth.coco.json" --model "$MODEL" --no-coco
echo "== composed held-out frames, line stream"
"$BIN/segplank" eval "$WORK/heldout_isiis/ground_truth_stream.json" --model "$MODEL" --no-coco
echo "== drawn synthetic held-out cruise (seed 3100), line stream"
"$BIN/segplank" eval "$WORK/synth_3100/ground_truth_stream.json" --model "$MODEL" --no-coco
if [ -d "$REAL" ] && [ -f ../shared/hooks/score_real_frames.py ]; then
  echo "== the real CFE ISIIS frame"
  R="$WORK/score/real"; rm -rf "$R"; mkdir -p "$R/c" "$R/gt"
  cp "$REAL"/*.jpg "$R/c/"
  for f in "$REAL"/*.inventory.csv; do cp "$f" "$R/gt/$(basename "$f" .inventory.csv).csv"; done
  "$BIN/segplank" infer "$R/c" -o "$R/out" --model "$MODEL" > "$R/infer.log"
  "$BIN/python" ../shared/hooks/score_real_frames.py "$R/gt" "$R/out" | "$BIN/python" -c \
    "import json,sys; print(json.load(sys.stdin)['total'])"
fi
