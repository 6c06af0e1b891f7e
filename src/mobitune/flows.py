"""Prefect flows ``sweep`` and ``trial`` (deployment entry points: ``flows/sweep.py``, ``flows/trial.py``).

``sweep`` asks its :class:`~mobitune.search.Scheduler` for trial segments
(enumerated or sampled trials, early-stopping rungs, a budget), trains each
distinct warmup once before the trials that share it, fans the segments out,
gathers, aggregates and publishes. Two backends, same results:

- ``local``: trials are Prefect tasks in this process, one per device at a time
  (one per GPU; on a CPU-only machine one at a time unless ``parallel`` says
  otherwise);
- ``workers``: each trial is a flow run of the ``trial`` deployment on work
  pool ``gpu`` (``run_deployment``), executed by whichever worker is free.
  A run that crashes (worker killed) is submitted again and resumes from its
  last per-epoch checkpoint in the artifact store.
"""

from __future__ import annotations

import dataclasses
import json
import queue
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import pandas as pd
import torch
from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE
from prefect.task_runners import ThreadPoolTaskRunner

from mobitune.loader import resolve_device
from mobitune.params import Params, load_params
from mobitune.publish import SWEEP_RECORD, publish, write_manifest
from mobitune.records import json_safe, write_json
from mobitune.report import SEARCH_RECORD, load_results, write_report
from mobitune.search import STOPPED, Scheduler, Segment
from mobitune.storage import check_storage, open_store
from mobitune.sweep import lookup, new_sweep_id, warmup_key
from mobitune.trial import TRIAL_FILES, TrialRequest, record_failure, run_trial_recorded, trial_key

WORKER_POLL_SECONDS = 2.0
WORKER_ATTEMPTS = 3  # submissions of one trial before it is recorded as failed
SEARCH_IN_FLIGHT = 4  # random/tpe trials in flight on workers unless --parallel says: each waits for feedback


@flow(name="trial", log_prints=True)
def trial(
    sweep_id: str,
    trial_id: str,
    params: dict[str, Any],
    varied: dict[str, Any] | None = None,
    store_uri: str | None = None,
    local_root: str = "artifacts",
    warmup_only: bool = False,
) -> dict[str, Any]:
    """One trial: fetch or train its warmup, finetune, store params/history/metrics."""
    request = TrialRequest(sweep_id, trial_id, params, varied or {}, store_uri, local_root, warmup_only)
    return run_trial_recorded(request)


@task(name="trial", cache_policy=NO_CACHE)
def local_trial(request: TrialRequest, devices: queue.Queue[str]) -> dict[str, Any]:
    """A trial on the next free device of this machine."""
    device = devices.get()
    try:
        params = {**request.params, "device": device}
        return run_trial_recorded(dataclasses.replace(request, params=params))
    finally:
        devices.put(device)


def local_devices(params: Params, parallel: int | None) -> list[str]:
    """One slot per GPU (or ``parallel`` slots); CPU-only machines default to one at a time."""
    device = resolve_device(params.device)
    if device.type == "cuda" and device.index is None:
        gpus = [f"cuda:{i}" for i in range(torch.cuda.device_count())]
        return [gpus[i % len(gpus)] for i in range(parallel or len(gpus))]
    return [str(device)] * (parallel or 1)


class LocalRunner:
    """Trials as Prefect tasks of this process, each on the next free device slot."""

    poll_seconds = 0.2

    def __init__(self, devices: list[str]) -> None:
        self.devices: queue.Queue[str] = queue.Queue()
        for device in devices:
            self.devices.put(device)

    def start(self, request: TrialRequest) -> Any:
        return local_trial.with_options(task_run_name=request.trial_id).submit(request, self.devices)

    def outcome(self, future: Any) -> str | None:
        """None while running; else "" when it completed, or why it did not."""
        state = future.state
        if not state.is_final():
            return None
        return "" if state.is_completed() else f"task {state.name}: {state.message}"


class WorkerRunner:
    """Trials as flow runs of the ``trial`` deployment; a run that crashed (worker lost) is submitted again
    and resumes from its last checkpoint, up to :data:`WORKER_ATTEMPTS` times."""

    poll_seconds = WORKER_POLL_SECONDS

    def __init__(self, deployment: str, client: Any) -> None:
        self.deployment, self.client = deployment, client

    def start(self, request: TrialRequest) -> dict[str, Any]:
        from prefect.deployments import run_deployment

        run = run_deployment(
            self.deployment, parameters=dataclasses.asdict(request), timeout=0, flow_run_name=request.trial_id
        )
        return {"request": request, "run": run, "attempt": 1}

    def outcome(self, handle: dict[str, Any]) -> str | None:
        state = self.client.read_flow_run(handle["run"].id).state
        if state is None or not state.is_final():
            return None
        if state.is_completed():
            return ""
        if handle["attempt"] < WORKER_ATTEMPTS:
            get_run_logger().warning(
                "%s: flow run %s %s; submitting again", handle["request"].trial_id, handle["run"].id, state.name
            )
            handle.update(self.start(handle["request"]), attempt=handle["attempt"] + 1)
            return None
        return f"its flow run ended {state.name} {WORKER_ATTEMPTS} times"


@dataclass
class SweepRun:
    """One sweep's bookkeeping: which segments are in flight, which shared warmups exist."""

    sweep_id: str
    sweep_dir: Path
    root: Path
    trial_store: str | None
    scheduler: Scheduler
    warmed: set[str] = field(default_factory=set)
    waiting: dict[str, list[Segment]] = field(default_factory=dict)  # warmup key -> segments waiting for it

    def request(self, segment: Segment) -> TrialRequest:
        spec = segment.trial
        return TrialRequest(
            self.sweep_id,
            spec.trial_id,
            spec.params.to_dict(),
            spec.varied,
            self.trial_store,
            str(self.root),
            until=segment.until,
        )

    def drive(self, runner: LocalRunner | WorkerRunner, slots: int) -> None:
        """Run segments until the scheduler has none left: at most ``slots`` jobs at a time, each trial's
        shared warmup trained once before the trials that need it."""
        logger = get_run_logger()
        in_flight: list[tuple[TrialRequest, Segment | None, Any]] = []
        while True:
            while len(in_flight) < slots:
                job = self._next_job()
                if job is None:
                    break
                request, segment = job
                in_flight.append((request, segment, runner.start(request)))
            if not in_flight:
                return
            time.sleep(runner.poll_seconds)
            for entry in list(in_flight):
                request, segment, handle = entry
                failure = runner.outcome(handle)
                if failure is None:
                    continue
                in_flight.remove(entry)
                if segment is None:
                    key = request.trial_id.removeprefix("warmup-")
                    if failure:
                        logger.warning("shared warmup %s: %s; its trials will try it themselves", key, failure)
                    self.warmed.add(key)
                    continue
                self._segment_done(request, segment, failure)

    def _next_job(self) -> tuple[TrialRequest, Segment | None] | None:
        """A segment whose warmup exists, or the warmup a new segment needs, or None."""
        for key, segments in self.waiting.items():
            if key in self.warmed and segments:
                segment = segments.pop(0)
                return self.request(segment), segment
        while (segment := self.scheduler.next_segment()) is not None:
            key = warmup_key(segment.trial.params)
            if key in self.warmed:
                return self.request(segment), segment
            first_for_key = key not in self.waiting
            self.waiting.setdefault(key, []).append(segment)
            if first_for_key:
                warmup = dataclasses.replace(self.request(segment), warmup_only=True, trial_id=f"warmup-{key}")
                return warmup, None
        return None

    def _segment_done(self, request: TrialRequest, segment: Segment, failure: str) -> None:
        folder = self.sweep_dir / "trials" / request.trial_id
        if failure or not self._fetch(request, folder):
            record_failure(request, failure or "its run completed but stored no results")
            self._fetch(request, folder)
        metrics = json.loads((folder / "metrics.json").read_text())
        history = pd.read_csv(folder / "history.csv")
        accuracies = history.loc[history["phase"] == "finetune", "test_accuracy"].tolist()
        self.scheduler.segment_done(segment, metrics["status"], accuracies)
        if request.trial_id in self.scheduler.stopped:
            write_json(folder / "metrics.json", {**metrics, "status": STOPPED})

    def _fetch(self, request: TrialRequest, folder: Path) -> bool:
        store = open_store(request.store_uri, self.root)
        return all(store.get_file(trial_key(self.sweep_id, request.trial_id, n), folder / n) for n in TRIAL_FILES)


@flow(name="sweep", log_prints=True, task_runner=ThreadPoolTaskRunner())
def sweep(
    overrides: list[str] | None = None,
    recipe: str | None = None,
    params_file: str = "params.yaml",
    backend: Literal["local", "workers"] = "local",
    parallel: int | None = None,
    local_root: str = "artifacts",
    deployment: str = "trial/trial",
) -> str:
    """The whole study of ``params.sweep`` (``recipe``, then ``overrides``, on ``params_file``); returns its folder."""
    logger = get_run_logger()
    params = load_params(params_file, overrides or [], recipe)
    root = Path(local_root).resolve()
    warning = check_storage(params.storage.uri, allow_unreachable=backend == "local")
    if warning:
        logger.warning(warning)
    sweep_id = new_sweep_id()
    sweep_dir = root / "sweeps" / sweep_id
    sweep_dir.mkdir(parents=True, exist_ok=False)  # unique: never write into another sweep
    scheduler = Scheduler.create(params, sweep_dir)
    axes = list(params.sweep.axes)
    raw = params.to_dict()
    record = {
        "sweep_id": sweep_id,
        "storage_uri": params.storage.uri,
        "recipe": recipe,
        "overrides": overrides or [],
        "backend": backend,
        "mode": params.sweep.mode,
        "axes": axes,
        "base": {axis: lookup(raw, axis) for axis in axes},
        "trials": [{"trial_id": t.trial_id, "varied": t.varied} for t in scheduler.planned],
    }
    write_json(sweep_dir / SWEEP_RECORD, record)
    planned = f"{len(scheduler.planned)} trials" if scheduler.planned else f"up to {params.sweep.trials} sampled trials"
    logger.info("sweep %s (%s): %s, %s backend -> %s", sweep_id, params.sweep.mode, planned, backend, sweep_dir)

    # workers share the artifact store; local trials keep everything on this disk until publishing
    trial_store = params.storage.uri if backend == "workers" else None
    run = SweepRun(sweep_id, sweep_dir, root, trial_store, scheduler)
    if backend == "local":
        devices = local_devices(params, parallel)
        run.drive(LocalRunner(devices), len(devices))
    else:
        from prefect.client.orchestration import get_client

        # enumerated trials all go to the pool's queue at once; sampled ones wait for feedback
        slots = parallel or (SEARCH_IN_FLIGHT if params.sweep.searched else len(scheduler.planned))
        with get_client(sync_client=True) as client:
            run.drive(WorkerRunner(deployment, client), slots)

    record["trials"] = [{"trial_id": t.trial_id, "varied": t.varied} for t in scheduler.started]
    write_json(sweep_dir / SWEEP_RECORD, record)
    if params.sweep.searched or scheduler.rungs or params.sweep.budget_epochs:
        write_json(sweep_dir / SEARCH_RECORD, json_safe(scheduler.summary()))
    results = load_results(sweep_dir, record)
    write_report(results, sweep_dir, sweep_id)
    table = json_safe(results.table.to_dict(orient="records"))
    create_table_artifact(table, key="sweep-results", description=f"Sweep {sweep_id}: one row per trial")
    create_markdown_artifact(
        (sweep_dir / "report.md").read_text(), key="sweep-report", description=f"Sweep {sweep_id} report"
    )
    write_manifest(sweep_dir)
    if params.storage.uri:
        logger.info("published to %s", publish(sweep_dir, params.storage.uri))
    else:
        logger.info("results in %s", sweep_dir)
    return str(sweep_dir)
