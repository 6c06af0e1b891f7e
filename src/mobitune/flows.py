"""Prefect flow ``sweep`` (deployment entry point ``flows/sweep.py``); the ``trial`` flow it fans out to is in
:mod:`mobitune.trial_flow`.

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
import math
import queue
import re
import time
from pathlib import Path
from typing import Any, Literal

import torch
from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.task_runners import ThreadPoolTaskRunner

from mobitune.driver import SweepRun
from mobitune.errors import MobituneError
from mobitune.form import SweepSettings
from mobitune.loader import resolve_device
from mobitune.params import Params, load_params, params_from_dict
from mobitune.publish import publish
from mobitune.records import json_safe
from mobitune.report import display_table, inline_figures
from mobitune.storage import check_storage
from mobitune.trial import TrialRequest
from mobitune.trial_flow import local_trial

WORKER_POLL_SECONDS = 0.5  # one read of all runs in flight per poll (WorkerRunner._state)
STATE_READ_BATCH = 200  # flow runs per state read (the server's default page limit)
POOL_CHECK_SECONDS = 2.0  # while trials wait: how often to ask whether any worker polls their pool
WORKER_ATTEMPTS = 3  # submissions of one trial before it is recorded as failed
NO_WORKER_WARNING_SECONDS = 10  # trials waiting this long with no worker on their pool: say so
SEARCH_IN_FLIGHT = 4  # random/tpe trials in flight on workers unless --parallel says: each waits for feedback


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
    and resumes from its last checkpoint, up to :data:`WORKER_ATTEMPTS` times.

    While runs wait and no worker polls the deployment's work pool, it says so
    after :data:`NO_WORKER_WARNING_SECONDS`, naming the pool and the command
    that starts a worker; after ``worker_timeout_s`` it cancels the waiting
    runs, which then count as failed trials, and the sweep ends with the
    results it has.
    """

    poll_seconds = WORKER_POLL_SECONDS

    def __init__(self, deployment: str, client: Any, worker_timeout_s: float) -> None:
        self.deployment, self.client, self.worker_timeout_s = deployment, client, worker_timeout_s
        self.pool = client.read_deployment_by_name(deployment).work_pool_name
        self.no_worker_since: float | None = None
        self.checked_at = -math.inf
        self.warned = False
        self.timed_out: list[str] = []
        self.in_flight: set[Any] = set()  # flow-run ids
        self.states: dict[Any, Any] = {}
        self.read_at = -math.inf

    def start(self, request: TrialRequest) -> dict[str, Any]:
        from prefect.deployments import run_deployment

        run = run_deployment(
            self.deployment, parameters=dataclasses.asdict(request), timeout=0, flow_run_name=request.trial_id
        )
        self.in_flight.add(run.id)
        return {"request": request, "run": run, "attempt": 1}

    def _state(self, run_id: Any) -> Any:
        """The run's state, from one read of all runs in flight per poll: a 40-trial sweep asks the server
        once, not 40 times, each time it looks."""
        from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

        now = time.monotonic()
        if run_id not in self.states or now - self.read_at >= self.poll_seconds / 2:
            self.read_at = now
            ids = sorted(self.in_flight, key=str)
            self.states = {}
            for start in range(0, len(ids), STATE_READ_BATCH):
                batch = FlowRunFilterId(any_=ids[start : start + STATE_READ_BATCH])
                runs = self.client.read_flow_runs(flow_run_filter=FlowRunFilter(id=batch), limit=STATE_READ_BATCH)
                self.states.update({run.id: run.state for run in runs})
        return self.states.get(run_id)

    def outcome(self, handle: dict[str, Any]) -> str | None:
        run_id = handle["run"].id
        state = self._state(run_id)
        if state is None or not state.is_final():
            return self._waiting(handle) if state is None or state.is_scheduled() or state.is_pending() else None
        self.in_flight.discard(run_id)
        if state.is_completed():
            return ""
        if handle["attempt"] < WORKER_ATTEMPTS:
            get_run_logger().warning(
                "%s: flow run %s %s; submitting again", handle["request"].trial_id, run_id, state.name
            )
            handle.update(self.start(handle["request"]), attempt=handle["attempt"] + 1)
            return None
        return f"its flow run ended {state.name} {WORKER_ATTEMPTS} times"

    @property
    def start_worker(self) -> str:
        return f"prefect worker start --pool {self.pool}"

    def _waiting(self, handle: dict[str, Any]) -> str | None:
        """None while a worker polls the pool (or not for long); else why the run is given up."""
        from prefect.states import Cancelled

        now = time.monotonic()
        if now - self.checked_at >= POOL_CHECK_SECONDS:  # one look at the pool, however many runs wait
            self.checked_at = now
            online = any(w.status == "ONLINE" for w in self.client.read_workers_for_work_pool(self.pool))
            self.no_worker_since = None if online else (self.no_worker_since or now)
        if self.no_worker_since is None:
            return None
        waited = now - self.no_worker_since
        if waited >= min(NO_WORKER_WARNING_SECONDS, self.worker_timeout_s) and not self.warned:
            self.warned = True
            get_run_logger().warning(
                "no worker polls work pool '%s': trials are waiting; start one in the project root with: %s "
                "(the sweep gives up on waiting trials after sweep.worker_timeout_s=%s s)",
                self.pool,
                self.start_worker,
                self.worker_timeout_s,
            )
        if waited < self.worker_timeout_s:
            return None
        # cancelled, so that a worker started later does not run a trial the sweep has given up
        self.client.set_flow_run_state(handle["run"].id, Cancelled(message="no worker"), force=True)
        self.in_flight.discard(handle["run"].id)
        self.timed_out.append(handle["request"].trial_id)
        return f"no worker polled work pool '{self.pool}' for {self.worker_timeout_s} s (sweep.worker_timeout_s)"


@flow(name="sweep", log_prints=True, task_runner=ThreadPoolTaskRunner())
def sweep(
    settings: SweepSettings | None = None,
    overrides: list[str] | None = None,
    recipe: str | None = None,
    params_file: str = "params.yaml",
    backend: Literal["local", "workers"] = "local",
    parallel: int | None = None,
    local_root: str = "artifacts",
    deployment: str = "trial/trial",
    cache: bool = True,
    resume: str | None = None,
) -> str:
    """The whole study of ``params.sweep`` (``recipe``, then ``settings``, then ``overrides``, on
    ``params_file``); returns its folder. ``settings`` is the deployment form's typed view of the main keys.

    ``cache``: reuse the stored result of a trial whose config, data and training code are unchanged
    (False trains every trial and its warmup again, and refreshes what is stored). ``resume``: the id of
    a sweep whose process died; it continues in its own folder with the params it started with.
    """
    logger = get_run_logger()
    if resume:
        run = SweepRun.resume(Path(local_root), resume, backend, cache)
        params = params_from_dict(run.record["params"])
    else:
        overrides = [*(settings.overrides() if settings else []), *(overrides or [])]
        params = load_params(params_file, overrides, recipe)
    warning = check_storage(params.storage.uri, allow_unreachable=backend == "local")
    if warning:
        logger.warning(warning)
    if not resume:
        run = SweepRun.start(params, Path(local_root), recipe, overrides, backend, cache)
    planned = len(run.scheduler.planned) or f"up to {params.sweep.trials} sampled"
    logger.info(
        "sweep %s (%s): %s trials, %s backend -> %s", run.sweep_id, params.sweep.mode, planned, backend, run.sweep_dir
    )
    if backend == "local":
        devices = local_devices(params, parallel)
        run.drive(LocalRunner(devices), len(devices), logger)
    else:
        from prefect.client.orchestration import get_client

        # enumerated trials all go to the pool's queue at once; sampled ones wait for feedback
        slots = parallel or (SEARCH_IN_FLIGHT if params.sweep.searched else len(run.scheduler.planned))
        with get_client(sync_client=True) as client:
            runner = WorkerRunner(deployment, client, params.sweep.worker_timeout_s)
            run.drive(runner, slots, logger)
    results = run.finish()
    sweep_id, sweep_dir = run.sweep_id, run.sweep_dir
    table = json_safe(display_table(results).to_dict(orient="records"))
    key = artifact_key(sweep_id)
    create_table_artifact(table, key=f"{key}-results", description=f"Sweep {sweep_id}: one row per trial")
    report = inline_figures((sweep_dir / "report.md").read_text(), sweep_dir)
    create_markdown_artifact(report, key=f"{key}-report", description=f"Sweep {sweep_id} report")
    if params.storage.uri:
        logger.info("published to %s", publish(sweep_dir, params.storage.uri))
    else:
        logger.info("results in %s", sweep_dir)
    given_up = [t for t in runner.timed_out if not t.startswith("warmup-")] if backend == "workers" else []
    if given_up:
        raise NoWorkerError(
            f"{len(given_up)} trial(s) never started: no worker polled work pool '{runner.pool}' "
            f"for {params.sweep.worker_timeout_s} s (sweep.worker_timeout_s). The trials that finished are in "
            f"{sweep_dir}. Start a worker in the project root with: {runner.start_worker}"
        )
    return str(sweep_dir)


def artifact_key(sweep_id: str) -> str:
    """``sweep-<id>``: each sweep's artifacts under keys of their own (Prefect allows a-z, 0-9 and dashes)."""
    return "sweep-" + re.sub(r"[^a-z0-9-]+", "-", sweep_id.lower())


class NoWorkerError(MobituneError):
    """Trials were given up because no worker polled their work pool; the sweep's other results are kept."""

    exit_code = 4
