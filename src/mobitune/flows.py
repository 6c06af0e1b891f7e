"""Prefect flows ``sweep`` and ``trial`` (deployment entry points: ``flows/sweep.py``, ``flows/trial.py``).

``sweep`` expands the spec, trains each distinct warmup once, fans the trials
out and gathers, aggregates and publishes. Two backends, same results:

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
import queue
import time
from pathlib import Path
from typing import Any, Literal

import torch
from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE
from prefect.task_runners import ThreadPoolTaskRunner

from mobitune.loader import resolve_device
from mobitune.params import Params, load_params
from mobitune.publish import SWEEP_RECORD, publish, write_manifest
from mobitune.records import json_safe, write_json
from mobitune.report import load_results, write_report
from mobitune.storage import check_storage, open_store
from mobitune.sweep import expand, lookup, new_sweep_id, warmup_key
from mobitune.trial import TRIAL_FILES, TrialRequest, record_failure, run_trial_recorded, trial_key

WORKER_POLL_SECONDS = 2.0
WORKER_ATTEMPTS = 3  # submissions of one trial before it is recorded as failed


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


def run_local(requests: list[TrialRequest], devices: list[str]) -> None:
    pool: queue.Queue[str] = queue.Queue()
    for device in devices:
        pool.put(device)
    futures = [local_trial.with_options(task_run_name=r.trial_id).submit(r, pool) for r in requests]
    for request, future in zip(requests, futures, strict=True):
        future.wait()
        if future.state.is_failed():
            get_run_logger().warning("%s failed: %s", request.trial_id, future.state.message)


def run_on_workers(requests: list[TrialRequest], deployment: str) -> None:
    """Submit each request as a flow run of ``deployment``; resubmit crashed runs."""
    from prefect.client.orchestration import get_client
    from prefect.deployments import run_deployment

    logger = get_run_logger()

    def submit(request: TrialRequest) -> Any:
        return run_deployment(
            deployment, parameters=dataclasses.asdict(request), timeout=0, flow_run_name=request.trial_id
        )

    pending = {r.trial_id: (r, submit(r), 1) for r in requests}
    with get_client(sync_client=True) as client:
        while pending:
            time.sleep(WORKER_POLL_SECONDS)
            for trial_id, (request, run, attempt) in list(pending.items()):
                state = client.read_flow_run(run.id).state
                if state is None or not state.is_final():
                    continue
                del pending[trial_id]
                if not state.is_completed() and attempt < WORKER_ATTEMPTS:
                    logger.warning("%s: flow run %s %s; submitting again", trial_id, run.id, state.name)
                    pending[trial_id] = (request, submit(request), attempt + 1)


def _gather(request: TrialRequest, sweep_dir: Path, local_root: Path) -> None:
    """Bring a trial's files into the sweep folder; a trial that never finished becomes ``failed``."""
    store = open_store(request.store_uri, local_root)
    folder = sweep_dir / "trials" / request.trial_id

    def fetch() -> bool:
        return all(store.get_file(trial_key(request.sweep_id, request.trial_id, n), folder / n) for n in TRIAL_FILES)

    if not fetch():
        record_failure(request, "the trial's flow run never completed")
        fetch()


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
    trials = expand(params)
    root = Path(local_root).resolve()
    warning = check_storage(params.storage.uri, allow_unreachable=backend == "local")
    if warning:
        logger.warning(warning)
    sweep_id = new_sweep_id()
    sweep_dir = root / "sweeps" / sweep_id
    sweep_dir.mkdir(parents=True, exist_ok=False)  # unique: never write into another sweep
    axes = list(params.sweep.axes)
    raw = params.to_dict()
    base = {axis: lookup(raw, axis) for axis in axes}
    record = {
        "sweep_id": sweep_id,
        "storage_uri": params.storage.uri,
        "recipe": recipe,
        "overrides": overrides or [],
        "backend": backend,
        "mode": params.sweep.mode,
        "axes": axes,
        "base": base,
        "trials": [{"trial_id": t.trial_id, "varied": t.varied} for t in trials],
    }
    write_json(sweep_dir / SWEEP_RECORD, record)
    logger.info("sweep %s: %d trials, %s backend -> %s", sweep_id, len(trials), backend, sweep_dir)

    # workers share the artifact store; local trials keep everything on this disk until publishing
    trial_store = params.storage.uri if backend == "workers" else None
    requests = [
        TrialRequest(sweep_id, t.trial_id, t.params.to_dict(), t.varied, trial_store, str(root)) for t in trials
    ]
    warmups: dict[str, TrialRequest] = {}
    for spec, request in zip(trials, requests, strict=True):
        key = warmup_key(spec.params)
        warmups.setdefault(key, dataclasses.replace(request, warmup_only=True, trial_id=f"warmup-{key}"))
    if backend == "local":
        devices = local_devices(params, parallel)
        run_local(list(warmups.values()), devices)
        run_local(requests, devices)
    else:
        run_on_workers(list(warmups.values()), deployment)
        run_on_workers(requests, deployment)

    for request in requests:
        _gather(request, sweep_dir, root)
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
