"""``mobitune setup``: what a Prefect server needs before sweeps run on workers, created idempotently.

- the work pools ``gpu`` (trials: of type process, or with ``--pool-type`` docker or kubernetes, whose
  templates are :mod:`mobitune.orchestration.pool_templates`; a kubernetes pool's S3 secret and cache claim are
  named here, once, and written into its template) and ``sweeps`` (the orchestrating flow, a process);
- for a docker pool on machines of ``--gpus N``: its work queues ``gpu-0`` … ``gpu-<N-1>``, one per GPU index, to
  which sweeps pin their slot containers (:class:`~mobitune.orchestration.pool_templates.GpuPinning`); queues of
  indices beyond N are removed;
- an automation that marks a flow run ``Crashed`` when its heartbeats stop
  (a worker machine lost mid-trial), so the sweep gives the trial to another slot and
  it resumes from its checkpoint instead of waiting on a run that stays
  ``Running`` forever. Flow runs emit heartbeats when their worker sets
  ``PREFECT_FLOWS_HEARTBEAT_FREQUENCY`` (seconds, at least 30);
- with ``--notify URL``: a webhook block and an automation that POSTs one message to URL whenever a ``sweep``
  flow run completes, fails or crashes. The sweep names its flow run after its sweep id and ends on a state
  whose message gives the trial counts, the best accuracy and where the report is; a failure's message is the
  error, a crash's Prefect's own.

Before any of it, :func:`open_api_warning` asks the API without a credential: a server that answers that on an
address other than loopback lets whoever reaches it run code on every worker, and the user is told so.
"""

from __future__ import annotations

import ipaddress
import urllib.parse
from datetime import timedelta
from uuid import UUID

import httpx
from prefect.blocks.notifications import CustomWebhookNotificationBlock
from prefect.client.orchestration import SyncPrefectClient, get_client
from prefect.client.schemas.actions import WorkPoolCreate, WorkPoolUpdate
from prefect.client.schemas.objects import StateType
from prefect.events.actions import ChangeFlowRunState, SendNotification
from prefect.events.schemas.automations import AutomationCore, EventTrigger, Posture
from prefect.events.schemas.events import ResourceSpecification
from prefect.exceptions import ObjectAlreadyExists
from prefect.settings import PREFECT_API_URL

from mobitune.errors import MobituneError
from mobitune.orchestration.pool_templates import CACHE_CLAIM, GPU_QUEUE, S3_SECRET, gpu_queue, pool_template
from mobitune.redaction import register_secret

ZOMBIE_AUTOMATION = "mobitune: crash flow runs whose heartbeats stopped"
HEARTBEAT_SECONDS = 30  # the smallest frequency Prefect accepts
NOTIFY_AUTOMATION = "mobitune: tell a webhook when a sweep ends"
NOTIFY_BLOCK = "mobitune-sweep-end"  # a custom-webhook notification block
SWEEP_ENDS = ("Completed", "Failed", "Crashed")
# an endpoint behind the API's auth: /health and /ready answer without a credential even when auth is on
AUTH_PROBE_PATH = "/admin/version"


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


def notify_automation(block_document_id: UUID) -> AutomationCore:
    """One message per ``sweep`` flow run that reaches a final state other than Cancelled."""
    return AutomationCore(
        name=NOTIFY_AUTOMATION,
        description="POST the sweep's end (its id, trial counts, best accuracy, report) to the webhook block "
        f"{NOTIFY_BLOCK}.",
        trigger=EventTrigger(
            expect={f"prefect.flow-run.{state}" for state in SWEEP_ENDS},
            match=ResourceSpecification({"prefect.resource.id": ["prefect.flow-run.*"]}),
            match_related=ResourceSpecification({"prefect.resource.role": "flow", "prefect.resource.name": "sweep"}),
            posture=Posture.Reactive,
            threshold=1,
        ),
        actions=[
            SendNotification(
                block_document_id=block_document_id,
                subject="mobitune sweep {{ flow_run.name }}: {{ flow_run.state.name }}",
                body="{{ flow_run.state.message }}\nflow run: {{ flow_run|ui_url }}",
            )
        ],
    )


def _put_automation(client: SyncPrefectClient, wanted: AutomationCore) -> str:
    """Create ``wanted``, or update the automation of its name (one: duplicates deleted); "created"/"updated"."""
    existing = client.read_automations_by_name(wanted.name)
    for duplicate in existing[1:]:
        client.delete_automation(duplicate.id)
    if existing:
        client.update_automation(existing[0].id, wanted)
        return "updated"
    client.create_automation(wanted)
    return "created"


def _put_pool(client: SyncPrefectClient, name: str, kind: str, template: dict | None) -> str:
    """Create pool ``name`` of type ``kind`` with base job ``template`` (None: the type's own), or bring an
    existing one's template up to date; a pool of another type is left alone and named (a pool's type cannot
    change)."""
    try:
        client.create_work_pool(WorkPoolCreate(name=name, type=kind, base_job_template=template or {}))
        return f"work pool {name}: created ({kind})"
    except ObjectAlreadyExists:
        existing = client.read_work_pool(name)
    if existing.type != kind:
        raise MobituneError(
            f"work pool {name} exists with type {existing.type}, not {kind}; remove it first "
            f"(prefect work-pool delete {name}) or set it up as {existing.type} (--pool-type {existing.type})"
        )
    if template is not None:
        client.update_work_pool(name, WorkPoolUpdate(base_job_template=template))
        return f"work pool {name}: exists ({kind}), template updated"
    return f"work pool {name}: exists ({kind})"


def _put_gpu_queues(client: SyncPrefectClient, pool: str, gpus: int) -> str:
    """Work queues ``gpu-0`` … ``gpu-<gpus-1>`` in ``pool``, and no other GPU queue: a sweep pins its slot runs to
    as many GPUs as the pool has queues."""
    existing = {queue.name: queue for queue in client.read_work_queues(work_pool_name=pool)}
    for index in range(gpus):
        if gpu_queue(index) not in existing:
            client.create_work_queue(gpu_queue(index), work_pool_name=pool, description=f"the machines' GPU {index}")
    for name, queue in existing.items():
        if (match := GPU_QUEUE.fullmatch(name)) and int(match[1]) >= gpus:
            client.delete_work_queue_by_id(queue.id)
    if not gpus:
        return f"work pool {pool}: no GPU queue (machines without a GPU: containers ask for none)"
    queues = ", ".join(gpu_queue(index) for index in range(gpus))
    return (
        f"work pool {pool}: queues {queues}, one per GPU of each machine; start a docker worker per GPU: "
        f"prefect worker start --pool {pool} --type docker --work-queue gpu-<index> --limit <slots per GPU>"
    )


def is_loopback(url: str) -> bool:
    """Whether ``url``'s host is this machine's loopback: ``localhost`` or an address in 127.0.0.0/8 or ::1.
    The host is parsed, not matched as text: ``127.0.0.1.evil.example`` and ``localhost.evil`` are other
    machines, and ``http://127.0.0.1@evil.example`` is evil.example."""
    host = urllib.parse.urlsplit(url).hostname
    if host is None:
        return False
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def open_api_message(api: str, status_without_credential: int | None) -> str | None:
    """The warning for an API at ``api`` that answered a request without a credential with
    ``status_without_credential`` (None: no answer), or None when there is nothing to warn about: it asked
    for one, or only this machine reaches it."""
    if status_without_credential is None or not 200 <= status_without_credential < 300 or is_loopback(api):
        return None
    return (
        f"the Prefect API at {api} answers without a credential (GET {AUTH_PROBE_PATH}: "
        f"{status_without_credential}) on an address other than loopback: whoever reaches it can run code on "
        "every worker. Start the server with PREFECT_SERVER_API_AUTH_STRING (and "
        "PREFECT_SERVER_CSRF_PROTECTION_ENABLED=true), and give every client PREFECT_API_AUTH_STRING"
    )


def status_without_credential(api: str) -> int | None:
    """The status of ``GET <api>/admin/version`` sent with no Authorization header; None if nothing answers."""
    try:
        return httpx.get(f"{api.rstrip('/')}{AUTH_PROBE_PATH}", timeout=10).status_code
    except httpx.HTTPError:
        return None


def open_api_warning() -> str | None:
    """:func:`open_api_message` for the server at ``PREFECT_API_URL`` (None when it is not set)."""
    api = PREFECT_API_URL.value()
    return open_api_message(api, status_without_credential(api)) if api else None


def setup_server(
    heartbeat_timeout_s: int,
    notify_url: str | None = None,
    pool_type: str = "process",
    s3_secret: str = S3_SECRET,
    cache_claim: str = CACHE_CLAIM,
    gpus: int = 1,
) -> list[str]:
    """Create what is missing on the server at ``PREFECT_API_URL``; returns one line per thing, done or found.
    ``s3_secret`` and ``cache_claim`` name the Kubernetes secret and claim of a kubernetes pool's Jobs; ``gpus``
    the GPUs of each machine of a docker pool."""
    api = PREFECT_API_URL.value()
    if not api:
        raise MobituneError(
            "PREFECT_API_URL is not set: mobitune setup configures a running Prefect server, "
            "e.g. export PREFECT_API_URL=http://127.0.0.1:4200/api"
        )
    gpu_template = pool_template(pool_type, s3_secret, cache_claim, gpus)
    done = []
    try:
        with get_client(sync_client=True) as client:
            done.append(_put_pool(client, "gpu", pool_type, gpu_template))
            if pool_type == "docker":
                done.append(_put_gpu_queues(client, "gpu", gpus))
            done.append(_put_pool(client, "sweeps", "process", None))
            verb = _put_automation(client, zombie_automation(heartbeat_timeout_s))
            done.append(f"automation '{ZOMBIE_AUTOMATION}': {verb} (no heartbeat for {heartbeat_timeout_s} s)")
            if notify_url is not None:
                register_secret(notify_url)  # a webhook's URL is its credential: masked in all mobitune says
                webhook = CustomWebhookNotificationBlock(
                    name="mobitune",
                    url="{{webhook_url}}",  # filled from the block's secrets, which the server keeps encrypted
                    secrets={"webhook_url": notify_url},
                    json_data={"subject": "{{subject}}", "body": "{{body}}"},
                    allow_private_urls=True,  # a team's webhook relay is often on its own network
                )
                block_id = webhook.save(NOTIFY_BLOCK, overwrite=True)
                verb = _put_automation(client, notify_automation(block_id))
                done.append(f"webhook block '{NOTIFY_BLOCK}': its URL kept in the block's secrets")
                done.append(f"automation '{NOTIFY_AUTOMATION}': {verb} (a sweep that completes, fails or crashes)")
    except httpx.ConnectError:
        message = f"no Prefect server answers at {api} (PREFECT_API_URL); start one with: prefect server start"
        raise MobituneError(message) from None
    except httpx.HTTPStatusError as exc:
        if exc.response.status_code != 401:
            raise
        raise MobituneError(
            f"the Prefect server at {api} refused the credential (401 Unauthorized): set PREFECT_API_AUTH_STRING "
            "to the server's PREFECT_SERVER_API_AUTH_STRING"
        ) from None
    done.append(f"start workers with PREFECT_FLOWS_HEARTBEAT_FREQUENCY={HEARTBEAT_SECONDS} so their runs send them")
    return done
