#!/usr/bin/env bash
# GPU check, sized for well under 10 minutes on one H100, using only what travels with the
# working tree (the 19 MB image tarball in shared/data included). Writes everything to $OUT.
#   run (device tool): cp ../shared/data/cifar10-jpeg.tar.gz . && bash benchmarks/gpu_check.sh
# 1. the benchmark (training/eval ratios, data path, CUDA variants), 2. a short real-data
# training through the DVC stages' code (pretrained=none: no weights can be fetched there).
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
export PYTHONPATH=$PWD/src

# the image tarball: shared/ beside the checkout, or copied into the tree (untracked files travel)
IMAGES=""
for candidate in ../shared/data/cifar10-jpeg.tar.gz shared/data/cifar10-jpeg.tar.gz cifar10-jpeg.tar.gz; do
  [ -f "$candidate" ] && IMAGES=$(realpath "$candidate") && break
done
[ -n "$IMAGES" ] || echo "no cifar10-jpeg.tar.gz found: the benchmark uses synthetic data, the protocol run is skipped" | tee "$OUT/warning.txt"

timeout 300 "$PY" benchmarks/bench.py --skip-orchestration --out "$OUT/latest.json" ${IMAGES:+--images "$IMAGES"} 2>&1 | tee "$OUT/bench.txt"
[ -n "$IMAGES" ] || exit 0

# the report's protocol (5 + 5 epochs, test set every epoch) on the real images, timed
work=$(mktemp -d)
cat > "$work/params.yaml" <<YAML
device: cuda
data: {source: $IMAGES, md5: null}
model: {pretrained: none}
YAML
(cd "$work" && timeout 240 "$PY" - <<'PY' 2>&1 | tee "$OUT/protocol.txt"
import time
from pathlib import Path
from mobitune import paths
from mobitune.data import load_dataset, prepare
from mobitune.loader import resolve_device
from mobitune.params import load_params
from mobitune.train import Session, run_finetune, run_warmup

params = load_params()
started = time.perf_counter()
prepare(params.data.source, None, paths.PREPARED)
print(f"decode 60k JPEGs: {time.perf_counter() - started:.1f}s")
session = Session.create(params, load_dataset(paths.PREPARED), resolve_device(params.device))
started = time.perf_counter()
run_warmup(params, session, Path("warmup.pt"))
fine = run_finetune(params, session, Path("warmup.pt"), Path("finetune.pt"))
print(f"report protocol (5 warmup + 5 finetune epochs, test every epoch): {time.perf_counter() - started:.1f}s, "
      f"final test accuracy {fine.history[-1]['test_accuracy']:.4f}")
PY
)
