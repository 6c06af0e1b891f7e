#!/usr/bin/env bash
# GPU check in two calls of under 10 minutes each on one H100/H200, using only what travels with
# the working tree (shared/data's 19 MB image tarball and 14 MB stand-in weights). Writes to $OUT.
#   bash benchmarks/gpu_check.sh bench      # training/eval ratios, data path, CUDA variants
#   bash benchmarks/gpu_check.sh fidelity   # report protocol vs tuned recipe, full data, 32/64/224 px
#   bash benchmarks/gpu_check.sh search     # one-at-a-time study vs TPE/random + ASHA; then fidelity at 64 px
#                                           # with the time left (optuna travels as wheels: see search_study.py)
# (device tool: cp ../shared/data/*.tar.gz ../shared/data/*.pth . first if shared/ does not travel)
set -euo pipefail
OUT=${OUT:-benchmarks/out/gpu}
mkdir -p "$OUT"
export DVC_NO_ANALYTICS=1 DO_NOT_TRACK=1 PREFECT_SERVER_ANALYTICS_ENABLED=false
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"

# The device image has torch, torchvision, numpy, pandas, pillow, pyyaml and tqdm but no package
# index: run the project from source (the benchmark and training need none of prefect, dvc, boto3).
PY=${PYTHON:-python3}
if ! "$PY" -c "import torch, torchvision; assert torch.cuda.is_available()" 2>/dev/null; then
  echo "no CUDA-enabled torch for $PY on this machine; nothing measured" | tee "$OUT/error.txt"
  exit 1
fi
export PYTHONPATH=$PWD/src${PYTHONPATH:+:$PYTHONPATH}

# shared/ beside the checkout, or the files copied into the tree (untracked files travel)
find_file() {
  for candidate in "../shared/data/$1" "shared/data/$1" "$1"; do
    [ -f "$candidate" ] && realpath "$candidate" && return
  done
  return 0
}
IMAGES=$(find_file cifar10-jpeg.tar.gz)
WEIGHTS=$(find_file mobilenet_v2-imagenet-standin.pth)

case "${1:-bench}" in
  bench)
    [ -n "$IMAGES" ] || echo "no cifar10-jpeg.tar.gz found: the benchmark uses synthetic data" | tee "$OUT/warning.txt"
    timeout 480 "$PY" benchmarks/bench.py --skip-orchestration --out "$OUT/latest.json" ${IMAGES:+--images "$IMAGES"} \
      2>&1 | tee "$OUT/bench.txt"
    ;;
  fidelity)
    if [ -z "$IMAGES" ] || [ -z "$WEIGHTS" ]; then
      echo "fidelity needs cifar10-jpeg.tar.gz and mobilenet_v2-imagenet-standin.pth; nothing measured" | tee "$OUT/error.txt"
      exit 1
    fi
    # 64 px first: the size every CPU figure uses; 224 last (slowest), so a time-out loses the least
    timeout 540 "$PY" benchmarks/fidelity_gpu.py --images "$IMAGES" --weights "$WEIGHTS" --sizes 64 32 224 \
      --out "$OUT/fidelity.json" 2>&1 | tee "$OUT/fidelity.txt"
    ;;
  search)
    if [ -z "$IMAGES" ] || [ -z "$WEIGHTS" ]; then
      echo "search needs cifar10-jpeg.tar.gz and mobilenet_v2-imagenet-standin.pth; nothing measured" | tee "$OUT/error.txt"
      exit 1
    fi
    started=$SECONDS
    timeout 420 "$PY" benchmarks/search_study.py --images "$IMAGES" --weights "$WEIGHTS" \
      --train-limit 10000 --test-limit 5000 --deadline-s 300 --out "$OUT" 2>&1 | tee "$OUT/search.txt" \
      || echo "search study ended early (exit $?): summary.json holds the studies that finished"
    left=$((540 - (SECONDS - started)))
    if [ "$left" -gt 90 ]; then
      timeout "$left" "$PY" benchmarks/fidelity_gpu.py --images "$IMAGES" --weights "$WEIGHTS" --sizes 64 \
        --out "$OUT/fidelity.json" 2>&1 | tee "$OUT/fidelity.txt" || true
    fi
    ;;
  *)
    echo "usage: bash benchmarks/gpu_check.sh [bench|fidelity|search]" >&2
    exit 2
    ;;
esac

