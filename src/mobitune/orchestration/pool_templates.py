"""Base job templates of the ``gpu`` work pool beyond the process type: ``docker`` (a container of the worker
image per slot run) and ``kubernetes`` (a Job per slot run). Each starts from its worker's own default
(``prefect-docker``, ``prefect-kubernetes``) and adds what a GPU trial needs as job variables, so a deployment
or a run changes them without a new template.

Both run the slot's flow run in the worker image (``Dockerfile``: the project in ``/opt/mobitune``, a non-root
user) with the trials' local artifacts and torch's weight cache on a volume that outlives the container.

Neither template holds a secret: the template and every run's job variables are stored in the Prefect database
and shown in its UI. The API credential (``PREFECT_API_AUTH_STRING``) reaches a slot the way each worker passes
its own settings: the docker worker copies every Prefect setting it was started with into the container's
environment; the Kubernetes worker puts it in the Job, or a reference to a Kubernetes secret when started with
``PREFECT_INTEGRATIONS_KUBERNETES_WORKER_API_AUTH_STRING_SECRET_NAME``/``_KEY``.

A docker pool's slot containers get a GPU each by its id, never by a count: Docker turns ``count: 1`` into GPU 0
of the machine for every container (moby's ``countToDevices``). :class:`GpuPinning` spreads a sweep's slot runs
over the pool's work queues ``gpu-0`` … ``gpu-<n-1>`` (``mobitune setup --gpus n``), one per GPU index, each run
asking Docker for the GPU of its queue; a docker worker per GPU of each machine serves one queue.
"""

from __future__ import annotations

import collections
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from mobitune.errors import MobituneError

WORKER_IMAGE = "mobitune-worker:latest"
WORKER_UID = 1000  # the Dockerfile's `useradd --uid 1000 mobitune`
GPU_RESOURCE = "nvidia.com/gpu"
ARTIFACTS_DIR = "/opt/mobitune/artifacts"  # the image's WORKDIR/artifacts: prepared data, warmups, checkpoints
CACHE_DIR = "/home/mobitune/.cache"  # torch's weight cache, for the mobitune user
PREFECT_HOME = "/home/mobitune/.prefect"
S3_SECRET = "mobitune-s3"
CACHE_CLAIM = "mobitune-cache"
# a Kubernetes object name (RFC 1123 subdomain): no spaces, no braces, so no template placeholder either
KUBERNETES_NAME = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
GPU_QUEUE = re.compile(r"gpu-(0|[1-9][0-9]*)")  # a docker pool's work queue of one GPU index: gpu-0, gpu-1, ...


def _variable(kind: str, default: Any, title: str, description: str) -> dict[str, Any]:
    return {"type": kind, "default": default, "title": title, "description": description}


def gpu_queue(index: int) -> str:
    """The docker pool's work queue of the machines' GPU ``index``."""
    return f"gpu-{index}"


def gpu_device_requests(index: int) -> list[dict[str, Any]]:
    """A container's request for the machine's GPU ``index`` by its id (``docker run --gpus device=<index>``)."""
    return [{"driver": "nvidia", "device_ids": [str(index)], "capabilities": [["gpu"]]}]


def docker_template(gpus: int = 1) -> dict[str, Any]:
    """Containers on the host's network (the server and S3 as the worker sees them), the artifacts and caches on
    named volumes. On machines with ``gpus`` GPUs, a container asks for GPU 0 through
    ``container_create_kwargs.device_requests`` unless its run names another (:class:`GpuPinning`); with
    ``gpus`` 0, for none."""
    from prefect_docker.worker import DockerWorker

    template = DockerWorker.get_default_base_job_template()
    variables = template["variables"]["properties"]
    variables["image"]["default"] = WORKER_IMAGE
    variables["image_pull_policy"]["default"] = "IfNotPresent"  # a locally built image is not in any registry
    variables["network_mode"]["default"] = "host"
    variables["volumes"]["default"] = [f"mobitune-artifacts:{ARTIFACTS_DIR}", f"mobitune-cache:{CACHE_DIR}"]
    variables["env"]["default"] = {"PREFECT_HOME": PREFECT_HOME}  # not the worker's own, which it passes on
    variables["container_create_kwargs"]["default"] = {"device_requests": gpu_device_requests(0)} if gpus else {}
    return template


@dataclass(frozen=True)
class GpuPinning:
    """How a sweep pins its slot runs on a docker pool to the GPUs of their machines: each run goes to the work
    queue of one GPU index (``gpus``: those the pool has queues for) and asks Docker for that GPU by id, keeping
    the rest of the ``container_create_kwargs`` its deployment (or else the pool) gives. Each machine runs a
    docker worker per GPU on that GPU's queue, so a run of queue gpu-2 gets GPU 2 of whichever machine takes it,
    and each worker's ``--limit`` caps the slots on its GPU; on a single machine, one worker serving every queue
    pins them as well."""

    gpus: tuple[int, ...]
    create_kwargs: dict[str, Any]

    def next_gpu(self, pinned: Iterable[int | None]) -> int:
        """The GPU for a new slot: the one with fewest of the sweep's live slots (``pinned``: each one's GPU), the
        lowest index among equals; a sweep's slot k lands on GPU k mod n, and a lost slot's stand-in where it was."""
        slots = collections.Counter(pinned)
        return min(self.gpus, key=lambda gpu: (slots[gpu], gpu))

    def run_options(self, gpu: int) -> dict[str, Any]:
        """``run_deployment``'s work queue and job variables of a slot run on the machine's GPU ``gpu``."""
        create_kwargs = {**self.create_kwargs, "device_requests": gpu_device_requests(gpu)}
        return {"work_queue_name": gpu_queue(gpu), "job_variables": {"container_create_kwargs": create_kwargs}}


def gpu_pinning(client: Any, deployment: Any) -> GpuPinning | None:
    """The :class:`GpuPinning` of ``deployment``'s slot runs, read through the synchronous Prefect ``client``; None
    where its pool pins nothing: a docker pool without GPU queues (its machines have none), a process pool (a
    worker per GPU under CUDA_VISIBLE_DEVICES), a kubernetes pool (the device plugin gives each Job its own)."""
    pool = client.read_work_pool(deployment.work_pool_name)
    if pool.type != "docker":
        return None
    queues = client.read_work_queues(work_pool_name=pool.name)
    gpus = sorted(int(match[1]) for queue in queues if (match := GPU_QUEUE.fullmatch(queue.name)))
    if not gpus:
        return None
    default = pool.base_job_template["variables"]["properties"]["container_create_kwargs"].get("default")
    create_kwargs = (deployment.job_variables or {}).get("container_create_kwargs", default) or {}
    return GpuPinning(tuple(gpus), create_kwargs)


def kubernetes_name(name: str, option: str) -> str:
    """``name`` if Kubernetes accepts it as an object's name; else an error naming ``option``."""
    if len(name) > 253 or not KUBERNETES_NAME.fullmatch(name):
        raise MobituneError(
            f"{option} {name!r}: not a Kubernetes object name (lower-case letters, digits, '-' and '.', "
            "starting and ending with a letter or digit)"
        )
    return name


def kubernetes_template(s3_secret: str = S3_SECRET, cache_claim: str = CACHE_CLAIM) -> dict[str, Any]:
    """A Job whose container asks for ``gpus`` of ``nvidia.com/gpu`` in its limits, lands on GPU nodes
    (``node_selector``, ``tolerations``), takes its S3 keys from the Kubernetes secret ``s3_secret`` (never as
    plain values in the template or the flow run) and keeps the artifacts and caches on the claim
    ``cache_claim``. Both names are written into the Job as they are, not job variables: a run cannot mount
    another secret or volume. The pod passes Kubernetes' *restricted* Pod Security Standard, with a read-only
    root file system and no service-account token; the template refuses job variables it does not declare."""
    from prefect_kubernetes.worker import KubernetesWorker

    template = KubernetesWorker.get_default_base_job_template()
    template["variables"]["additionalProperties"] = False
    variables = template["variables"]["properties"]
    variables["image"]["default"] = WORKER_IMAGE
    variables["env"]["default"] = {"PREFECT_HOME": PREFECT_HOME}  # the mounted one, not the worker's own
    variables |= {
        "gpus": _variable("integer", 1, "GPUs", f"{GPU_RESOURCE} in the container's limits: one trial per GPU"),
        "node_selector": _variable(
            "object", {"nvidia.com/gpu.present": "true"}, "Node selector", "labels of the nodes a slot may run on"
        ),
        "tolerations": _variable(
            "array",
            [{"key": GPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"}],
            "Tolerations",
            "taints of GPU nodes the slot tolerates",
        ),
    }
    pod = template["job_configuration"]["job_manifest"]["spec"]["template"]["spec"]
    container = pod["containers"][0]
    container["resources"]["limits"][GPU_RESOURCE] = "{{ gpus }}"
    container["envFrom"] = [{"secretRef": {"name": kubernetes_name(s3_secret, "--s3-secret")}}]
    _restrict(pod, container, kubernetes_name(cache_claim, "--cache-claim"))
    pod["nodeSelector"] = "{{ node_selector }}"
    pod["tolerations"] = "{{ tolerations }}"
    return template


def _restrict(pod: dict[str, Any], container: dict[str, Any], cache_claim: str) -> None:
    """Kubernetes' *restricted* profile for the pod and its container, a read-only root file system and every
    path the slot writes on a volume: artifacts and caches on the claim, Prefect's home and /tmp on emptyDirs
    (per pod). No service-account token: a slot never talks to the Kubernetes API."""
    pod["automountServiceAccountToken"] = False
    pod["securityContext"] = {
        "runAsNonRoot": True,
        "runAsUser": WORKER_UID,
        "runAsGroup": WORKER_UID,
        "fsGroup": WORKER_UID,  # the claim's files writable by the mobitune user
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    container["securityContext"] = {
        "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"]},
        "readOnlyRootFilesystem": True,
        "runAsNonRoot": True,
    }
    container["volumeMounts"] = [
        {"name": "cache", "mountPath": ARTIFACTS_DIR, "subPath": "artifacts"},
        {"name": "cache", "mountPath": CACHE_DIR, "subPath": "cache"},
        {"name": "prefect-home", "mountPath": PREFECT_HOME},
        {"name": "tmp", "mountPath": "/tmp"},
    ]
    pod["volumes"] = [
        {"name": "cache", "persistentVolumeClaim": {"claimName": cache_claim}},
        {"name": "prefect-home", "emptyDir": {}},
        {"name": "tmp", "emptyDir": {}},
    ]


def pool_template(
    kind: str, s3_secret: str = S3_SECRET, cache_claim: str = CACHE_CLAIM, gpus: int = 1
) -> dict[str, Any] | None:
    """The gpu pool's base job template for a pool of type ``kind``; None for a process pool (Prefect's own)."""
    if kind == "docker":
        return docker_template(gpus)
    if kind == "kubernetes":
        return kubernetes_template(s3_secret, cache_claim)
    return None
