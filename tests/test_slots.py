"""The slot runner's decisions, fast: :class:`SlotRunner` against a fake fleet.

The fleet stands in for the Prefect server and its workers at the runner's seam (the client it reads states
and workers from, and the ``launch`` that asks for a slot run): the test decides when a queued slot run
starts, crashes or ends, and answers jobs through the real mailbox files. Capacity, hand-off to idle slots
only, give-back after a crash, cancellation and the no-worker timeout are checked without a server; the real
server and workers are tested end to end in test_sweep_flows.py and test_load.py.
"""

from __future__ import annotations

import logging
import uuid
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from prefect.states import Completed, Crashed, Running, Scheduled

from mobitune.orchestration import slots as slots_module
from mobitune.orchestration.mailbox import Mailbox
from mobitune.orchestration.slots import WORKER_ATTEMPTS, SlotRunner
from mobitune.sweep.trial_files import TrialRequest

LOGGER = logging.getLogger("test_slots")


class Fleet:
    """The server's flow runs and the workers polling pool ``gpu``, as the runner sees them."""

    def __init__(self, root: Path, online: int = 1) -> None:
        self.root, self.online = root, online
        self.runs: dict[uuid.UUID, Any] = {}
        self.names: dict[uuid.UUID, str] = {}
        self.served: dict[uuid.UUID, int] = {}  # run id -> jobs answered

    # the client the runner reads
    def read_deployment_by_name(self, name: str) -> Any:
        return SimpleNamespace(work_pool_name="gpu")

    def read_flow_runs(self, flow_run_filter: Any, limit: int) -> list[Any]:
        ids = flow_run_filter.id.any_
        return [SimpleNamespace(id=i, state=self.runs[i]) for i in ids if i in self.runs][:limit]

    def read_workers_for_work_pool(self, pool: str) -> list[Any]:
        return [SimpleNamespace(status="ONLINE")] * self.online

    def set_flow_run_state(self, run_id: uuid.UUID, state: Any, force: bool = False) -> None:
        self.runs[run_id] = state

    # what the runner asks for a slot with (Prefect's run_deployment)
    def launch(self, deployment: str, parameters: dict, timeout: int, flow_run_name: str) -> Any:
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
        """The job posted to the slot and not yet answered."""
        return self.mailbox(run_id).receive(f"job-{self.served[run_id]}")

    def answer(self, run_id: uuid.UUID, failure: str = "") -> None:
        self.mailbox(run_id).send(f"done-{self.served[run_id]}", {"failure": failure})
        self.served[run_id] += 1


@pytest.fixture
def fleet(tmp_path: Path) -> Fleet:
    return Fleet(tmp_path)


def runner_for(fleet: Fleet, max_slots: int = 4, worker_timeout_s: float = 300) -> SlotRunner:
    sweep = SimpleNamespace(sweep_id="s1", trial_store=None, root=fleet.root)
    runner = SlotRunner(sweep, "trial-slot/gpu", fleet, worker_timeout_s, max_slots, LOGGER, launch=fleet.launch)
    runner.poll_seconds = 0  # every outcome() is a look
    return runner


def request(trial_id: str) -> TrialRequest:
    return TrialRequest("s1", trial_id, {"lr": 0.01})


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


def test_a_crashed_slot_gives_its_job_back_until_the_attempts_run_out(fleet: Fleet, caplog) -> None:
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
