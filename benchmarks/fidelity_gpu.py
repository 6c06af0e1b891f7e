"""The report's protocol and the tuned recipe on all 50k/10k images at several input sizes: accuracy and wall time.

Run (a CUDA machine; ``benchmarks/gpu_check.sh fidelity`` finds the files):
``python benchmarks/fidelity_gpu.py --images cifar10-jpeg.tar.gz --weights mobilenet_v2-imagenet-standin.pth``

Each run is the full 10-epoch budget (5 warmup + 5 finetune) through the same
functions as the DVC stages; results are rewritten to ``--out`` after every
run, so a run cut short by a time limit keeps what finished.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from mobitune.params import load_params
from mobitune.training.batches import resolve_device
from mobitune.training.data import load_dataset, prepare
from mobitune.training.loop import DeviceData, run_finetune, run_warmup

ROOT = Path(__file__).resolve().parents[1]
RECIPES = ("report", "tuned")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=Path, required=True, help="cifar10-jpeg.tar.gz (image-folder tarball)")
    parser.add_argument("--weights", type=Path, required=True, help="ImageNet MobileNetV2 state dict")
    parser.add_argument("--sizes", type=int, nargs="+", default=[32, 64, 224])
    parser.add_argument("--recipes", nargs="+", default=list(RECIPES), choices=RECIPES)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--limit", type=int, default=None, help="first N train and N/5 test images (smoke runs)")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "out" / "fidelity.json")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="fidelity-"))
    started = time.perf_counter()
    prepared = work / "cifar10"
    prepare(str(args.images.resolve()), None, prepared)
    print(f"decode: {time.perf_counter() - started:.1f}s")
    results = []
    for size in args.sizes:
        for recipe in args.recipes:
            overrides = [
                f"device={args.device}",
                f"data.source={args.images.resolve()}",
                "data.md5=null",
                f"model.pretrained={args.weights.resolve()}",
                f"model.image_size={size}",
            ]
            if args.limit:
                overrides += [f"data.train_limit={args.limit}", f"data.test_limit={max(1, args.limit // 5)}"]
            params = load_params(ROOT / "params.yaml", overrides, ROOT / "recipes" / f"{recipe}.yaml")
            subset = load_dataset(prepared, params.data.train_limit, params.data.test_limit)
            device_data = DeviceData.create(params, subset, resolve_device(params.device))
            started = time.perf_counter()
            warm = run_warmup(params, device_data, work / "warmup.pt")
            fine = run_finetune(params, device_data, work / "warmup.pt", work / "finetune.pt")
            if device_data.device.type == "cuda":
                torch.cuda.synchronize()
            row = {
                "recipe": recipe,
                "image_size": size,
                "seconds": round(time.perf_counter() - started, 1),
                "warmup_end": warm.history[-1],
                "finetune_end": fine.history[-1] if fine.history else None,
                "status": fine.status,
                "device": torch.cuda.get_device_name() if device_data.device.type == "cuda" else "cpu",
            }
            results.append(row)
            print(json.dumps(row))
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
