"""Prefect flows ``trial`` and ``trial-slot`` (deployment entry point ``flows/trial.py``) and the ``trial`` task
that both backends run each trial as.

Kept apart from :mod:`mobitune.orchestration.sweep_flow` so that a worker's flow-run process
imports what a trial needs and no more: the sweep side's Optuna, pandas and
matplotlib would add about a second to every trial's start-up.
"""

from __future__ import annotations

import os
import queue
import re
from pathlib import Path
from typing import Any

from prefect import flow, task
from prefect.artifacts import create_progress_artifact, create_table_artifact, update_progress_artifact
from prefect.cache_policies import NO_CACHE
from prefect.client.schemas.objects import State
from pydantic import NonNegativeInt, ValidationError

from mobitune.errors import ServiceUnavailable
from mobitune.orchestration.mailbox import Mailbox
from mobitune.orchestration.prefect_api import api_url, client_retries, server_unreachable
from mobitune.provenance import HOST_GPUS_ENV
from mobitune.redaction import redact_logs
from mobitune.storage.names import PROJECT_PATH_PATTERN, PROJECT_PATH_RULE, Name, UnsafeName
from mobitune.storage.records import json_safe
from mobitune.storage.stores import LOCAL_ROOT
from mobitune.sweep.trial import run_trial_recorded
from mobitune.sweep.trial_files import TrialRequest


@flow(name="trial", log_prints=True)
def trial(request: TrialRequest) -> dict[str, Any]:
    """One trial (or one segment of it, up to ``request.until`` finetune epochs): fetch or train its warmup,
    finetune (resuming from its checkpoint in the store), store params/history/metrics."""
    redact_logs()
    return run_trial_recorded(request, EpochProgress(request))


SLOT_IDLE_SECONDS = 120.0  # a slot run with no job for this long ends (the sweep starts another if it needs one)


@flow(name="trial-slot", log_prints=True)
def trial_slot(
    sweep_id: Name,
    slot: Name,
    store_uri: str | None = None,
    local_root: str = LOCAL_ROOT,
    idle_timeout_s: float = SLOT_IDLE_SECONDS,
    outage_s: float = 0,
    machine_gpu: NonNegativeInt | None = None,
) -> int:
    """One worker slot of a sweep: the trials the sweep posts to this slot's
    :class:`~mobitune.orchestration.mailbox.Mailbox`, one after another, each a ``trial`` task run named after
    it (as on the local backend); returns how many it ran.

    Why: a flow run costs a worker seconds before its trial starts (pickup,
    a new process, importing torch and Prefect; benchmarks/RESULTS.md has the
    figures). A slot pays that once and then starts each trial within a second. It ends on the sweep's ``stop``,
    or after ``idle_timeout_s`` without a job (a sweep that died). ``outage_s``: how long the mailbox rides out
    an S3 endpoint that does not answer (``storage.outage_s``). ``machine_gpu``: the machine's index of the GPU
    Docker gave this slot's container (a docker pool's :class:`~mobitune.orchestration.pool_templates.GpuPinning`),
    which its trials' provenance records; inside, CUDA calls it 0.

    A trial stopped by a service that did not answer answers ``{"service": ...}``: the sweep runs it again
    rather than recording it.

    Every parameter and message comes from whoever reaches the Prefect API or the bucket, so each is checked
    before it names a file: the names by their pattern (Prefect refuses a run whose names do not match it),
    ``local_root`` by :func:`slot_root`, each job by :func:`job_request`.
    """
    redact_logs()
    if machine_gpu is not None:
        os.environ[HOST_GPUS_ENV] = str(machine_gpu)  # this run's own process (its container's)
    mailbox = Mailbox(store_uri, slot_root(local_root, sweep_id), sweep_id, slot, outage_s)
    # every trial's end state is kept: Prefect links a task run to an earlier one whose result has the same
    # id(), and a freed result's id comes back for the next request, drawing dependencies that do not exist
    ran: list[Any] = []
    with mailbox.beating():
        while (job := mailbox.wait(f"job-{len(ran)}", idle_timeout_s)) is not None and not job.get("stop"):
            request, refusal = job_request(job, sweep_id, local_root)
            if request is None:
                mailbox.send(f"done-{len(ran)}", {"failure": refusal})
                ran.append(refusal)
                continue
            state = trial_task.with_options(task_run_name=request.trial_id)(request, return_state=True)
            mailbox.send(f"done-{len(ran)}", slot_answer(state))
            ran.append(state)
    mailbox.remove()
    return len(ran)


def slot_root(local_root: str, sweep_id: str) -> str:
    """``local_root`` if a slot may keep files there: a path inside the project the worker runs in (relative,
    no ``..``), or the absolute artifact folder of a sweep that shares this disk, which holds that sweep's folder."""
    if re.fullmatch(PROJECT_PATH_PATTERN, local_root):
        return local_root
    if Path(local_root).is_absolute() and (Path(local_root) / "sweeps" / sweep_id).is_dir():
        return local_root
    raise UnsafeName(
        f"local_root {local_root!r}: give {PROJECT_PATH_RULE}, or the artifact folder of sweep {sweep_id} "
        "on a disk the workers share"
    )


def job_request(job: dict[str, Any], sweep_id: str, local_root: str) -> tuple[TrialRequest | None, str]:
    """A job's trial request, validated, with this worker's ``local_root`` (the sweep's own folder may not exist
    here: another machine, a container); or None and why it is refused (malformed, or another sweep's trial)."""
    given = job.get("request")
    try:
        request = TrialRequest.model_validate((given if isinstance(given, dict) else {}) | {"local_root": local_root})
    except ValidationError as exc:
        return None, f"refused a malformed job: {exc.error_count()} error(s), first {exc.errors()[0]['msg']}"
    if request.sweep_id != sweep_id:
        return None, f"refused a job of sweep {request.sweep_id} sent to a slot of sweep {sweep_id}"
    return request, ""


def slot_answer(state: State) -> dict[str, Any]:
    """A trial task's end, as the slot answers it: ``failure`` "" when it completed; ``service`` when a service
    of the fleet stopped it."""
    if state.is_completed():
        return {"failure": ""}
    answer = {"failure": f"its trial task ended {state.name}: {state.message}"}
    if isinstance(raised := state.result(raise_on_failure=False), ServiceUnavailable):
        answer["service"] = str(raised)
    return answer


@task(name="trial", cache_policy=NO_CACHE)
def trial_task(request: TrialRequest, devices: queue.Queue[str] | None = None) -> None:
    """A trial on the next free device of ``devices`` (the local backend's slots), or on its own ``device``.

    Its results are its files in the store, and it returns nothing: Prefect links a task run to an earlier one
    whose result holds, one level down, the very object it is given, and a trial's metrics hold its swept values,
    the same objects as in the next trials' requests, which drew edges between sibling trials in the run graph.
    """
    if devices is None:
        run_trial_recorded(request, EpochProgress(request))
        return
    device = devices.get()
    try:
        params = request.params.model_copy(update={"device": device})
        run_trial_recorded(request.model_copy(update={"params": params}), EpochProgress(request))
    finally:
        devices.put(device)


class EpochProgress:
    """A trial's finetune epochs on its run page: a progress artifact moved on after each epoch, and a table
    artifact of the epochs so far (the printed epoch lines are in the run's logs through ``log_prints``)."""

    def __init__(self, request: TrialRequest) -> None:
        self.trial_id = request.trial_id
        self.epochs = request.params.finetune.epochs
        self.rows: list[dict[str, Any]] = []
        self.progress_id: Any = None

    def __call__(self, row: dict[str, Any]) -> None:
        """Show the epoch; a server that does not answer costs the display, not the trial."""
        self.rows.append(row)
        try:
            with client_retries(1):
                self._show(row)
        except Exception as exc:
            if not server_unreachable(exc):
                raise
            print(
                f"{self.trial_id}: epoch {row['epoch']} not shown in the UI: the Prefect server at {api_url()} "
                f"does not answer ({type(exc).__name__}); the trial goes on"
            )

    def _show(self, row: dict[str, Any]) -> None:
        percent = 100.0 * row["epoch"] / max(1, self.epochs)
        if self.progress_id is None:
            self.progress_id = create_progress_artifact(percent, description=f"{self.trial_id}: finetune epochs")
        else:
            update_progress_artifact(self.progress_id, percent)
        create_table_artifact(
            json_safe(epoch_rows(self.rows)), description=f"{self.trial_id}: epoch {row['epoch']}/{self.epochs}"
        )


def epoch_rows(history: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per-epoch history rows as people read them: accuracies in %, losses to 4 decimals."""
    return [
        {
            "epoch": f"{row['phase']} {row['epoch']}",
            "train_accuracy %": round(row["train_accuracy"] * 100, 2),
            "test_accuracy %": round(row["test_accuracy"] * 100, 2),
            "train_loss": round(row["train_loss"], 4),
            "test_loss": round(row["test_loss"], 4),
            "seconds": round(row["seconds"], 1),
        }
        for row in history
    ]
