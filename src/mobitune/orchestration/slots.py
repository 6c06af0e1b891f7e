"""Trials on workers: :class:`SlotRunner`, the :class:`~mobitune.sweep.run.Runner` that hands a sweep's trials to
long-lived ``trial-slot`` flow runs through their :class:`~mobitune.orchestration.mailbox.Mailbox`.

Whether a slot lives is told by its mailbox's beat, not by Prefect alone: a slot whose beat stops has lost its
process or machine, whatever Prefect says; a slot whose beat goes on lives, even if Prefect marked it
``Crashed`` because its heartbeats could not reach a server that was down. While the Prefect server does not
answer, the trials in flight carry on through their mailboxes; only new slots wait for it.
"""

from __future__ import annotations

import collections
import logging
import math
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from prefect.deployments import run_deployment

from mobitune.orchestration.mailbox import BEAT_SECONDS, Mailbox, remove_stale_mailboxes
from mobitune.orchestration.pool_templates import gpu_pinning
from mobitune.orchestration.prefect_api import ServerCalls
from mobitune.sweep.run import SweepRun
from mobitune.sweep.trial_files import TrialRequest

WORKER_POLL_SECONDS = 0.25  # one read of all slot runs' states per poll (SlotRunner._tick)
STATE_READ_BATCH = 200  # flow runs per state read (the server's default page limit)
POOL_CHECK_SECONDS = 2.0  # while trials wait: how often to ask whether any worker polls their pool
WORKER_ATTEMPTS = 3  # submissions of one trial before it is recorded as failed
NO_WORKER_WARNING_SECONDS = 10  # trials waiting this long with no worker on their pool: say so
SLOT_LOST_SECONDS = 15.0  # a running slot whose beat has not moved this long has lost its process or machine
ENDED_SLOT_LOST_SECONDS = 3 * BEAT_SECONDS  # the same, once Prefect also says its flow run ended
STALLED_LOOK_SECONDS = 5.0  # a look at the slots this slow, or this long after the last: this process was held up


@dataclass
class SlotJob:
    """A trial (or warmup) the sweep wants run; ``failure`` stays None until it ends ("" when it completed)."""

    request: TrialRequest
    attempt: int = 1
    failure: str | None = None


@dataclass
class Slot:
    """A ``trial-slot`` flow run: its last seen state, the jobs posted to it, the one it runs now, when its
    mailbox's beat last moved (this process's clock), and the machine's GPU it is pinned to (a docker pool's)."""

    run_id: Any
    mailbox: Mailbox
    state: Any
    posted: int = 0
    job: SlotJob | None = None
    beat: int | None = None
    beat_moved_at: float = 0.0
    gpu: int | None = None

    @property
    def started(self) -> bool:
        return self.state is not None and (self.state.is_running() or self.state.is_final())

    def silent_for(self, now: float) -> float:
        return now - self.beat_moved_at


class SlotRunner:
    """Trials on workers, through long-lived flow runs of the ``trial-slot`` deployment: each slot run takes
    one job at a time from its mailbox, so a worker starts a process (and imports torch) once per slot,
    not once per trial.

    A job goes only to a slot run that is running and idle, never to one that
    waits in the queue: however many slots a pool really has, no job waits
    behind a slot that never starts. New slot runs are asked for while jobs
    wait, no more at once than there are workers online (at least one), up to
    ``max_slots``; those still queued when the sweep ends are cancelled.

    A slot whose beat stops (worker or machine lost, its process killed) is
    marked ``Crashed`` with its running trial task, and gives its job back:
    another slot resumes it from its last checkpoint, up to
    :data:`WORKER_ATTEMPTS` times. A trial stopped by a service that did not
    answer goes back without costing an attempt. While jobs wait and no worker
    polls the pool, it says so after :data:`NO_WORKER_WARNING_SECONDS`, naming
    the pool and the command that starts a worker; after ``worker_timeout_s``
    the waiting jobs count as failed trials, and the sweep ends with the
    results it has. A Prefect server that does not answer for
    ``server_outage_s`` stops the sweep (:class:`~mobitune.orchestration.prefect_api.ServerCalls`).

    On a docker pool with GPU queues, each new slot run is pinned to the GPU with the fewest live slots
    (:class:`~mobitune.orchestration.pool_templates.GpuPinning`): slot k on GPU k mod n.
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
        server_outage_s: float = 300,
        store_outage_s: float = 0,
    ) -> None:
        """``client``: a synchronous Prefect client; ``launch``: how a slot run is asked for (Prefect's
        ``run_deployment``, which also shows the slot runs under the sweep's run in the UI)."""
        self.run, self.deployment, self.client = run, deployment, client
        self.logger, self.launch = logger, launch
        self.worker_timeout_s, self.max_slots = worker_timeout_s, max_slots
        self.store_outage_s = store_outage_s
        self._server = ServerCalls(
            server_outage_s,
            logger,
            meanwhile="the trials in flight carry on through their mailboxes, new slots wait for it",
            then=f"the trials that finished are kept in {run.sweep_dir}. Once the server is back: "
            f"mobitune sweep --resume {run.sweep_id}",
        )
        record = client.read_deployment_by_name(deployment)
        self.pool, self.pinning = record.work_pool_name, gpu_pinning(client, record)
        self.pending: collections.deque[SlotJob] = collections.deque()
        self.slots: list[Slot] = []
        self.ended: list[Mailbox] = []  # of slots that ended without removing their keys
        self.unmarked: list[tuple[Any, str]] = []  # lost slots' flow runs to mark Crashed once the server answers
        self.launched = 0
        self.token = secrets.token_hex(3)  # slot names unique to this process: a resumed sweep has new slots
        self.ticked_at = self.checked_at = self.beats_read_at = -math.inf
        self.online = 0
        self.no_worker_since: float | None = None
        self.warned = False
        self.timed_out: list[str] = []
        for mailbox in remove_stale_mailboxes(run.trial_store, run.root):
            self.logger.info("removed %s: left by a slot that died", mailbox)

    def start(self, request: TrialRequest) -> SlotJob:
        job = SlotJob(request)
        self.pending.append(job)
        self._assign()  # to a slot the last look found idle: no wait for the next poll
        return job

    def outcome(self, job: SlotJob) -> str | None:
        self._tick()
        return job.failure

    def close(self) -> None:
        """Stop every slot: idle ones end now (and remove their keys), queued ones are cancelled so that no
        worker starts them later; the keys of slots that ended are removed."""
        from prefect.states import Cancelled

        for slot in self.slots:
            slot.mailbox.send(f"job-{slot.posted}", {"stop": True})
            if not slot.started:
                self._server(
                    self.client.set_flow_run_state, slot.run_id, Cancelled(message="the sweep has ended"), force=True
                )
                self.ended.append(slot.mailbox)
        for mailbox in self.ended:
            mailbox.remove()
        self.slots, self.ended = [], []

    def _tick(self) -> None:
        """One look at every slot (a single read of their states), then jobs to idle slots, slots to jobs."""
        now = time.monotonic()
        if now - self.ticked_at < self.poll_seconds / 2:
            return
        held_up = now - self.ticked_at > STALLED_LOOK_SECONDS
        self.ticked_at = now
        self._read_states()
        self._read_beats(now)
        for slot in self.slots:
            if slot.job is not None and (done := slot.mailbox.receive(f"done-{slot.posted - 1}")) is not None:
                self._done(slot, done)
        if held_up or time.monotonic() - now > STALLED_LOOK_SECONDS:
            # this process was held up (its store rode out an outage, as the slots' did): their silence says
            # nothing about them, it counts again from now
            now = time.monotonic()
            for slot in self.slots:
                slot.beat_moved_at = now
        for slot in list(self.slots):
            if slot.state.is_completed():
                self._ended(slot)  # gave up idling
                if slot.job is not None:
                    self.pending.appendleft(slot.job)  # just as the job was posted: not the job's fault
            elif slot.silent_for(now) < self._lost_after(slot):
                if slot.state.is_final() and slot.beat is not None:
                    self._alive(slot)
            elif slot.job is not None:
                self._lost(slot, now)
            elif slot.state.is_final():
                self._ended(slot)  # ended between jobs: nothing is lost
        self._assign()
        self._check_workers(now)  # also the look that sees an outage end, or outlast the limit, with no slot yet
        if self._server.answering:
            self.unmarked = [(run_id, why) for run_id, why in self.unmarked if not self._mark_crashed(run_id, why)]
            queued = sum(not slot.started for slot in self.slots)
            while len(self.pending) > queued and queued < max(1, self.online) and len(self.slots) < self.max_slots:
                if not self._launch():
                    break
                queued += 1
        if self.pending and not any(slot.state.is_running() for slot in self.slots):
            self._waiting(now)

    def _done(self, slot: Slot, done: dict[str, Any]) -> None:
        job, slot.job = slot.job, None
        if "service" in done:
            self.logger.warning("%s: %s; submitting it again", job.request.trial_id, done["service"])
            self.pending.appendleft(job)
        else:
            job.failure = done["failure"]

    def _assign(self) -> None:
        """Waiting jobs to the slots that run and have none, in the order they were asked for."""
        now = time.monotonic()
        for slot in self.slots:
            if not self.pending:
                return
            if slot.job is None and slot.state.is_running():
                slot.job = self.pending.popleft()
                slot.mailbox.send(f"job-{slot.posted}", {"request": slot.job.request.model_dump(mode="json")})
                slot.posted += 1
                slot.beat_moved_at = max(slot.beat_moved_at, now)  # silence counts from the job's start

    def _read_states(self) -> None:
        from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

        ids = [slot.run_id for slot in self.slots]
        states = {}
        for start in range(0, len(ids), STATE_READ_BATCH):
            batch = FlowRunFilterId(any_=ids[start : start + STATE_READ_BATCH])
            runs = self._server(
                self.client.read_flow_runs, flow_run_filter=FlowRunFilter(id=batch), limit=STATE_READ_BATCH
            )
            if runs is None:
                return  # the server does not answer: the last states stand
            states.update({run.id: run.state for run in runs})
        for slot in self.slots:
            slot.state = states.get(slot.run_id, slot.state)

    def _read_beats(self, now: float) -> None:
        """The beat of every slot that started, every :data:`BEAT_SECONDS`."""
        if now - self.beats_read_at < BEAT_SECONDS:
            return
        self.beats_read_at = now
        for slot in self.slots:
            if not slot.started:
                continue
            beat = slot.mailbox.beat()
            if beat != slot.beat:
                slot.beat, slot.beat_moved_at = beat, time.monotonic()

    def _lost_after(self, slot: Slot) -> float:
        return ENDED_SLOT_LOST_SECONDS if slot.state.is_final() else SLOT_LOST_SECONDS

    def _launch(self) -> bool:
        """Ask for one more slot run; False when the server does not answer."""
        name = f"{self.run.sweep_id}-slot-{self.token}-{self.launched + 1}"
        parameters = {
            "sweep_id": self.run.sweep_id,
            "slot": name,
            "store_uri": self.run.trial_store,
            "outage_s": self.store_outage_s,
        }
        if self.run.trial_store is None:  # no S3: the sweep's folder is the store, so workers share its disk
            parameters["local_root"] = str(self.run.root)  # (else each slot's own: a container's volume)
        options, gpu = {}, None
        if self.pinning is not None:
            gpu = self.pinning.next_gpu(slot.gpu for slot in self.slots)
            options, parameters["machine_gpu"] = self.pinning.run_options(gpu), gpu
        flow_run = self._server(
            self.launch, self.deployment, parameters=parameters, timeout=0, flow_run_name=name, **options
        )
        if flow_run is None:
            return False
        self.launched += 1
        mailbox = Mailbox(self.run.trial_store, self.run.root, self.run.sweep_id, name, self.store_outage_s)
        self.slots.append(Slot(flow_run.id, mailbox, flow_run.state, beat_moved_at=time.monotonic(), gpu=gpu))
        return True

    def _ended(self, slot: Slot) -> None:
        self.slots.remove(slot)
        self.ended.append(slot.mailbox)

    def _lost(self, slot: Slot, now: float) -> None:
        """A slot whose beat stopped: its flow run and running trial task marked Crashed (once the server answers,
        if it does not now), its job given back (or failed for good after :data:`WORKER_ATTEMPTS`)."""
        self._ended(slot)
        slot.mailbox.send(f"job-{slot.posted}", {"stop": True})  # were it alive after all: no trial after this one
        job = slot.job
        why = f"its beat has been silent for {slot.silent_for(now):.0f} s: its process or machine was lost"
        if not self._mark_crashed(slot.run_id, why):
            self.unmarked.append((slot.run_id, why))
        name = slot.state.name if slot.state.is_final() else "Crashed"
        if job.attempt < WORKER_ATTEMPTS:
            self.logger.warning(
                "%s: its slot's flow run %s %s; submitting again (%s)", job.request.trial_id, slot.run_id, name, why
            )
            job.attempt += 1
            self.pending.appendleft(job)
        else:
            job.failure = f"its flow run ended {name} {WORKER_ATTEMPTS} times"

    def _mark_crashed(self, run_id: Any, why: str) -> bool:
        """A lost slot's flow run and its trial task runs still ``Running`` to Crashed, so that the UI shows none
        running forever; False when the server does not answer."""
        from prefect.client.schemas.filters import (
            FlowRunFilter,
            FlowRunFilterId,
            TaskRunFilter,
            TaskRunFilterState,
            TaskRunFilterStateType,
        )
        from prefect.client.schemas.objects import StateType
        from prefect.states import Crashed

        running = FlowRunFilterId(any_=[run_id])
        runs = self._server(self.client.read_flow_runs, flow_run_filter=FlowRunFilter(id=running), limit=1)
        if runs is None:
            return False
        if runs and not runs[0].state.is_final():
            if self._server(self.client.set_flow_run_state, run_id, Crashed(message=why), force=True) is None:
                return False
        still = TaskRunFilter(state=TaskRunFilterState(type=TaskRunFilterStateType(any_=[StateType.RUNNING])))
        task_runs = self._server(
            self.client.read_task_runs, flow_run_filter=FlowRunFilter(id=running), task_run_filter=still
        )
        if task_runs is None:
            return False
        return all(
            self._server(self.client.set_task_run_state, task_run.id, Crashed(message=why), force=True) is not None
            for task_run in task_runs
        )

    def _alive(self, slot: Slot) -> None:
        """Prefect says the slot's flow run ended, yet its beat goes on: the server marked it while its heartbeats
        could not reach it. Set back to Running; its trial carries on."""
        from prefect.states import Running

        why = f"its beat goes on: it was marked {slot.state.name} while its heartbeats could not reach the server"
        self.logger.warning("slot flow run %s is alive (%s); set back to Running", slot.run_id, why)
        if self._server(self.client.set_flow_run_state, slot.run_id, Running(message=why), force=True) is not None:
            slot.state = Running(message=why)

    def _check_workers(self, now: float) -> None:
        if now - self.checked_at >= POOL_CHECK_SECONDS:  # one look at the pool, however many jobs wait
            self.checked_at = now
            workers = self._server(self.client.read_workers_for_work_pool, self.pool)
            if workers is None:
                return
            self.online = sum(w.status == "ONLINE" for w in workers)
            self.no_worker_since = None if self.online else (self.no_worker_since or now)

    @property
    def start_worker(self) -> str:
        if self.pinning is not None:  # a docker worker per GPU, on that GPU's queue
            return f"prefect worker start --pool {self.pool} --type docker --work-queue gpu-<index>, one per GPU"
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
            self._server(self.client.set_flow_run_state, slot.run_id, Cancelled(message="no worker"), force=True)
            self.ended.append(slot.mailbox)
        self.slots = []
        failure = f"no worker polled work pool '{self.pool}' for {self.worker_timeout_s} s (sweep.worker_timeout_s)"
        while self.pending:
            job = self.pending.popleft()
            job.failure = failure
            self.timed_out.append(job.request.trial_id)
