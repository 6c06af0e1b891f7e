"""The report's protocol and the tuned recipes on all 50k/10k images, over seeds and input sizes, as sweep folders.

Run (a CUDA machine; ``benchmarks/gpu_check.sh fidelity`` finds the files):
``python benchmarks/fidelity_gpu.py --images cifar10-jpeg.tar.gz --weights mobilenet_v2-imagenet-standin.pth``

Each (size, recipe) is a real grid sweep over ``--seeds`` driven by :class:`mobitune.sweep.run.SweepRun` with the
trials run in this process (no Prefect: the GPU image has none; see ``search_study.py``), the full 5 + 5 epoch
budget each. Sweeps run 64 px first (every CPU figure's size), then the others, until ``--deadline-s``; their
folders are tarred after each, so a run cut short keeps what finished. ``mobitune report --into docs/fidelity.md``
sets them beside the report.
"""

from __future__ import annotations

import argparse
import logging
import shutil
import tarfile
import time
from pathlib import Path

from search_study import InlineRunner

from mobitune.params import load_params
from mobitune.report.results import best_trial
from mobitune.sweep.run import SweepRun

ROOT = Path(__file__).resolve().parents[1]
PARAMS_AXES = ("lr", "batch_size", "trainable_layers")  # the axes params.yaml sweeps by default


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=Path, required=True, help="cifar10-jpeg.tar.gz (image-folder tarball)")
    parser.add_argument("--weights", type=Path, required=True, help="ImageNet MobileNetV2 state dict")
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 32, 224])
    parser.add_argument("--recipes", nargs="+", default=["report", "tuned"], help="names of recipes/*.yaml")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--limit", type=int, default=None, help="first N train and N/5 test images (subsets, smoke)")
    parser.add_argument("--set", action="append", default=[], help="KEY=VALUE after the recipe (repeatable)")
    parser.add_argument("--tag", default="", help="appended to each kept folder's name (<recipe>-<size>px<tag>)")
    parser.add_argument("--deadline-s", type=float, default=480, help="start no sweep after this many seconds")
    parser.add_argument("--work", type=Path, default=Path("/tmp/fidelity"))
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "out" / "fidelity")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    logger = logging.getLogger("fidelity")

    started = time.perf_counter()
    args.out.mkdir(parents=True, exist_ok=True)
    for size in args.sizes:
        for recipe in args.recipes:
            if time.perf_counter() - started > args.deadline_s:
                logger.info("deadline reached: %s at %d px not started", recipe, size)
                return
            recipe_file = ROOT / "recipes" / f"{recipe}.yaml"
            overrides = [
                f"device={args.device}",
                f"data.source={args.images.resolve()}",
                "data.md5=null",
                f"model.pretrained={args.weights.resolve()}",
                f"model.image_size={size}",
                "sweep.mode=grid",
                f"sweep.seeds={args.seeds}",
            ]
            if args.limit:
                overrides += [f"data.train_limit={args.limit}", f"data.test_limit={max(1, args.limit // 5)}"]
            overrides += args.set
            recipe_params = load_params(ROOT / "params.yaml", overrides, recipe_file)
            # params.yaml's axes at the recipe's own values: a grid over seeds alone
            overrides += [f"sweep.{axis}=[{getattr(recipe_params, axis)}]" for axis in PARAMS_AXES]
            params = load_params(ROOT / "params.yaml", overrides, recipe_file)
            sweep_started = time.perf_counter()
            run = SweepRun.start(params, args.work, str(recipe_file.relative_to(ROOT)), overrides, "local")
            run.drive(InlineRunner(), 1, logger)
            results = run.finish()
            best = best_trial(results)
            logger.info(
                "%s at %d px: %s in %.0f s (best %s)",
                recipe,
                size,
                ", ".join(f"{a * 100:.2f}%" for a in results.table["test_accuracy"]),
                time.perf_counter() - sweep_started,
                None if best is None else best["trial_id"],
            )
            shutil.copytree(run.sweep_dir, args.work / "keep" / f"{recipe}-{size}px{args.tag}", dirs_exist_ok=True)
            with tarfile.open(args.out / "sweeps.tar.gz", "w:gz") as archive:
                archive.add(args.work / "keep", arcname="sweeps")


if __name__ == "__main__":
    main()
