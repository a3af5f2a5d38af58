#!/usr/bin/env bash
# Issue 20's GPU figures in one short run (about 5 minutes on one H200, set-up included).
#
#   tools/gpu_bench.sh prepare   here, with pip and PyPI: .gpu/ gets the wheels the GPU image
#                                lacks (pycocotools, shapely, pydantic, gsw) and the real CFE frame
#   tools/gpu_bench.sh run       on the GPU machine (the device tool: run with carry [".gpu"],
#                                command "tools/gpu_bench.sh run"): installs the wheels into
#                                /tmp/site and runs segplank from this checkout with the image's
#                                own torch; writes $OUT/gpu_bench.json and prints one table
#
# Cases (demo model, CUDA, bf16 autocast as detector.precision: auto gives on a GPU):
#   sparse and dense 2048² synthetic frames (`segplank bench --device cuda`), and the real CFE
#   ISIIS frame 16 times (its density: every tile occupied), each with frames/s, objects/s,
#   GPU busy (nvidia-smi sampled every 200 ms while the case ran) and peak GPU memory.
set -euo pipefail
cd "$(dirname "$0")/.."
GPU=${GPU:-.gpu}
case "${1:-}" in
prepare)
  mkdir -p "$GPU/whl" "$GPU/real"
  grep -qx "/$GPU/" .git/info/exclude 2>/dev/null || echo "/$GPU/" >> .git/info/exclude
  for pkg in pycocotools shapely pydantic pydantic-core annotated-types typing-inspection typing-extensions gsw; do
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
      --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
      -d "$GPU/whl" "$pkg"
  done
  real=$(ls ../shared/data/real_isiis/*.jpg 2>/dev/null | head -1 || true)
  if [ -n "$real" ]; then
    for k in $(seq -w 0 15); do cp "$real" "$GPU/real/CFE_ISIIS-081-2023-07-12 14-38-38.862_0000$k.jpg"; done
  fi
  du -sh "$GPU"
  ;;
run)
  OUT=${OUT:-/tmp/gpu_bench_out}; mkdir -p "$OUT"
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site "$GPU"/whl/*.whl
  export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
  python3 -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'; print(torch.__version__, torch.cuda.get_device_name(0))"
  nvidia-smi --query-gpu=timestamp,utilization.gpu,memory.used --format=csv,noheader,nounits -lms 200 > "$OUT/gpu_use.csv" &
  smi=$!
  trap 'kill $smi 2>/dev/null || true' EXIT
  python3 -m segplank bench --device cuda --threads 8 --sparse-frames 40 --dense-frames 16 --case sparse --case dense \
    --work /tmp/gpu_bench_work -o "$OUT/bench.json"
  if ls "$GPU"/real/*.jpg >/dev/null 2>&1; then
    t0=$(date +%s.%N)
    python3 -m segplank infer "$GPU/real" -o /tmp/gpu_real_out --force -c configs/cfe_isiis.yaml --device cuda --threads 8
    echo "{\"started\": $t0, \"ended\": $(date +%s.%N)}" > "$OUT/real_times.json"
    cp /tmp/gpu_real_out/manifest.json "$OUT/real_manifest.json"
  fi
  kill $smi 2>/dev/null || true
  python3 tools/gpu_table.py "$OUT"
  ;;
*)
  echo "usage: tools/gpu_bench.sh prepare | run" >&2; exit 2 ;;
esac
