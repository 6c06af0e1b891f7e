#!/usr/bin/env bash
# GPU checks, each under 9 minutes on one H100/H200, using only what travels with the working tree:
# `make gpu-inputs` puts shared/data's 19 MB image tarball, the 14 MB stand-in weights and the wheels the
# device image lacks (pydantic, optuna) in benchmarks/out/gpu-inputs; carry that folder. Writes to $OUT
# (benchmarks/gpu by default); GIT_REV names the commit measured where the tree travels without .git.
#   bash benchmarks/gpu_check.sh speed      # train step vs the bare loop, eager and captured; the protocol
#   bash benchmarks/gpu_check.sh study      # the report's 11-trial study with 1, 4 and 2 trials on the GPU
#   bash benchmarks/gpu_check.sh nvml       # what recording device use (NVML thread, peak memory) costs an epoch
#   bash benchmarks/gpu_check.sh bench      # training/eval ratios, data path, CUDA variants
#   bash benchmarks/gpu_check.sh fidelity   # protocol and both tuned recipes, full data, 64 px, 3 seeds: sweep folders
#   bash benchmarks/gpu_check.sh fidelity-sizes  # the protocol and the best recipe at 32 and 224 px, 1 seed
#   bash benchmarks/gpu_check.sh screen     # tuned and four changes on 5k/1k, 64 px, 3 seeds, both test views
#   bash benchmarks/gpu_check.sh search     # one-at-a-time study vs TPE/random + ASHA; then fidelity at 64 px
#                                           # with the time left
#   bash benchmarks/gpu_check.sh study-gpu  # docs/fidelity/study.yaml's `run: gpu` entries that are missing or
#                                           # stale, as the docs' sweep folders (ONLY="name ..." picks entries);
#                                           # $OUT/study-gpu.tar.gz holds them: untar in the checkout, then
#                                           # `mobitune study` regenerates docs/fidelity.md and docs/search.md
set -euo pipefail
OUT=${OUT:-benchmarks/gpu}
INPUTS=benchmarks/out/gpu-inputs
mkdir -p "$OUT"
export DVC_NO_ANALYTICS=1 DO_NOT_TRACK=1 PREFECT_SERVER_ANALYTICS_ENABLED=false
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"

# The device image has torch, torchvision, numpy, pandas, matplotlib, pillow, pyyaml and tqdm but no package
# index and no pydantic or optuna (carried as wheels): run the project from source (the benchmarks and training
# need none of prefect, dvc, boto3).
PY=${PYTHON:-python3}
if ! "$PY" -c "import torch, torchvision; assert torch.cuda.is_available()" 2>/dev/null; then
  echo "no CUDA-enabled torch for $PY on this machine; nothing measured" | tee "$OUT/error.txt"
  exit 1
fi
export PYTHONPATH=$PWD/src${PYTHONPATH:+:$PYTHONPATH}
if ! "$PY" -c "import pydantic, optuna" 2>/dev/null; then
  [ -d "$INPUTS/wheels" ] || { echo "pydantic or optuna missing and no $INPUTS/wheels: run make gpu-inputs here" | tee "$OUT/error.txt"; exit 1; }
  "$PY" -m pip install --quiet --no-index --no-deps --target /tmp/gpu-pylib "$INPUTS"/wheels/*.whl
  export PYTHONPATH=$PYTHONPATH:/tmp/gpu-pylib
fi
export PYTHONUNBUFFERED=1 GIT_REV=${GIT_REV:-$(git rev-parse --short=12 HEAD 2>/dev/null || echo unknown)}

# shared/ beside the checkout, or the files copied into the tree (untracked files travel)
find_file() {
  for candidate in "../shared/data/$1" "shared/data/$1" "$INPUTS/$1" "$1"; do
    [ -f "$candidate" ] && realpath "$candidate" && return
  done
  return 0
}
IMAGES=$(find_file cifar10-jpeg.tar.gz)
WEIGHTS=$(find_file mobilenet_v2-imagenet-standin.pth)

case "${1:-bench}" in
  speed|study|nvml)
    if [ -z "$IMAGES" ] || [ -z "$WEIGHTS" ]; then
      echo "$1 needs cifar10-jpeg.tar.gz and mobilenet_v2-imagenet-standin.pth; nothing measured" | tee "$OUT/error.txt"
      exit 1
    fi
    timeout 530 "$PY" benchmarks/gpu_speed.py "$1" --images "$IMAGES" --weights "$WEIGHTS" --out "$OUT/$1.json" \
      2>&1 | tee "$OUT/$1.txt"
    ;;
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
    # the headline: 3 recipes x 3 seeds on all 50k/10k images at 64 px (about 50 s a run on an H200)
    timeout 540 "$PY" benchmarks/fidelity_gpu.py --images "$IMAGES" --weights "$WEIGHTS" --sizes 64 \
      --recipes tuned-recalibrated report tuned --seeds 0 1 2 --deadline-s 380 --out "$OUT/fidelity" \
      2>&1 | tee "$OUT/fidelity.txt"
    ;;
  screen)
    if [ -z "$IMAGES" ] || [ -z "$WEIGHTS" ]; then
      echo "screen needs cifar10-jpeg.tar.gz and mobilenet_v2-imagenet-standin.pth; nothing measured" | tee "$OUT/error.txt"
      exit 1
    fi
    # docs/fidelity.md section 4's screen, decided on single CPU runs, over 3 seeds: tuned alone, then each change
    started=$SECONDS
    for change in "" lr=0.002 warmup.batchnorm=recalibrated finetune.last_conv=train \
        "warmup.batchnorm=recalibrated finetune.last_conv=train"; do
      left=$((520 - (SECONDS - started)))
      [ "$left" -gt 60 ] || { echo "deadline: '$change' not started" | tee -a "$OUT/screen.txt"; break; }
      sets=(--set augment.test_flip=true)
      for assignment in $change; do sets+=(--set "$assignment"); done
      timeout "$left" "$PY" benchmarks/fidelity_gpu.py --images "$IMAGES" --weights "$WEIGHTS" --sizes 64 \
        --recipes tuned --limit 5000 --seeds 0 1 2 "${sets[@]}" --tag="-${change// /-}" --deadline-s 30 \
        --work /tmp/screen --out "$OUT/screen" 2>&1 | tee -a "$OUT/screen.txt"
    done
    ;;
  fidelity-sizes)
    if [ -z "$IMAGES" ] || [ -z "$WEIGHTS" ]; then
      echo "fidelity-sizes needs cifar10-jpeg.tar.gz and mobilenet_v2-imagenet-standin.pth; nothing measured" | tee "$OUT/error.txt"
      exit 1
    fi
    # the report's 32 px (the stand-in's features are dead there) and the weights' own 224 px (slowest: last)
    timeout 540 "$PY" benchmarks/fidelity_gpu.py --images "$IMAGES" --weights "$WEIGHTS" --sizes 32 224 \
      --recipes tuned-recalibrated report --seeds 0 --deadline-s 300 --out "$OUT/fidelity-sizes" \
      2>&1 | tee "$OUT/fidelity-sizes.txt"
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
        --recipes tuned-recalibrated --seeds 0 --deadline-s 60 --out "$OUT/fidelity" 2>&1 | tee "$OUT/fidelity.txt" || true
    fi
    ;;
  study-gpu)
    if [ -z "$IMAGES" ] || [ -z "$WEIGHTS" ]; then
      echo "study-gpu needs cifar10-jpeg.tar.gz and mobilenet_v2-imagenet-standin.pth; nothing measured" | tee "$OUT/error.txt"
      exit 1
    fi
    # entries in the manifest's order, each sweep kept as it finishes; a timeout keeps the folders written before
    timeout 560 "$PY" -m mobitune.cli study --run gpu ${ONLY:+--only $ONLY} --set "data.source=$IMAGES" \
      --set "model.pretrained=$WEIGHTS" 2>&1 | tee "$OUT/study-gpu.txt" || echo "study-gpu ended early (exit $?)"
    written=$(find docs/fidelity docs/search -name sweep.json -newer "$OUT/gpu.txt" -printf '%h\n')
    [ -z "$written" ] || tar -czf "$OUT/study-gpu.tar.gz" $written
    ;;
  *)
    echo "usage: bash benchmarks/gpu_check.sh [speed|study|nvml|bench|fidelity|screen|fidelity-sizes|search|study-gpu]" >&2
    exit 2
    ;;
esac

