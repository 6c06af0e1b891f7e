"""How busy mobitune keeps a GPU: train-step throughput against a bare loop, the protocol's wall time, and the
report's 11-trial study with 1, 2 and 4 trials at once on one device.

Run on a CUDA machine through ``benchmarks/gpu_check.sh speed`` and ``benchmarks/gpu_check.sh study`` (each under
9 minutes on an H100/H200); ``--smoke`` runs both on this CPU with a few images, to check the script itself.

- ``speed``: the finetune train step's images/s, mobitune eager and captured (``compile=reduce-overhead``: CUDA
  graphs), against the bare loop of ``benchmarks/bench.py`` in the same process, alternating, at 32 and 64 px,
  batch 32 and 192; the bare loop at batch 1024 (the saturated rate the busy share is measured against); the
  report's protocol on all 50k/10k images at 32 and 64 px, eager and captured; the memory estimate of
  :mod:`mobitune.training.memory` beside what the protocol's trial allocated.
- ``nvml``: what recording a trial's device use (:class:`~mobitune.training.device_use.DeviceUse`: peak memory,
  and NVML read by a thread once a second) costs a finetune epoch: the protocol's finetune at 64 px on every
  image, one epoch at a time with and without it, alternating.
- ``study``: the report's one-at-a-time study (11 trials, 5 + 5 epochs, full data, 32 px) as a sweep whose
  trials run in 1, 2 or 4 processes sharing the GPU (what ``prefect worker start --limit N`` does on a worker),
  nothing cached; the busy share is the study's images/s over the saturated bare loop's.

Each result is written to ``--out`` as soon as it is measured, with the device's name and the git revision,
so a run cut short keeps what finished.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import logging
import multiprocessing
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from bench import REAL_IMAGES, ROOT, alternate, make_model, median_rate, plain_train, synchronize

from mobitune.params import Params, load_params
from mobitune.provenance import provenance
from mobitune.sweep.run import SweepRun
from mobitune.sweep.trial import run_trial_recorded
from mobitune.sweep.trial_files import TrialRequest
from mobitune.sweep.trial_setup import ensure_data
from mobitune.training.batches import DeviceData, DeviceSplit, resolve_device
from mobitune.training.data import Dataset, load_dataset, prepare
from mobitune.training.device_use import DeviceUse
from mobitune.training.loop import compiled, run_finetune, run_warmup, train_one_epoch
from mobitune.training.memory import trial_memory_bytes

WEIGHTS = ROOT.parent / "shared" / "data" / "mobilenet_v2-imagenet-standin.pth"
SATURATED_BATCH = 1024
SMOKE = ["data.train_limit=256", "data.test_limit=64", "warmup.epochs=1", "finetune.epochs=1"]  # --smoke's trials


class Results:
    """One JSON file, rewritten after every measurement."""

    def __init__(self, path: Path, mode: str, device: torch.device) -> None:
        self.path = path
        name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
        source = provenance(device=name, threads=torch.get_num_threads())
        if os.environ.get("GIT_REV"):  # the device's copy of the tree has no .git
            source["git_commit"] = os.environ["GIT_REV"]
        self.data: dict[str, Any] = {
            "mode": mode,
            "provenance": {**source, "torch_build": torch.__version__},
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }

    def add(self, key: str, value: Any) -> None:
        self.data.setdefault(key, []).append(value)
        print(json.dumps({key: value}), flush=True)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text(json.dumps(self.data, indent=2) + "\n")


def recipe_params(recipe: str, images: Path, weights: Path | None, device: str, size: int, *extra: str) -> Params:
    overrides = [
        f"device={device}",
        f"data.source={images}",
        "data.md5=null",
        f"model.pretrained={weights or 'none'}",
        f"model.image_size={size}",
        *extra,
    ]
    return load_params(ROOT / "params.yaml", overrides, ROOT / "recipes" / f"{recipe}.yaml")


def train_step_rates(
    dataset: Dataset, device: torch.device, size: int, batch: int, images: int, repeats: int
) -> dict[str, float]:
    """Images/s of the finetune train step: mobitune eager and captured, and the bare loop, alternating."""
    params = Params().override([f"model.image_size={size}", f"device={device}"])
    full = DeviceData.create(params, dataset, device)
    subset = DeviceSplit(full.train.images[:images], full.train.labels[:images])
    data = DeviceData(dataset, device, subset, full.test, full.train_transform, full.test_transform)
    x_plain = data.test_transform(subset.images)
    runs = {}
    for name, mode in (("eager", "none"), ("captured", "reduce-overhead" if device.type == "cuda" else "none")):
        model = make_model("finetune", device)
        runner = compiled(model, mode)
        optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-3)
        generator = torch.Generator(device=device).manual_seed(0)
        runs[name] = lambda r=runner, o=optimizer, g=generator: train_one_epoch(r, o, data, batch, g, "bench")
    plain = make_model("finetune", device)
    runs["bare"] = lambda: plain_train(plain, x_plain, subset.labels, batch, data.autocast)
    times = alternate(runs, repeats, device)
    return {name: median_rate(images, seconds) for name, seconds in times.items()}


def saturated_rate(dataset: Dataset, device: torch.device, size: int, images: int, repeats: int) -> float:
    """The bare loop's finetune images/s at a batch that fills the GPU: what "busy" is measured against."""
    params = Params().override([f"model.image_size={size}", f"device={device}"])
    data = DeviceData.create(params, dataset, device)
    x = data.test_transform(data.train.images[:images])
    model = make_model("finetune", device)
    labels = data.train.labels[:images]
    times = alternate({"bare": lambda: plain_train(model, x, labels, SATURATED_BATCH, data.autocast)}, repeats, device)
    return median_rate(images, times["bare"])


def protocol(args: argparse.Namespace, prepared: Path, work: Path, size: int, compile_mode: str) -> dict[str, Any]:
    """The report's protocol (5 warmup + 5 finetune epochs) on every image, as the DVC stages run it."""
    params = recipe_params("report", args.images, args.weights, args.device, size, f"compile={compile_mode}")
    if args.smoke:
        params = params.override(SMOKE)
    dataset = load_dataset(prepared, params.data.train_limit, params.data.test_limit)
    device = resolve_device(params.device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    started = time.perf_counter()
    device_data = DeviceData.create(params, dataset, device)
    run_warmup(params, device_data, work / "warmup.pt")
    fine = run_finetune(params, device_data, work / "warmup.pt", work / "finetune.pt")
    synchronize(device)
    images = len(dataset.train.labels) + len(dataset.test.labels)
    estimate = trial_memory_bytes(params, len(dataset.classes), images, dataset.train.images.shape[1:])
    return {
        "image_size": size,
        "compile": compile_mode,
        "train_images": len(dataset.train.labels),
        "seconds": round(time.perf_counter() - started, 2),
        "test_accuracy": fine.history[-1]["test_accuracy"],
        "finetune_epoch_seconds": [round(row["seconds"], 2) for row in fine.history],
        "memory_estimate_gib": round(estimate / 2**30, 2),
        "memory_peak_allocated_gib": (
            round(torch.cuda.max_memory_allocated(device) / 2**30, 2) if device.type == "cuda" else None
        ),
    }


def speed(args: argparse.Namespace, results: Results, dataset: Dataset, prepared: Path, work: Path) -> None:
    device = resolve_device(args.device)
    images, repeats = (384, 1) if args.smoke else (192 * 64, 3)
    for size in (32, 64):
        for batch in (32, 192):
            rates = train_step_rates(dataset, device, size, batch, images, repeats)
            row = {"image_size": size, "batch_size": batch, **{f"{k}_images_per_s": round(v) for k, v in rates.items()}}
            row |= {"eager_ratio": rates["eager"] / rates["bare"], "captured_ratio": rates["captured"] / rates["bare"]}
            results.add("train_step", row)
        saturated = saturated_rate(dataset, device, size, images if args.smoke else 192 * 128, repeats)
        results.add("saturated", {"image_size": size, "batch_size": SATURATED_BATCH, "images_per_s": round(saturated)})
    for size, compile_mode in ((32, "none"), (32, "reduce-overhead"), (64, "none"), (64, "reduce-overhead")):
        if args.smoke and compile_mode != "none":
            continue  # Inductor compiles for minutes on a small CPU
        results.add("protocol", protocol(args, prepared, work, size, compile_mode))


def device_use_overhead(
    args: argparse.Namespace, results: Results, dataset: Dataset, prepared: Path, work: Path
) -> None:
    """Median finetune-epoch seconds with and without :class:`DeviceUse` around it, 5 alternating pairs."""
    params = recipe_params("report", args.images, args.weights, args.device, 64, "finetune.epochs=1")
    if args.smoke:
        params = params.override(SMOKE)
    dataset = load_dataset(prepared, params.data.train_limit, params.data.test_limit)
    device_data = DeviceData.create(params, dataset, resolve_device(params.device))
    run_warmup(params, device_data, work / "warmup.pt")
    seconds: dict[str, list[float]] = {"without": [], "with": []}
    for _ in range(2 if args.smoke else 5):
        for recorded in ("without", "with"):
            use = DeviceUse(params, device_data.device, dataset) if recorded == "with" else None
            started = time.perf_counter()
            if use is None:
                run_finetune(params, device_data, work / "warmup.pt", work / "finetune.pt")
            else:
                with use:
                    run_finetune(params, device_data, work / "warmup.pt", work / "finetune.pt")
            synchronize(device_data.device)
            seconds[recorded].append(time.perf_counter() - started)
    medians = {recorded: statistics.median(values) for recorded, values in seconds.items()}
    results.add(
        "device_use",
        {
            "epoch_seconds": {k: [round(v, 3) for v in values] for k, values in seconds.items()},
            "median_without_s": round(medians["without"], 3),
            "median_with_s": round(medians["with"], 3),
            "overhead_percent": round(100 * (medians["with"] / medians["without"] - 1), 2),
            "nvml_samples_last_epoch": len(use.samples) if use is not None else 0,
        },
    )


def _run_trial(request: TrialRequest) -> str:
    """A trial in a worker process of the study's pool; "" when it completed."""
    run_trial_recorded(request)
    return ""


class ProcessRunner:
    """A :class:`~mobitune.sweep.run.Runner` over a pool of processes on one device: what ``prefect worker
    start --limit N`` gives one machine, without Prefect (the GPU machine has none)."""

    poll_seconds = 0.2

    def __init__(self, processes: int) -> None:
        context = multiprocessing.get_context("spawn")  # CUDA cannot be used in a forked process
        self.pool = concurrent.futures.ProcessPoolExecutor(processes, mp_context=context)

    def start(self, request: TrialRequest) -> concurrent.futures.Future:
        return self.pool.submit(_run_trial, request)

    def outcome(self, future: concurrent.futures.Future) -> str | None:
        if not future.done():
            return None
        return "" if future.exception() is None else f"{type(future.exception()).__name__}: {future.exception()}"


def study(args: argparse.Namespace, results: Results, dataset: Dataset, prepared: Path, work: Path) -> None:
    device = resolve_device(args.device)
    size = 32
    repeats = 1 if args.smoke else 3
    saturated = saturated_rate(dataset, device, size, 512 if args.smoke else 192 * 128, repeats)
    results.add("saturated", {"image_size": size, "batch_size": SATURATED_BATCH, "images_per_s": round(saturated)})
    params = recipe_params("report", args.images, args.weights, args.device, size, *(SMOKE if args.smoke else []))
    logger = logging.getLogger("study")
    root = work / "study"
    ensure_data(params.data, root)  # decoded before the clock starts, once for every study
    train = len(load_dataset(prepared, params.data.train_limit).train.labels)
    deadline = time.monotonic() + args.deadline_s
    for processes in args.processes:
        done = results.data.get("study")
        if done and time.monotonic() + done[0]["seconds"] / processes > deadline:
            results.add("skipped", {"processes": processes, "why": f"would end after --deadline-s {args.deadline_s}"})
            continue
        run = SweepRun.start(params, root, "report", [], "local", use_cache=False)  # every trial trains
        runner = ProcessRunner(processes)
        started = time.perf_counter()
        try:
            run.drive(runner, processes, logger)
        finally:
            runner.pool.shutdown()
        seconds = time.perf_counter() - started
        table = run.finish().table
        trained = train * (params.warmup.epochs + int(table["finetune_epochs"].sum()))
        results.add(
            "study",
            {
                "processes": processes,
                "trials": len(table),
                "ok": int((table["status"] == "ok").sum()),
                "seconds": round(seconds, 1),
                "images_per_s": round(trained / seconds),
                "busy_share": round(trained / seconds / saturated, 3),
                "best_test_accuracy": float(table["test_accuracy"].max()),
            },
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("mode", choices=["speed", "study", "nvml"])
    parser.add_argument("--images", type=Path, default=REAL_IMAGES, help="cifar10-jpeg.tar.gz (image folders)")
    parser.add_argument("--weights", type=Path, default=WEIGHTS, help="ImageNet MobileNetV2 state dict")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--processes", type=int, nargs="+", default=[1, 4, 2], help="trials at once in the study")
    parser.add_argument("--deadline-s", type=float, default=420, help="study: skip what would end after this")
    parser.add_argument("--smoke", action="store_true", help="a few images and epochs: checks the script on a CPU")
    parser.add_argument("--out", type=Path, default=None, help="JSON file (default: benchmarks/gpu/<mode>.json)")
    args = parser.parse_args()
    if not args.weights.exists():
        args.weights = None  # random weights: the figures of speed hold, accuracies do not
    device = resolve_device(args.device)
    out = args.out or ROOT / "benchmarks" / "gpu" / f"{args.mode}.json"
    results = Results(out, args.mode, device)
    work = Path(tempfile.mkdtemp(prefix=f"gpu-{args.mode}-"))
    prepared = work / "prepared"
    started = time.perf_counter()
    prepare(str(args.images.resolve()), None, prepared)
    results.data["decode_s"] = round(time.perf_counter() - started, 1)
    dataset = load_dataset(prepared)
    if args.mode == "speed":
        speed(args, results, dataset, prepared, work)
    elif args.mode == "nvml":
        device_use_overhead(args, results, dataset, prepared, work)
    else:
        study(args, results, dataset, prepared, work)
    print(f"wrote {out}", file=sys.stderr)


if __name__ == "__main__":
    main()
