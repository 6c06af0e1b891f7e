"""Trials on workers: :class:`SlotRunner`, the :class:`~mobitune.sweep.run.Runner` that hands a sweep's trials to
long-lived ``trial-slot`` flow runs through their :class:`~mobitune.orchestration.mailbox.Mailbox`."""

from __future__ import annotations

import collections
import dataclasses
import logging
import math
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from prefect.deployments import run_deployment

from mobitune.orchestration.mailbox import Mailbox
from mobitune.sweep.run import SweepRun
from mobitune.sweep.trial_files import TrialRequest

WORKER_POLL_SECONDS = 0.25  # one read of all slot runs' states per poll (SlotRunner._tick)
STATE_READ_BATCH = 200  # flow runs per state read (the server's default page limit)
POOL_CHECK_SECONDS = 2.0  # while trials wait: how often to ask whether any worker polls their pool
WORKER_ATTEMPTS = 3  # submissions of one trial before it is recorded as failed
NO_WORKER_WARNING_SECONDS = 10  # trials waiting this long with no worker on their pool: say so


@dataclass
class SlotJob:
    """A trial (or warmup) the sweep wants run; ``failure`` stays None until it ends ("" when it completed)."""

    request: TrialRequest
    attempt: int = 1
    failure: str | None = None


@dataclass
class Slot:
    """A ``trial-slot`` flow run: its last seen state, the jobs posted to it, the one it runs now."""

    run_id: Any
    mailbox: Mailbox
    state: Any
    posted: int = 0
    job: SlotJob | None = None

    @property
    def started(self) -> bool:
        return self.state is not None and (self.state.is_running() or self.state.is_final())


class SlotRunner:
    """Trials on workers, through long-lived flow runs of the ``trial-slot`` deployment: each slot run takes
    one job at a time from its mailbox, so a worker starts a process (and imports torch) once per slot,
    not once per trial.

    A job goes only to a slot run that is running and idle, never to one that
    waits in the queue: however many slots a pool really has, no job waits
    behind a slot that never starts. New slot runs are asked for while jobs
    wait, no more at once than there are workers online (at least one), up to
    ``max_slots``; those still queued when the sweep ends are cancelled.

    A slot run that crashed (worker lost; see :mod:`mobitune.orchestration.server_setup`)
    gives its job back, and another slot resumes it from its last checkpoint,
    up to :data:`WORKER_ATTEMPTS` times. While jobs wait and no worker polls
    the pool, it says so after :data:`NO_WORKER_WARNING_SECONDS`, naming the
    pool and the command that starts a worker; after ``worker_timeout_s`` the
    waiting jobs count as failed trials, and the sweep ends with the results
    it has.
    """

    poll_seconds = WORKER_POLL_SECONDS

    def __init__(
        self,
        run: SweepRun,
        deployment: str,
        client: Any,
        worker_timeout_s: float,
        max_slots: int,
        logger: logging.Logger | logging.LoggerAdapter,
        launch: Callable[..., Any] = run_deployment,
    ) -> None:
        """``client``: a synchronous Prefect client; ``launch``: how a slot run is asked for (Prefect's
        ``run_deployment``, which also shows the slot runs under the sweep's run in the UI)."""
        self.run, self.deployment, self.client = run, deployment, client
        self.logger, self.launch = logger, launch
        self.worker_timeout_s, self.max_slots = worker_timeout_s, max_slots
        self.pool = client.read_deployment_by_name(deployment).work_pool_name
        self.pending: collections.deque[SlotJob] = collections.deque()
        self.slots: list[Slot] = []
        self.launched = 0
        self.token = secrets.token_hex(3)  # slot names unique to this process: a resumed sweep has new slots
        self.ticked_at = self.checked_at = -math.inf
        self.online = 0
        self.no_worker_since: float | None = None
        self.warned = False
        self.timed_out: list[str] = []

    def start(self, request: TrialRequest) -> SlotJob:
        job = SlotJob(request)
        self.pending.append(job)
        self._assign()  # to a slot the last look found idle: no wait for the next poll
        return job

    def outcome(self, job: SlotJob) -> str | None:
        self._tick()
        return job.failure

    def close(self) -> None:
        """Stop every slot: idle ones end now, queued ones are cancelled so that no worker starts them later."""
        from prefect.states import Cancelled

        for slot in self.slots:
            slot.mailbox.send(f"job-{slot.posted}", {"stop": True})
            if not slot.started:
                self.client.set_flow_run_state(slot.run_id, Cancelled(message="the sweep has ended"), force=True)
        self.slots = []

    def _tick(self) -> None:
        """One look at every slot (a single read of their states), then jobs to idle slots, slots to jobs."""
        now = time.monotonic()
        if now - self.ticked_at < self.poll_seconds / 2:
            return
        self.ticked_at = now
        self._read_states()
        for slot in list(self.slots):
            if slot.job is not None and (done := slot.mailbox.receive(f"done-{slot.posted - 1}")) is not None:
                slot.job.failure, slot.job = done["failure"], None
            if slot.state.is_final():
                self.slots.remove(slot)
                if slot.job is not None:
                    self._give_back(slot)
        self._assign()
        self._check_workers(now)
        queued = sum(not slot.started for slot in self.slots)
        while len(self.pending) > queued and queued < max(1, self.online) and len(self.slots) < self.max_slots:
            self._launch()
            queued += 1
        if self.pending and not any(slot.state.is_running() for slot in self.slots):
            self._waiting(now)

    def _assign(self) -> None:
        """Waiting jobs to the slots that run and have none, in the order they were asked for."""
        for slot in self.slots:
            if not self.pending:
                return
            if slot.job is None and slot.state.is_running():
                slot.job = self.pending.popleft()
                slot.mailbox.send(f"job-{slot.posted}", {"request": dataclasses.asdict(slot.job.request)})
                slot.posted += 1

    def _read_states(self) -> None:
        from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

        ids = [slot.run_id for slot in self.slots]
        states = {}
        for start in range(0, len(ids), STATE_READ_BATCH):
            batch = FlowRunFilterId(any_=ids[start : start + STATE_READ_BATCH])
            runs = self.client.read_flow_runs(flow_run_filter=FlowRunFilter(id=batch), limit=STATE_READ_BATCH)
            states.update({run.id: run.state for run in runs})
        for slot in self.slots:
            slot.state = states.get(slot.run_id, slot.state)

    def _launch(self) -> None:
        self.launched += 1
        name = f"{self.run.sweep_id}-slot-{self.token}-{self.launched}"
        parameters = {
            "sweep_id": self.run.sweep_id,
            "slot": name,
            "store_uri": self.run.trial_store,
            "local_root": str(self.run.root),
        }
        flow_run = self.launch(self.deployment, parameters=parameters, timeout=0, flow_run_name=name)
        mailbox = Mailbox(self.run.trial_store, self.run.root, self.run.sweep_id, name)
        self.slots.append(Slot(flow_run.id, mailbox, flow_run.state))

    def _give_back(self, slot: Slot) -> None:
        """The job of a slot run that ended before answering: to the front of the queue, or failed for good."""
        job, state = slot.job, slot.state
        if state.is_completed():  # it gave up idling just as the job was posted: not the job's fault
            self.pending.appendleft(job)
        elif job.attempt < WORKER_ATTEMPTS:
            self.logger.warning(
                "%s: its slot's flow run %s %s; submitting again", job.request.trial_id, slot.run_id, state.name
            )
            job.attempt += 1
            self.pending.appendleft(job)
        else:
            job.failure = f"its flow run ended {state.name} {WORKER_ATTEMPTS} times"

    def _check_workers(self, now: float) -> None:
        if now - self.checked_at >= POOL_CHECK_SECONDS:  # one look at the pool, however many jobs wait
            self.checked_at = now
            self.online = sum(w.status == "ONLINE" for w in self.client.read_workers_for_work_pool(self.pool))
            self.no_worker_since = None if self.online else (self.no_worker_since or now)

    @property
    def start_worker(self) -> str:
        return f"prefect worker start --pool {self.pool}"

    def _waiting(self, now: float) -> None:
        """Jobs wait and no slot runs: say so while no worker polls the pool; give the jobs up after the timeout."""
        from prefect.states import Cancelled

        if self.no_worker_since is None:
            return
        waited = now - self.no_worker_since
        if waited >= min(NO_WORKER_WARNING_SECONDS, self.worker_timeout_s) and not self.warned:
            self.warned = True
            self.logger.warning(
                "no worker polls work pool '%s': trials are waiting; start one in the project root with: %s "
                "(the sweep gives up on waiting trials after sweep.worker_timeout_s=%s s)",
                self.pool,
                self.start_worker,
                self.worker_timeout_s,
            )
        if waited < self.worker_timeout_s:
            return
        for slot in self.slots:  # cancelled, so that a worker started later does not run them
            self.client.set_flow_run_state(slot.run_id, Cancelled(message="no worker"), force=True)
        self.slots = []
        failure = f"no worker polled work pool '{self.pool}' for {self.worker_timeout_s} s (sweep.worker_timeout_s)"
        while self.pending:
            job = self.pending.popleft()
            job.failure = failure
            self.timed_out.append(job.request.trial_id)
