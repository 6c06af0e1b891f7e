"""Throughput and overhead benchmarks: mobitune against a plain PyTorch loop, same process.

Run: ``make bench`` (or ``python benchmarks/bench.py [--quick] [--out benchmarks/latest.json]``).

Each pair is measured alternating (mobitune, plain, mobitune, ...) after a
warm-up round, and reported as the median images/s and the ratio
mobitune/plain. The plain loop is what a careful hand-written loop does: the
same model, optimizer, batch and data, pre-normalised float tensors in
channels_last memory, frozen features under ``no_grad``. The machine's load
average is recorded with every figure: a loaded machine makes them worthless.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import itertools
import json
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from mobitune.params import Params
from mobitune.provenance import provenance
from mobitune.training.batches import BatchTransform, DeviceData, DeviceSplit, resolve_device
from mobitune.training.data import Dataset, Split, load_dataset, prepare
from mobitune.training.loop import FitRun, evaluate, fit, train_one_epoch
from mobitune.training.model import MobileNetClassifier, set_trainable_layers
from mobitune.training.phases import warmup_phase

ROOT = Path(__file__).resolve().parents[1]
REAL_IMAGES = ROOT.parent / "shared" / "data" / "cifar10-jpeg.tar.gz"
WORKER_TRIALS = 8  # the sweep size at which the workers backend must add at most 3 s per trial (issue 18)
MODES = {"warmup": 0, "finetune": 10, "full": None}  # trainable blocks; None = every layer


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def median_rate(images: int, seconds: list[float]) -> float:
    return images / statistics.median(seconds)


def load_benchmark_data(cache: Path, images: Path) -> tuple[Dataset, str, float]:
    """The real images when present (decoded once by the download stage's code), else synthetic."""
    if images.exists():
        out = cache / "cifar10-jpeg"
        if not (out / "meta.json").exists():
            prepare(str(images), None, out)
        started = time.perf_counter()
        dataset = load_dataset(out)
        return dataset, "real CIFAR-10 images (shared/data)", time.perf_counter() - started
    rng = np.random.default_rng(0)
    split = lambda n: Split(rng.integers(0, 256, (n, 3, 32, 32), dtype=np.uint8), rng.integers(0, 10, n))  # noqa: E731
    meta = {"classes": [str(i) for i in range(10)]}
    return Dataset(split(50_000), split(10_000), meta["classes"], meta), "synthetic (shape of CIFAR-10)", 0.0


def make_model(mode: str, device: torch.device) -> MobileNetClassifier:
    torch.manual_seed(0)
    model = MobileNetClassifier(10, 128, 0.2)
    if MODES[mode] is None:
        model.requires_grad_(True)
        model.frozen_prefix = 0
    else:
        set_trainable_layers(model, MODES[mode], "first")
    return model.to(device, memory_format=torch.channels_last)


def plain_train(model: MobileNetClassifier, x: torch.Tensor, y: torch.Tensor, batch: int, autocast: Any) -> None:
    """A hand-written epoch: shuffled slices of pre-normalised data, Adam, cross-entropy."""
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    frozen = model.frozen_prefix
    model.train()
    order = torch.randperm(len(y), device=x.device)
    for start in range(0, len(y), batch):
        index = order[start : start + batch]
        inputs, labels = x[index], y[index]
        with autocast():
            if frozen:
                with torch.no_grad():
                    inputs = model.features[:frozen](inputs)
            logits = model.classifier(model.pool(model.features[frozen:](inputs)))
            loss = F.cross_entropy(logits, labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()


@torch.inference_mode()
def plain_eval(model: MobileNetClassifier, x: torch.Tensor, batch: int, autocast: Any) -> None:
    model.eval()
    for start in range(0, len(x), batch):
        with autocast():
            model(x[start : start + batch]).argmax(1)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def alternate(runs: dict[str, Callable[[], None]], repeats: int, device: torch.device) -> dict[str, list[float]]:
    """Time each callable ``repeats`` times, interleaved, after one untimed warm-up round."""
    times: dict[str, list[float]] = {name: [] for name in runs}
    for round_index in range(repeats + 1):
        for name, run in runs.items():
            synchronize(device)
            started = time.perf_counter()
            run()
            synchronize(device)
            if round_index:
                times[name].append(time.perf_counter() - started)
    return times


def bench_training(device_data: DeviceData, images: int, batch: int, repeats: int, log: Callable) -> dict[str, Any]:
    device = device_data.device
    subset = DeviceSplit(device_data.train.images[:images], device_data.train.labels[:images])
    sub_data = DeviceData(
        device_data.dataset, device, subset, device_data.test, device_data.train_transform, device_data.test_transform
    )
    x_plain = device_data.test_transform(subset.images)  # pre-normalised float, channels_last
    results: dict[str, Any] = {}
    for mode in MODES:
        rates = _train_pair(mode, sub_data, x_plain, images, batch, repeats)
        results[mode] = {
            **{f"{k}_images_per_s": v for k, v in rates.items()},
            "ratio": rates["mobitune"] / rates["plain"],
            "load": os.getloadavg()[0],
        }
        log(
            f"train {mode:9s} mobitune {rates['mobitune']:9.0f} img/s   plain {rates['plain']:9.0f} img/s   "
            f"ratio {results[mode]['ratio']:.3f}   load {results[mode]['load']:.2f}"
        )
    return results


def _train_pair(
    mode: str, device_data: DeviceData, x_plain: torch.Tensor, images: int, batch: int, repeats: int
) -> dict[str, float]:
    ours, plain = make_model(mode, device_data.device), make_model(mode, device_data.device)
    optimizer = torch.optim.Adam([p for p in ours.parameters() if p.requires_grad], lr=1e-3)
    generator = torch.Generator(device=device_data.device).manual_seed(0)
    times = alternate(
        {
            "mobitune": lambda: train_one_epoch(ours, optimizer, device_data, batch, generator, mode),
            "plain": lambda: plain_train(plain, x_plain, device_data.train.labels, batch, device_data.autocast),
        },
        repeats,
        device_data.device,
    )
    return {name: median_rate(images, t) for name, t in times.items()}


def bench_warmup_phase(
    device_data: DeviceData, images: int, epochs: int, repeats: int, log: Callable
) -> dict[str, Any]:
    """A whole warmup phase (train + test evaluation each epoch): mobitune's ``fit``, which
    computes the frozen features once, against the plain loop doing every epoch in full."""
    train = DeviceSplit(device_data.train.images[:images], device_data.train.labels[:images])
    test = DeviceSplit(device_data.test.images[:1000], device_data.test.labels[:1000])
    sub_data = DeviceData(
        device_data.dataset, device_data.device, train, test, device_data.train_transform, device_data.test_transform
    )
    x_train, x_test = device_data.test_transform(train.images), device_data.test_transform(test.images)
    phase = warmup_phase(Params().override([f"warmup.epochs={epochs}"]))

    def plain() -> None:
        model = make_model("warmup", device_data.device)
        for _ in range(epochs):
            plain_train(model, x_train, train.labels, 192, device_data.autocast)
            plain_eval(model, x_test, 1000, device_data.autocast)

    with tempfile.TemporaryDirectory() as tmp:
        times = alternate(
            {
                "mobitune": lambda: fit(
                    make_model("warmup", device_data.device),
                    phase,
                    sub_data,
                    FitRun(seed=0, checkpoint_path=Path(tmp) / "w.pt"),
                ),
                "plain": plain,
            },
            repeats,
            device_data.device,
        )
    seconds = {name: statistics.median(t) for name, t in times.items()}
    result = {
        **{f"{k}_s": v for k, v in seconds.items()},
        "epochs": epochs,
        "images": images,
        "ratio": seconds["plain"] / seconds["mobitune"],
    }
    log(
        f"warmup phase ({epochs} epochs, {images} images, test each epoch): mobitune {seconds['mobitune']:.2f}s, "
        f"plain {seconds['plain']:.2f}s -> {result['ratio']:.2f}x (frozen features computed once)"
    )
    return result


def bench_eval(device_data: DeviceData, repeats: int, log: Callable) -> dict[str, Any]:
    model = make_model("warmup", device_data.device)
    x_plain = device_data.test_transform(device_data.test.images)
    times = alternate(
        {
            "mobitune": lambda: evaluate(model, device_data),
            "plain": lambda: plain_eval(model, x_plain, 1000, device_data.autocast),
        },
        repeats,
        device_data.device,
    )
    rates = {name: median_rate(len(device_data.test), t) for name, t in times.items()}
    result = {**{f"{k}_images_per_s": v for k, v in rates.items()}, "ratio": rates["mobitune"] / rates["plain"]}
    log(
        f"eval           mobitune {rates['mobitune']:9.0f} img/s   plain {rates['plain']:9.0f} img/s   "
        f"ratio {result['ratio']:.3f}"
    )
    return result


def bench_data_path(dataset: Dataset, device: torch.device, decode_seconds: float, log: Callable) -> dict[str, Any]:
    started = time.perf_counter()
    train = DeviceSplit.from_split(dataset.train, device)
    DeviceSplit.from_split(dataset.test, device)
    synchronize(device)
    to_device = time.perf_counter() - started
    params = Params().override(["augment.flip=true", "augment.crop_padding=4"])
    transform = BatchTransform(device, 32, params.augment)
    generator = torch.Generator(device=device).manual_seed(0)
    started = time.perf_counter()
    for images, _ in train.batches(192, generator):
        transform(images, generator)
    synchronize(device)
    epoch = time.perf_counter() - started
    log(
        f"data: load arrays {decode_seconds:.2f}s, to device {to_device:.2f}s, "
        f"one epoch of batching+crop+flip+normalise {epoch:.2f}s"
    )
    return {"load_arrays_s": decode_seconds, "to_device_s": to_device, "epoch_batching_augment_s": epoch}


def tiny_sweep(work: Path, trials: int) -> list[str]:
    """Overrides for a sweep of ``trials`` tiny trials (16 random 32x32 images, 1+1 epochs): start-up dominates."""
    from PIL import Image

    tree = work / "tiny-images"
    rng = np.random.default_rng(0)
    for split, count in (("train", 8), ("test", 4)):
        for cls in ("a", "b"):
            (tree / split / cls).mkdir(parents=True, exist_ok=True)
            for i in range(count):
                Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(tree / split / cls / f"{i}.png")
    return [
        f"data.source={tree}",
        "data.md5=null",
        "model.pretrained=none",
        "device=cpu",
        "warmup.epochs=1",
        "finetune.epochs=1",
        "batch_size=8",
        "warmup.batch_size=8",
        "model.hidden_units=8",
        f"sweep={{lr: {[0.001 * (i + 1) for i in range(trials)]}}}",
    ]


def quiet_env(work: Path) -> dict[str, str]:
    return {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "PREFECT_HOME": str(work / "prefect"),
        "DO_NOT_TRACK": "1",
        "DVC_NO_ANALYTICS": "1",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_LOGGING_LEVEL": "WARNING",
    }


def direct_trials_seconds(params_file: Path, root: Path, env: dict[str, str]) -> float:
    """``run_trial`` on every trial of the sweep, one after the other in a fresh process (imports not timed)."""
    script = f"""
import time
from mobitune.params import load_params
from mobitune.sweep.plan import expand, new_sweep_id
from mobitune.sweep.trial import run_trial
from mobitune.sweep.trial_files import TrialRequest
params = load_params({str(params_file)!r})
sweep_id = new_sweep_id()
started = time.perf_counter()
for spec in expand(params):
    run_trial(TrialRequest(sweep_id=sweep_id, trial_id=spec.trial_id, params=spec.params, varied=spec.varied,
                           local_root={str(root)!r}))
print(time.perf_counter() - started)
"""
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def bench_orchestration(work: Path, trials: int, log: Callable) -> dict[str, Any]:
    """A sweep of ``trials`` tiny trials on the local backend vs calling run_trial directly."""
    overrides = tiny_sweep(work, trials)
    params_file = work / "params.yaml"
    params_file.write_text(json.dumps(Params().override(overrides).to_dict()))
    env = quiet_env(work)
    script = """
import json, time, sys
from pathlib import Path
from mobitune.params import load_params
from mobitune.sweep.plan import expand, new_sweep_id
from mobitune.sweep.trial import run_trial
from mobitune.sweep.trial_files import TrialRequest
from mobitune.orchestration.sweep_flow import sweep
import mobitune.sweep.trial_training  # torch and torchvision, imported by the first trial that trains: not timed
from prefect import flow
params = load_params("params.yaml")
@flow
def start_server(): pass
started = time.perf_counter(); start_server(); server = time.perf_counter() - started
started = time.perf_counter()
sweep(params_file="params.yaml", local_root="flow")
flow_seconds = time.perf_counter() - started
sweep_id = new_sweep_id()
started = time.perf_counter()
for spec in expand(params):
    run_trial(TrialRequest(sweep_id=sweep_id, trial_id=spec.trial_id, params=spec.params, varied=spec.varied,
                           local_root="direct"))
direct = time.perf_counter() - started
print(json.dumps({"server_start_s": server, "sweep_s": flow_seconds, "direct_s": direct}))
"""
    # the flow takes paths inside the project it runs in (a flow parameter never names a folder outside it)
    out = subprocess.run([sys.executable, "-c", script], cwd=work, env=env, capture_output=True, text=True, check=True)
    timing = json.loads(out.stdout.strip().splitlines()[-1])
    timing["trials"] = trials
    timing["overhead_per_trial_s"] = (timing["sweep_s"] - timing["direct_s"]) / trials
    timing["ratio"] = timing["sweep_s"] / timing["direct_s"]
    log(
        f"sweep of {trials} tiny trials: flow {timing['sweep_s']:.2f}s vs direct {timing['direct_s']:.2f}s "
        f"-> {timing['overhead_per_trial_s']:.2f}s overhead per trial (report+figures included); "
        f"Prefect temporary server start {timing['server_start_s']:.1f}s once"
    )

    project = work / "dvc"
    project.mkdir()
    for name in ("dvc.yaml", ".gitignore"):
        (project / name).write_text((ROOT / name).read_text())
    (project / "params.yaml").write_text(json.dumps(Params().override(overrides).to_dict()))
    subprocess.run(["cp", "-r", str(ROOT / "src"), str(project / "src")], check=True)
    for cmd in (["git", "init", "-q"], ["dvc", "init", "-q"], ["dvc", "repro", "-q"]):
        subprocess.run(cmd, cwd=project, env=env, check=True, capture_output=True)
    noop = []
    for _ in range(3):
        started = time.perf_counter()
        subprocess.run(["dvc", "repro"], cwd=project, env=env, check=True, capture_output=True)
        noop.append(time.perf_counter() - started)
    timing["dvc_repro_noop_s"] = statistics.median(noop)
    log(f"dvc repro with nothing to do: {timing['dvc_repro_noop_s']:.2f}s (median of 3)")
    return timing


CACHED_SWEEP_PHASES = (  # (phase, the log lines that may end it): the first such line present ends it
    ("start: imports, params, checks", ("Starting temporary server", "Beginning flow run")),
    ("Prefect's temporary server starts", ("Beginning flow run",)),
    ("flow run to its first task", ("Task run",)),
    ("the trials (all cached)", ("results in",)),
)


def timed_command(cmd: list[str], cwd: Path, env: dict[str, str]) -> tuple[float, list[tuple[float, str]]]:
    """Run ``cmd``; its seconds and each output line with the second it appeared at."""
    started = time.perf_counter()
    process = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert process.stdout is not None
    lines = [(time.perf_counter() - started, line.rstrip()) for line in process.stdout]
    if process.wait():
        raise RuntimeError(f"{' '.join(cmd)} failed:\n" + "\n".join(line for _, line in lines[-20:]))
    return time.perf_counter() - started, lines


def sweep_phases(seconds: float, lines: list[tuple[float, str]]) -> dict[str, float]:
    """Where a sweep command's seconds went, from when its log lines appeared (see CACHED_SWEEP_PHASES)."""
    phases, since = {}, 0.0
    for phase, markers in CACHED_SWEEP_PHASES:
        at = next((at for at, line in lines if any(marker in line for marker in markers)), None)
        if at is not None and at > since:
            phases[phase] = at - since
            since = at
    phases["report, figures, Prefect artifacts, exit"] = seconds - since
    return phases


def bench_cached_sweep(work: Path, log: Callable) -> dict[str, Any]:
    """``mobitune sweep`` of 2 tiny trials, both cached (an unchanged nightly sweep), as a user runs it: with a
    ``prefect server`` running, and without one (Prefect's temporary server). Median of 3 runs each."""
    project = work / "cached"
    project.mkdir()
    (project / "params.yaml").write_text(json.dumps(Params().override(tiny_sweep(work, 2)).to_dict()))
    env = {**quiet_env(work), "PREFECT_LOGGING_LEVEL": "INFO"}  # the phases are read from the log lines
    sweep = ["mobitune", "sweep"]
    timed_command(sweep, project, env)  # trains both trials and fills the cache
    port = free_port()
    server_env = {**env, "PREFECT_API_URL": f"http://127.0.0.1:{port}/api"}
    server = subprocess.Popen(
        ["prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    result: dict[str, Any] = {}
    try:
        _wait_for_api(server_env["PREFECT_API_URL"])
        for name, run_env in (("running_server", server_env), ("temporary_server", env)):
            runs = sorted((timed_command(sweep, project, run_env) for _ in range(3)), key=lambda run: run[0])
            seconds, lines = runs[1]
            cached = sum("reusing the result of an identical trial" in line for _, line in lines)
            result[name] = {"seconds": seconds, "cached_trials": cached, "phases": sweep_phases(seconds, lines)}
            breakdown = ", ".join(f"{phase} {s:.1f}s" for phase, s in result[name]["phases"].items())
            log(f"cached sweep of 2 trials, {name.replace('_', ' ')}: {seconds:.1f}s ({breakdown})")
    finally:
        stop_process(server)
    return result


def stop_process(process: subprocess.Popen) -> None:
    """Ctrl-C, as a user stops a server or worker; killed if it has not ended 20 s later."""
    process.send_signal(signal.SIGINT)
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def _wait_for_api(api: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            _api(api, "health")
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def _api(api: str, path: str, body: dict | None = None) -> Any:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(f"{api}/{path}", data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


def _timed(runs: list[dict[str, Any]]) -> list[dict[str, float]]:
    """Flow or task runs that ran, in the order they started: when each was created, started and ended."""

    def stamp(text: str) -> float:
        return datetime.datetime.fromisoformat(text).timestamp()

    timed = [
        {"created": stamp(run["created"]), "start": stamp(run["start_time"]), "end": stamp(run["end_time"])}
        for run in runs
        if run["start_time"] and run["end_time"]
    ]
    return sorted(timed, key=lambda run: run["start"])


def bench_workers(work: Path, trials: int, log: Callable) -> dict[str, Any]:
    """A sweep of ``trials`` tiny trials on the workers backend (a real ``prefect server``, one ``prefect worker
    --limit 1``) against ``run_trial`` on the same trials directly: what orchestration adds per trial.

    Where it goes, from the flow runs' state histories: the sweep command's own start (its process, imports,
    until the slot run is asked for); the slot run's start, once per slot (the worker's poll for it, then a new
    process importing torch and Prefect); per trial, the hand-off (the previous trial task's end to the next
    one's start: the sweep reading the answer, posting the next job, the slot picking it up), and the trial task
    itself beside the same trial called directly.
    """
    project = work / "workers"
    project.mkdir()
    params = Params().override(tiny_sweep(work, trials)).to_dict()
    (project / "params.yaml").write_text(json.dumps(params))
    shutil.copy(ROOT / "prefect.yaml", project / "prefect.yaml")
    shutil.copytree(ROOT / "flows", project / "flows", ignore=shutil.ignore_patterns("__pycache__"))
    port = free_port()
    api = f"http://127.0.0.1:{port}/api"
    query_seconds = os.environ.get("PREFECT_WORKER_QUERY_SECONDS", "2")
    env = {**quiet_env(work), "PREFECT_API_URL": api, "PREFECT_WORKER_QUERY_SECONDS": query_seconds}
    processes = []

    def start(name: str, cmd: list[str]) -> None:
        out = (work / f"{name}.log").open("w")
        processes.append(subprocess.Popen(cmd, cwd=project, env=env, stdout=out, stderr=subprocess.STDOUT))

    try:
        start("server", ["prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port)])
        _wait_for_api(api)
        for cmd in (["mobitune", "setup"], ["prefect", "--no-prompt", "deploy", "--all"]):
            subprocess.run(cmd, cwd=project, env=env, check=True, capture_output=True)
        start("worker", ["prefect", "worker", "start", "--pool", "gpu", "--limit", "1"])
        time.sleep(5)  # the worker is polling
        started = time.time()
        sweep = ["mobitune", "sweep", "--backend", "workers"]
        subprocess.run(sweep, cwd=project, env=env, check=True, capture_output=True)
        sweep_seconds = time.time() - started

        slots = _timed(_api(api, "flow_runs/filter", {"flows": {"name": {"any_": ["trial-slot"]}}}))
        tasks = _timed(_api(api, "task_runs/filter", {"flows": {"name": {"any_": ["trial-slot"]}}}))
    finally:
        for process in reversed(processes):
            stop_process(process)
    direct = direct_trials_seconds(project / "params.yaml", work / "direct", quiet_env(work))
    first_slot = slots[0]
    handoffs = [b["start"] - a["end"] for a, b in itertools.pairwise(tasks)]
    timing: dict[str, Any] = {
        "trials": trials,
        "slot_runs": len(slots),
        "trial_task_runs": len(tasks),
        "worker_query_seconds": float(query_seconds),
        "sweep_s": sweep_seconds,
        "direct_s": direct,
        "overhead_per_trial_s": (sweep_seconds - direct) / trials,
        "sweep_start_s": first_slot["created"] - started,
        "slot_start_s": first_slot["start"] - first_slot["created"],
        "handoff_s": statistics.median(handoffs),
        "trial_run_s": statistics.median(run["end"] - run["start"] for run in tasks),
        "sweep_end_s": started + sweep_seconds - tasks[-1]["end"],
    }
    log(
        f"sweep of {trials} tiny trials on workers (1 worker, query every {query_seconds} s): {sweep_seconds:.1f}s vs "
        f"direct {direct:.2f}s -> {timing['overhead_per_trial_s']:.1f}s overhead per trial; once per sweep: "
        f"sweep start {timing['sweep_start_s']:.1f}s, slot start {timing['slot_start_s']:.1f}s, sweep end "
        f"{timing['sweep_end_s']:.1f}s; per trial (median): hand-off {timing['handoff_s']:.2f}s, trial run "
        f"{timing['trial_run_s']:.2f}s (direct {direct / trials:.2f}s)"
    )
    return timing


def bench_cuda(device_data: DeviceData, images: int, repeats: int, log: Callable) -> dict[str, Any]:
    """On CUDA: image size, bf16 autocast, channels_last and torch.compile, finetune mode."""
    device = device_data.device
    results: dict[str, Any] = {}
    subset = device_data.train.images[:images]
    labels = device_data.train.labels[:images]
    variants = [
        ("32px bf16 cl", 32, True, True, False),
        ("32px fp32 cl", 32, False, True, False),
        ("32px bf16 nchw", 32, True, False, False),
        ("32px bf16 cl compile", 32, True, True, True),
        ("64px bf16 cl", 64, True, True, False),
        ("96px bf16 cl", 96, True, True, False),
        ("128px bf16 cl", 128, True, True, False),
        ("224px bf16 cl", 224, True, True, False),
    ]
    for name, size, bf16, channels_last, compiled in variants:
        transform = BatchTransform(device, size)
        transform.channels_last = channels_last
        x = transform(subset)
        model = make_model("finetune", device)
        if not channels_last:
            model = model.to(memory_format=torch.contiguous_format)
        runner = torch.compile(model) if compiled else model
        autocast = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if bf16 else contextlib.nullcontext
        optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-3)

        def step(
            runner: Any = runner, x: torch.Tensor = x, optimizer: Any = optimizer, autocast: Any = autocast
        ) -> None:
            runner.train()
            for start in range(0, len(labels), 192):
                with autocast():
                    loss = F.cross_entropy(runner(x[start : start + 192]), labels[start : start + 192])
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()

        times = alternate({name: step}, repeats, device)
        results[name] = median_rate(images, times[name])
        log(f"cuda {name:22s} {results[name]:10.0f} img/s (finetune mode)")
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer images and repeats (a smoke run)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "latest.json")
    parser.add_argument("--skip-orchestration", action="store_true")
    parser.add_argument(
        "--workers-only", action="store_true", help="only the workers-backend start-up (a server, a worker)"
    )
    parser.add_argument(
        "--cached-only", action="store_true", help="only the fully cached sweep (with and without a running server)"
    )
    parser.add_argument("--trials", type=int, default=WORKER_TRIALS, help="trials of the workers-backend sweep")
    parser.add_argument("--images", type=Path, default=REAL_IMAGES, help="image-folder tarball (default: shared/data)")
    args = parser.parse_args()
    repeats, images = (1, 384) if args.quick else (5, 1920)
    lines: list[str] = []

    def log(line: str) -> None:
        print(line, flush=True)
        lines.append(line)

    if args.workers_only or args.cached_only:
        with tempfile.TemporaryDirectory() as work:
            if args.workers_only:
                result = {"workers": bench_workers(Path(work), args.trials, log)}
            else:
                result = {"cached_sweep": bench_cached_sweep(Path(work), log)}
        result["provenance"] = provenance(device="cpu", threads=torch.get_num_threads())
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({**result, "log": lines}, indent=2) + "\n")
        return
    device = resolve_device(args.device)
    cache = ROOT / "benchmarks" / "out"
    dataset, data_name, load_seconds = load_benchmark_data(cache, args.images)
    params = Params().override([f"device={device}"])
    device_data = DeviceData.create(params, dataset, device)
    chip = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or platform.machine()
    log(
        f"mobitune benchmarks on {device} ({chip}), torch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"data: {data_name}, load {os.getloadavg()[0]:.2f}"
    )
    report: dict[str, Any] = {
        "provenance": device_data.provenance(params.seed),
        "data": data_name,
        "batch_size": 192,
        "images_per_run": images,
        "repeats": repeats,
        "load_before": os.getloadavg()[0],
    }
    report["train"] = bench_training(device_data, images, 192, repeats, log)
    for mode in MODES:
        report[f"ratio_{mode}"] = report["train"][mode]["ratio"]
    report["warmup_phase"] = bench_warmup_phase(device_data, images * 2, 5, max(1, repeats // 2), log)
    report["eval"] = bench_eval(device_data, repeats, log)
    report["data_path"] = bench_data_path(dataset, device, load_seconds, log)
    if not args.skip_orchestration:
        with tempfile.TemporaryDirectory() as work:
            report["orchestration"] = bench_orchestration(Path(work), 4, log)
        with tempfile.TemporaryDirectory() as work:
            report["cached_sweep"] = bench_cached_sweep(Path(work), log)
        with tempfile.TemporaryDirectory() as work:
            report["workers"] = bench_workers(Path(work), args.trials, log)
    if device.type == "cuda":
        report["cuda"] = bench_cuda(device_data, images * 10, repeats, log)
    report["load_after"] = os.getloadavg()[0]
    report["log"] = lines
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
