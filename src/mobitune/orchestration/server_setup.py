"""``mobitune setup``: what a Prefect server needs before sweeps run on workers, created idempotently.

- the work pools ``gpu`` (trials) and ``sweeps`` (the orchestrating flow);
- an automation that marks a flow run ``Crashed`` when its heartbeats stop
  (a worker machine lost mid-trial), so the sweep gives the trial to another slot and
  it resumes from its checkpoint instead of waiting on a run that stays
  ``Running`` forever. Flow runs emit heartbeats when their worker sets
  ``PREFECT_FLOWS_HEARTBEAT_FREQUENCY`` (seconds, at least 30).
"""

from __future__ import annotations

from datetime import timedelta

import httpx
from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import WorkPoolCreate
from prefect.client.schemas.objects import StateType
from prefect.events.actions import ChangeFlowRunState
from prefect.events.schemas.automations import AutomationCore, EventTrigger, Posture
from prefect.events.schemas.events import ResourceSpecification
from prefect.exceptions import ObjectAlreadyExists
from prefect.settings import PREFECT_API_URL

from mobitune.errors import MobituneError

WORK_POOLS = ("gpu", "sweeps")
ZOMBIE_AUTOMATION = "mobitune: crash flow runs whose heartbeats stopped"
HEARTBEAT_SECONDS = 30  # the smallest frequency Prefect accepts


def zombie_automation(timeout_s: int) -> AutomationCore:
    """After a flow run's heartbeat, expect another heartbeat or a final state within ``timeout_s``."""
    final = ("Completed", "Failed", "Cancelled", "Crashed")
    return AutomationCore(
        name=ZOMBIE_AUTOMATION,
        description=f"A flow run that sends no heartbeat for {timeout_s} s has lost its machine: mark it Crashed.",
        trigger=EventTrigger(
            after={"prefect.flow-run.heartbeat"},
            expect={"prefect.flow-run.heartbeat", *(f"prefect.flow-run.{state}" for state in final)},
            match=ResourceSpecification({"prefect.resource.id": ["prefect.flow-run.*"]}),
            for_each={"prefect.resource.id"},
            posture=Posture.Proactive,
            threshold=1,
            within=timedelta(seconds=timeout_s),
        ),
        actions=[
            ChangeFlowRunState(
                state=StateType.CRASHED, message=f"no heartbeat for {timeout_s} s: its worker or machine was lost"
            )
        ],
    )


def setup_server(heartbeat_timeout_s: int) -> list[str]:
    """Create what is missing on the server at ``PREFECT_API_URL``; returns one line per thing, done or found."""
    api = PREFECT_API_URL.value()
    if not api:
        raise MobituneError(
            "PREFECT_API_URL is not set: mobitune setup configures a running Prefect server, "
            "e.g. export PREFECT_API_URL=http://127.0.0.1:4200/api"
        )
    done = []
    try:
        with get_client(sync_client=True) as client:
            for pool in WORK_POOLS:
                try:
                    client.create_work_pool(WorkPoolCreate(name=pool, type="process"))
                    done.append(f"work pool {pool}: created")
                except ObjectAlreadyExists:
                    done.append(f"work pool {pool}: exists")
            wanted = zombie_automation(heartbeat_timeout_s)
            existing = client.read_automations_by_name(ZOMBIE_AUTOMATION)
            for duplicate in existing[1:]:
                client.delete_automation(duplicate.id)
            if existing:
                client.update_automation(existing[0].id, wanted)
            else:
                client.create_automation(wanted)
    except httpx.ConnectError:
        message = f"no Prefect server answers at {api} (PREFECT_API_URL); start one with: prefect server start"
        raise MobituneError(message) from None
    verb = "updated" if existing else "created"
    done.append(f"automation '{ZOMBIE_AUTOMATION}': {verb} (no heartbeat for {heartbeat_timeout_s} s)")
    done.append(f"start workers with PREFECT_FLOWS_HEARTBEAT_FREQUENCY={HEARTBEAT_SECONDS} so their runs send them")
    return done
