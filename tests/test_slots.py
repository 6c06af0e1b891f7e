"""The slot runner's decisions, fast: :class:`SlotRunner` against a fake fleet.

The fleet stands in for the Prefect server and its workers at the runner's seam (the client it reads states
and workers from, and the ``launch`` that asks for a slot run): the test decides when a queued slot run
starts, crashes, ends or beats, and when the server stops answering, and answers jobs through the real
mailbox files. Capacity, hand-off to idle slots only, give-back after a crash or a lost beat, a live slot that
Prefect marked Crashed, a server outage, cancellation, the no-worker timeout and mailbox clean-up are checked
without a server; the real server, workers and outages are tested end to end in test_sweep_flows.py and
test_fleet.py.
"""

from __future__ import annotations

import logging
import math
import os
import time
import uuid
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import pytest
from prefect.states import Completed, Crashed, Failed, Running, Scheduled

from mobitune.cli import expected_failure
from mobitune.errors import EndpointUnreachable, ServiceUnavailable
from mobitune.orchestration import slots as slots_module
from mobitune.orchestration.mailbox import STALE_MAILBOX_SECONDS, Mailbox, remove_stale_mailboxes
from mobitune.orchestration.slots import WORKER_ATTEMPTS, SlotRunner
from mobitune.orchestration.trial_flow import slot_answer
from mobitune.params import Params
from mobitune.sweep.trial_files import TrialRequest

LOGGER = logging.getLogger("test_slots")


class Fleet:
    """The server's flow runs and the workers polling pool ``gpu``, as the runner sees them."""

    def __init__(self, root: Path, online: int = 1) -> None:
        self.root, self.online = root, online
        self.runs: dict[uuid.UUID, Any] = {}
        self.names: dict[uuid.UUID, str] = {}
        self.served: dict[uuid.UUID, int] = {}  # run id -> jobs answered
        self.beats: dict[uuid.UUID, int] = {}
        self.task_runs: dict[uuid.UUID, Any] = {}  # the running trial task of each slot run
        self.down = False  # the server does not answer

    def _answering(self) -> None:
        if self.down:
            raise httpx.ConnectError("[Errno 111] Connection refused")

    # the client the runner reads
    def read_deployment_by_name(self, name: str) -> Any:
        return SimpleNamespace(work_pool_name="gpu")

    def read_work_pool(self, name: str) -> Any:
        return SimpleNamespace(name=name, type="process")  # its workers pin their GPUs: no pinning by the sweep

    def read_flow_runs(self, flow_run_filter: Any, limit: int) -> list[Any]:
        self._answering()
        ids = flow_run_filter.id.any_
        return [SimpleNamespace(id=i, state=self.runs[i]) for i in ids if i in self.runs][:limit]

    def read_workers_for_work_pool(self, pool: str) -> list[Any]:
        self._answering()
        return [SimpleNamespace(status="ONLINE")] * self.online

    def set_flow_run_state(self, run_id: uuid.UUID, state: Any, force: bool = False) -> Any:
        self._answering()
        self.runs[run_id] = state
        return SimpleNamespace(state=state)

    def read_task_runs(self, flow_run_filter: Any, task_run_filter: Any) -> list[Any]:
        self._answering()
        ids = flow_run_filter.id.any_
        return [SimpleNamespace(id=i, state=self.task_runs[i]) for i in ids if self.task_runs[i].is_running()]

    def set_task_run_state(self, task_run_id: uuid.UUID, state: Any, force: bool = False) -> Any:
        self.task_runs[task_run_id] = state  # the fake's task run ids are its slot runs' ids
        return SimpleNamespace(state=state)

    # what the runner asks for a slot with (Prefect's run_deployment)
    def launch(self, deployment: str, parameters: dict, timeout: int, flow_run_name: str) -> Any:
        self._answering()
        run_id = uuid.uuid4()
        self.runs[run_id], self.names[run_id], self.served[run_id] = Scheduled(), flow_run_name, 0
        return SimpleNamespace(id=run_id, state=self.runs[run_id])

    # what workers and slot runs do
    def queued(self) -> list[uuid.UUID]:
        return [i for i, state in self.runs.items() if state.is_scheduled()]

    def start(self, run_id: uuid.UUID) -> None:
        self.runs[run_id] = Running()

    def mailbox(self, run_id: uuid.UUID) -> Mailbox:
        return Mailbox(None, self.root, "s1", self.names[run_id])

    def job(self, run_id: uuid.UUID) -> dict | None:
        """The job posted to the slot and not yet answered; its trial task runs from now."""
        job = self.mailbox(run_id).receive(f"job-{self.served[run_id]}")
        if job and "request" in job:
            self.task_runs[run_id] = Running()
        return job

    def answer(self, run_id: uuid.UUID, failure: str = "", **extra: str) -> None:
        self.mailbox(run_id).send(f"done-{self.served[run_id]}", {"failure": failure, **extra})
        self.served[run_id] += 1
        self.task_runs[run_id] = Completed()

    def beat(self, run_id: uuid.UUID) -> None:
        self.beats[run_id] = self.beats.get(run_id, 0) + 1
        self.mailbox(run_id).send("beat", {"beat": self.beats[run_id]})


@pytest.fixture
def fleet(tmp_path: Path) -> Fleet:
    return Fleet(tmp_path)


@pytest.fixture(autouse=True)
def beats_read_at_every_look(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(slots_module, "BEAT_SECONDS", 0.0)


def runner_for(fleet: Fleet, max_slots: int = 4, worker_timeout_s: float = 300, **options: float) -> SlotRunner:
    sweep = SimpleNamespace(sweep_id="s1", trial_store=None, root=fleet.root, sweep_dir=fleet.root / "s1")
    runner = SlotRunner(
        sweep, "trial-slot/gpu", fleet, worker_timeout_s, max_slots, LOGGER, launch=fleet.launch, **options
    )
    runner.poll_seconds = 0  # every outcome() is a look
    return runner


def running_job(fleet: Fleet, runner: SlotRunner, trial_id: str = "t0") -> tuple[Any, uuid.UUID]:
    """A job on a slot that runs it."""
    job = runner.start(request(trial_id))
    runner.outcome(job)
    slot = fleet.queued()[0]
    fleet.start(slot)
    runner.outcome(job)
    assert fleet.job(slot)["request"]["trial_id"] == trial_id
    return job, slot


def request(trial_id: str) -> TrialRequest:
    return TrialRequest(sweep_id="s1", trial_id=trial_id, params=Params(lr=0.01))


def test_no_more_slots_queued_than_workers_online_and_jobs_only_to_running_slots(fleet: Fleet) -> None:
    runner = runner_for(fleet, max_slots=3)
    jobs = [runner.start(request(f"t{i}")) for i in range(3)]
    runner.outcome(jobs[0])
    assert len(fleet.queued()) == 1, "one worker online: one slot run waits in the queue at a time"
    assert fleet.job(fleet.queued()[0]) is None, "a queued slot gets no job: it may never start"
    fleet.online = 3
    runner.checked_at = -1e9  # the next look asks the pool again
    runner.outcome(jobs[0])
    assert len(fleet.runs) == 3 and len(fleet.queued()) == 3
    first = fleet.queued()[0]
    fleet.start(first)
    runner.outcome(jobs[0])
    assert fleet.job(first)["request"]["trial_id"] == "t0", "the first job to the first slot that runs"
    fleet.answer(first)
    assert runner.outcome(jobs[0]) == ""
    assert fleet.job(first)["request"]["trial_id"] == "t1", "an idle running slot takes the next job at once"
    assert len(fleet.runs) == 3, "never more slots than max_slots"


def test_a_crashed_slot_gives_its_job_back_until_the_attempts_run_out(
    fleet: Fleet, caplog, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(slots_module, "ENDED_SLOT_LOST_SECONDS", 0.0)  # crashed, and its beat is silent at once
    runner = runner_for(fleet, max_slots=1)
    job = runner.start(request("t0"))
    for attempt in range(1, WORKER_ATTEMPTS + 1):
        runner.outcome(job)
        (slot,) = fleet.queued()
        fleet.start(slot)
        runner.outcome(job)
        assert fleet.job(slot)["request"]["trial_id"] == "t0" and job.attempt == attempt
        fleet.runs[slot] = Crashed()
        assert runner.outcome(job) == (
            None if attempt < WORKER_ATTEMPTS else f"its flow run ended Crashed {attempt} times"
        )
    assert caplog.text.count("Crashed; submitting again") == WORKER_ATTEMPTS - 1


def test_a_slot_that_ended_idle_as_its_job_came_costs_the_job_no_attempt(fleet: Fleet) -> None:
    runner = runner_for(fleet, max_slots=1)
    job = runner.start(request("t0"))
    runner.outcome(job)
    (slot,) = fleet.queued()
    fleet.start(slot)
    runner.outcome(job)
    fleet.runs[slot] = Completed()  # its idle timeout ended it just as the job was posted
    assert runner.outcome(job) is None and job.attempt == 1
    (again,) = fleet.queued()
    fleet.start(again)
    runner.outcome(job)
    assert fleet.job(again)["request"]["trial_id"] == "t0"


def test_closing_cancels_queued_slots_and_stops_running_ones(fleet: Fleet) -> None:
    fleet.online = 2
    runner = runner_for(fleet, max_slots=2)
    jobs = [runner.start(request(f"t{i}")) for i in range(2)]
    runner.outcome(jobs[0])
    running, queued = fleet.queued()
    fleet.start(running)
    runner.outcome(jobs[0])
    for job in jobs:  # the running slot takes both, one after the other
        fleet.answer(running)
        assert runner.outcome(job) == ""
    runner.close()
    assert fleet.runs[queued].is_cancelled(), "no worker starts it after the sweep"
    assert fleet.job(running) == {"stop": True}, "the running slot ends at its next look"


def test_without_a_worker_the_runner_warns_then_gives_the_waiting_jobs_up(
    fleet: Fleet, caplog, monkeypatch: pytest.MonkeyPatch
) -> None:
    fleet.online = 0
    monkeypatch.setattr(slots_module, "POOL_CHECK_SECONDS", 0.0)
    runner = runner_for(fleet, max_slots=2, worker_timeout_s=0.05)
    jobs = [runner.start(request(f"t{i}")) for i in range(2)]
    assert runner.outcome(jobs[0]) is None
    outcomes = [None]
    while outcomes[-1] is None:
        outcomes.append(runner.outcome(jobs[0]))
    assert outcomes[-1] == "no worker polled work pool 'gpu' for 0.05 s (sweep.worker_timeout_s)"
    assert jobs[1].failure == outcomes[-1] and runner.timed_out == ["t0", "t1"]
    assert "no worker polls work pool 'gpu': trials are waiting" in caplog.text
    assert "prefect worker start --pool gpu" in caplog.text
    assert all(state.is_cancelled() for state in fleet.runs.values()), "a worker started later runs none"


def test_a_slot_whose_beat_stops_is_crashed_with_its_trial_task_and_its_job_goes_to_another(
    fleet: Fleet, caplog, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(slots_module, "SLOT_LOST_SECONDS", 0.2)
    runner = runner_for(fleet, max_slots=1)
    job, slot = running_job(fleet, runner)
    fleet.beat(slot)
    assert runner.outcome(job) is None and fleet.runs[slot].is_running()
    time.sleep(0.25)  # a lost machine: Prefect still says Running, the beat says nothing
    assert runner.outcome(job) is None
    assert fleet.runs[slot].is_crashed() and fleet.task_runs[slot].is_crashed(), "the UI shows nothing running"
    assert "its beat has been silent" in fleet.runs[slot].message and job.attempt == 2
    assert fleet.mailbox(slot).receive("job-1") == {"stop": True}, "were it alive after all, it stops"
    (again,) = fleet.queued()
    fleet.start(again)
    runner.outcome(job)
    assert fleet.job(again)["request"]["trial_id"] == "t0"
    assert "Crashed; submitting again (its beat has been silent for" in caplog.text


def test_silence_while_the_sweep_itself_was_held_up_does_not_count(
    fleet: Fleet, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(slots_module, "SLOT_LOST_SECONDS", 0.2)
    monkeypatch.setattr(slots_module, "STALLED_LOOK_SECONDS", 0.1)
    runner = runner_for(fleet, max_slots=1)
    job, slot = running_job(fleet, runner)
    fleet.beat(slot)
    runner.outcome(job)
    time.sleep(0.3)  # no look at the slots: the sweep's own store calls rode out an outage
    assert runner.outcome(job) is None and fleet.runs[slot].is_running() and job.attempt == 1
    fleet.beat(slot)  # the slot's beat goes on once the store is back
    time.sleep(0.05)
    assert runner.outcome(job) is None and job.attempt == 1, "a slot that beats is not lost"


def test_a_slot_marked_crashed_while_its_beat_goes_on_is_set_back_to_running_and_keeps_its_trial(
    fleet: Fleet, caplog
) -> None:
    runner = runner_for(fleet, max_slots=1)
    job, slot = running_job(fleet, runner)
    fleet.runs[slot] = Crashed()  # the heartbeat automation, after a server outage longer than its timeout
    fleet.beat(slot)
    assert runner.outcome(job) is None
    assert fleet.runs[slot].is_running() and fleet.queued() == [], "no second copy of the trial"
    assert "is alive" in caplog.text
    fleet.answer(slot)
    assert runner.outcome(job) == "" and job.attempt == 1


def test_while_the_server_does_not_answer_trials_carry_on_and_past_the_limit_the_sweep_stops(
    fleet: Fleet, caplog
) -> None:
    runner = runner_for(fleet, max_slots=1, server_outage_s=0.3)
    first, slot = running_job(fleet, runner)
    second = runner.start(request("t1"))
    fleet.down = True
    fleet.beat(slot)
    fleet.answer(slot)
    assert runner.outcome(first) == "", "a trial's end comes through its mailbox"
    assert fleet.job(slot)["request"]["trial_id"] == "t1", "the next trial goes to the running slot"
    assert caplog.text.count("does not answer") == 1
    fleet.down = False
    assert runner.outcome(second) is None and "answers again" in caplog.text
    fleet.down = True
    runner.outcome(second)
    time.sleep(0.35)
    with pytest.raises(ServiceUnavailable, match=r"did not answer for 0.3 s \(sweep.server_outage_s\).*--resume s1"):
        runner.outcome(second)


def test_the_outage_is_what_the_command_line_shows_though_prefect_fails_reporting_it() -> None:
    try:
        try:
            raise ServiceUnavailable("the Prefect server at http://127.0.0.1:9/api did not answer for 300 s")
        except ServiceUnavailable:
            raise httpx.ConnectError("[Errno 111] Connection refused") from None  # the engine reporting the end
    except httpx.ConnectError as exc:
        shown = expected_failure(exc)
    assert isinstance(shown, ServiceUnavailable) and shown.exit_code == 5
    assert expected_failure(ValueError("a bug")) is None, "anything else keeps its traceback"


def test_a_trial_stopped_by_a_service_outage_goes_back_without_costing_an_attempt(fleet: Fleet, caplog) -> None:
    runner = runner_for(fleet, max_slots=1)
    job, slot = running_job(fleet, runner)
    outage = "S3 endpoint http://127.0.0.1:9 is unreachable for 60 s (storage.outage_s)"
    fleet.answer(slot, failure=f"its trial task ended Failed: {outage}", service=outage)
    assert runner.outcome(job) is None and job.attempt == 1
    assert fleet.job(slot)["request"]["trial_id"] == "t0", "submitted again"
    assert f"t0: {outage}; submitting it again" in caplog.text


def test_a_slot_answers_a_service_outage_apart_from_the_trials_own_failure() -> None:
    outage = EndpointUnreachable("S3 endpoint http://127.0.0.1:9 is unreachable for 60 s (storage.outage_s)")
    assert slot_answer(Failed(data=outage))["service"] == str(outage)
    assert "service" not in slot_answer(Failed(data=ValueError("lr too high")))
    assert slot_answer(Completed()) == {"failure": ""}


def test_mailboxes_are_removed_once_their_slots_end_and_stale_ones_by_the_next_sweep(fleet: Fleet) -> None:
    runner = runner_for(fleet, max_slots=1)
    job, slot = running_job(fleet, runner)
    fleet.answer(slot)
    runner.outcome(job)
    fleet.runs[slot] = Completed()
    runner.outcome(job)
    runner.close()
    assert not list((fleet.root / "slots").rglob("*.json")), "the ended slot's mailbox is gone"
    stale, fresh = Mailbox(None, fleet.root, "dead", "slot-1"), Mailbox(None, fleet.root, "live", "slot-1")
    for mailbox in (stale, fresh):
        mailbox.send("job-0", {"stop": True})
    old = time.time() - STALE_MAILBOX_SECONDS - 60
    os.utime(fleet.root / "slots/dead/slot-1/job-0.json", (old, old))
    assert remove_stale_mailboxes(None, fleet.root) == ["slots/dead/slot-1"]
    assert stale.receive("job-0") is None and fresh.receive("job-0") == {"stop": True}


def test_an_outage_met_launching_the_first_slot_ends_when_the_server_answers_or_stops_the_sweep(
    fleet: Fleet, caplog
) -> None:
    """No slot yet to read the states of: the runner still asks the server, to see the outage end (or last)."""
    busy = httpx.Request("POST", "http://127.0.0.1:4200/api/task_runs/")
    locked = httpx.HTTPStatusError("database is locked", request=busy, response=httpx.Response(503, request=busy))
    refusals = iter([locked])

    def launch_after_a_refusal(*args: Any, **kwargs: Any) -> Any:
        if (refusal := next(refusals, None)) is not None:
            raise refusal
        return fleet.launch(*args, **kwargs)

    runner = runner_for(fleet, server_outage_s=0.3)
    runner.launch = launch_after_a_refusal
    job = runner.start(request("t0"))
    assert runner.outcome(job) is None and not fleet.queued()
    assert "503 Service Unavailable to POST /api/task_runs/" in caplog.text
    runner.checked_at = -math.inf  # the pool's next look is due
    assert runner.outcome(job) is None and "answers again" in caplog.text
    assert len(fleet.queued()) == 1, "the slot is asked for once the server answers"

    runner = runner_for(fleet, server_outage_s=0.3)
    fleet.down = True
    job = runner.start(request("t1"))
    runner.outcome(job)
    time.sleep(0.35)
    runner.checked_at = -math.inf
    with pytest.raises(ServiceUnavailable, match=r"did not answer for 0.3 s"):
        runner.outcome(job)
