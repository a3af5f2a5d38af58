#!/usr/bin/env bash
# Run the README's "A model for my own data" block as written, in a fresh clone of this
# repository, with its placeholders filled in (about 1 h 45 min on 2 CPU cores):
#   tools/run_readme_own_model.sh LIB MY_FRAMES CRUISE_DIR [WORK]
# e.g. tools/run_readme_own_model.sh ../shared/data/ndsb/train ../shared/data/real_isiis CRUISE /tmp/walk
# Each command's seconds go to WORK/walk.log; the run stops at the first command that fails.
set -euo pipefail
LIB=$(realpath "$1"); FRAMES=$(realpath "$2"); CRUISE=$(realpath "$3"); WORK=$(realpath -m "${4:-/tmp/segplank_walk}")
REPO=$(cd "$(dirname "$0")/.." && pwd)
rm -rf "$WORK/segplank"; mkdir -p "$WORK"
git clone -q "$REPO" "$WORK/segplank"
cd "$WORK/segplank"
S=$(date +%s); make setup > "$WORK/setup.log" 2>&1; echo "make setup: $(( $(date +%s) - S )) s" | tee "$WORK/walk.log"
awk '/^## A model for my own data/{f=1} f&&/^```bash/{b=1;next} b&&/^```/{exit} b{print}' README.md |
  sed -e "s#--library LIB#--library $LIB#g" -e "s#--organisms LIB#--organisms $LIB#g" \
      -e "s#MY_FRAMES/#$FRAMES/#g" -e "s#CRUISE_DIR#$CRUISE#g" > "$WORK/block.sh"
while IFS= read -r line; do
  [ -z "$line" ] && continue
  echo "== $line" | tee -a "$WORK/walk.log"
  S=$(date +%s)
  eval "$line" >> "$WORK/walk.log" 2>&1
  echo "-- $(( $(date +%s) - S )) s" | tee -a "$WORK/walk.log"
done < "$WORK/block.sh"
