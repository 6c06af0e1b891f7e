"""The report's one-at-a-time study against searched sweeps (TPE or random + ASHA) with as many trials.

Run on real images with the stand-in weights (see ``../shared/data/README.md``):
``python benchmarks/search_study.py --images cifar10-jpeg.tar.gz --weights mobilenet_v2-imagenet-standin.pth``
(``benchmarks/gpu_check.sh search`` finds the files on a GPU machine).

Each study is a real sweep driven by :class:`mobitune.sweep.run.SweepRun`, the
code the ``sweep`` flow runs, with trials executed in this process one at a
time (no Prefect: the GPU image has none), so every study gets a sweep folder
with its ``results.csv``, ``search.json`` and ``report.md``. Studies run in
order (the baseline first) until ``--deadline-s``; the summary is rewritten
after each, so a run cut short keeps what finished.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import tarfile
import time
from pathlib import Path
from typing import Any

from mobitune.params import load_params
from mobitune.provenance import provenance
from mobitune.report.results import best_trial
from mobitune.sweep.plan import expand
from mobitune.sweep.run import SweepRun
from mobitune.sweep.study_run import InlineRunner

ROOT = Path(__file__).resolve().parents[1]
SEARCH_SPACE = [  # the report's axes; lr as the range its Table 1 spans, sampled on a log scale
    "sweep.lr={low: 0.0001, high: 0.05, log: true}",
    "sweep.batch_size=[32, 64, 128, 192]",
    "sweep.trainable_layers=[2, 5, 10]",
]


def studies(trials: int, seeds: list[int]) -> list[tuple[str, list[str]]]:
    """The baseline (params.yaml's one-at-a-time axes), TPE + ASHA per search seed, random + ASHA once."""

    def searched(mode: str, seed: int) -> list[str]:
        asha = ["sweep.early_stop.method=asha", "sweep.early_stop.min_epochs=1", "sweep.early_stop.reduction=3"]
        return [f"sweep.mode={mode}", f"sweep.trials={trials}", f"sweep.search_seed={seed}", *SEARCH_SPACE, *asha]

    return [
        ("one-at-a-time", []),
        *[(f"tpe-asha-seed{seed}", searched("tpe", seed)) for seed in seeds],
        (f"random-asha-seed{seeds[0]}", searched("random", seeds[0])),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=Path, required=True, help="cifar10-jpeg.tar.gz (image-folder tarball)")
    parser.add_argument("--weights", type=Path, required=True, help="ImageNet MobileNetV2 state dict")
    parser.add_argument("--train-limit", type=int, default=10000)
    parser.add_argument("--test-limit", type=int, default=2000)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--finetune-epochs", type=int, default=9, help="a full trial (ASHA rungs at 1 and 3)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="search seeds, one study each")
    parser.add_argument("--only", nargs="+", default=None, help="run just these studies (names as in summary.json)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--deadline-s", type=float, default=480, help="start no study after this many seconds")
    parser.add_argument("--work", type=Path, default=Path("/tmp/search-study"))
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "out" / "search")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    logger = logging.getLogger("search_study")

    started = time.perf_counter()
    args.out.mkdir(parents=True, exist_ok=True)
    base = [
        f"device={args.device}",
        f"data.source={args.images.resolve()}",
        "data.md5=null",
        f"data.train_limit={args.train_limit}",
        f"data.test_limit={args.test_limit}",
        f"model.pretrained={args.weights.resolve()}",
        f"model.image_size={args.image_size}",
        f"sweep.finetune_epochs={args.finetune_epochs}",
    ]
    # the base trial is the report's choice (lr 0.005, batch 192, 10 blocks); its one-at-a-time axes are Tables 1-3
    trials = len(expand(load_params(ROOT / "params.yaml", base)))
    protocol = {key: value.name if isinstance(value, Path) else value for key, value in vars(args).items()}
    summary: dict[str, Any] = {"protocol": protocol, "provenance": provenance(), "studies": []}
    for name, overrides in studies(trials, args.seeds):
        if args.only and name not in args.only:
            continue
        if time.perf_counter() - started > args.deadline_s:
            logger.info("deadline reached: %s not started", name)
            break
        params = load_params(ROOT / "params.yaml", [*base, *overrides])
        study_started = time.perf_counter()
        run = SweepRun.start(params, args.work, None, [*base, *overrides], "local")
        run.drive(InlineRunner(), 1, logger)
        results = run.finish()
        best = best_trial(results)
        table = results.table
        entry = {
            "study": name,
            "sweep_id": run.sweep_id,
            "trials": len(table),
            "finetune_epochs_spent": int(table["finetune_epochs"].sum()),
            "finetune_epochs_full": len(table) * args.finetune_epochs,
            "best_test_accuracy": None if best is None else float(best["test_accuracy"]),
            "best_trial": None if best is None else best["trial_id"],
            "stopped": int((table["status"] == "stopped").sum()),
            "statuses": table["status"].value_counts().to_dict(),
            "seconds": time.perf_counter() - study_started,
        }
        summary["studies"].append(entry)
        logger.info("%s", json.dumps(entry))
        (args.out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        keep = args.work / "keep" / name
        shutil.copytree(run.sweep_dir, keep, dirs_exist_ok=True)
        with tarfile.open(args.out / "sweeps.tar.gz", "w:gz") as archive:
            archive.add(args.work / "keep", arcname="sweeps")
    shutil.rmtree(args.work / "sweeps", ignore_errors=True)


if __name__ == "__main__":
    main()
