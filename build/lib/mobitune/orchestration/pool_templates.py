"""Base job templates of the ``gpu`` work pool beyond the process type: ``docker`` (a container of the worker
image per slot run) and ``kubernetes`` (a Job per slot run). Each starts from its worker's own default
(``prefect-docker``, ``prefect-kubernetes``) and adds what a GPU trial needs as job variables, so a deployment
or a run changes them without a new template.

Both run the slot's flow run in the worker image (``Dockerfile``: the project in ``/opt/mobitune``, a non-root
user) with the trials' local artifacts and torch's weight cache on a volume that outlives the container.
"""

from __future__ import annotations

from typing import Any

WORKER_IMAGE = "mobitune-worker:latest"
GPU_RESOURCE = "nvidia.com/gpu"
ARTIFACTS_DIR = "/opt/mobitune/artifacts"  # the image's WORKDIR/artifacts: prepared data, warmups, checkpoints
CACHE_DIR = "/home/mobitune/.cache"  # torch's weight cache, for the mobitune user


def _variable(kind: str, default: Any, title: str, description: str) -> dict[str, Any]:
    return {"type": kind, "default": default, "title": title, "description": description}


def docker_template() -> dict[str, Any]:
    """Containers on the host's network (the server and S3 as the worker sees them), one GPU each through
    ``container_create_kwargs.device_requests`` (``docker run --gpus``; ``{}`` on a machine without one), the
    artifacts and caches on named volumes."""
    from prefect_docker.worker import DockerWorker

    template = DockerWorker.get_default_base_job_template()
    variables = template["variables"]["properties"]
    variables["image"]["default"] = WORKER_IMAGE
    variables["image_pull_policy"]["default"] = "IfNotPresent"  # a locally built image is not in any registry
    variables["network_mode"]["default"] = "host"
    variables["volumes"]["default"] = [f"mobitune-artifacts:{ARTIFACTS_DIR}", f"mobitune-cache:{CACHE_DIR}"]
    variables["container_create_kwargs"]["default"] = {
        "device_requests": [{"driver": "nvidia", "count": 1, "capabilities": [["gpu"]]}]
    }
    return template


def kubernetes_template() -> dict[str, Any]:
    """A Job whose container asks for ``gpus`` of ``nvidia.com/gpu`` in its limits, lands on GPU nodes
    (``node_selector``, ``tolerations``), takes its S3 keys from the Kubernetes secret ``s3_secret`` (never as
    plain values in the template or the flow run) and keeps the artifacts and caches on the claim
    ``cache_claim``."""
    from prefect_kubernetes.worker import KubernetesWorker

    template = KubernetesWorker.get_default_base_job_template()
    variables = template["variables"]["properties"]
    variables["image"]["default"] = WORKER_IMAGE
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
        "s3_secret": _variable(
            "string",
            "mobitune-s3",
            "S3 secret",
            "Kubernetes secret whose keys become the container's environment: AWS_ACCESS_KEY_ID, "
            "AWS_SECRET_ACCESS_KEY (and AWS_ENDPOINT_URL, if not in env)",
        ),
        "cache_claim": _variable(
            "string", "mobitune-cache", "Cache claim", "PersistentVolumeClaim for prepared data, checkpoints, weights"
        ),
    }
    pod = template["job_configuration"]["job_manifest"]["spec"]["template"]["spec"]
    container = pod["containers"][0]
    container["resources"]["limits"][GPU_RESOURCE] = "{{ gpus }}"
    container["envFrom"] = [{"secretRef": {"name": "{{ s3_secret }}"}}]
    container["volumeMounts"] = [
        {"name": "cache", "mountPath": ARTIFACTS_DIR, "subPath": "artifacts"},
        {"name": "cache", "mountPath": CACHE_DIR, "subPath": "cache"},
    ]
    pod["volumes"] = [{"name": "cache", "persistentVolumeClaim": {"claimName": "{{ cache_claim }}"}}]
    pod["nodeSelector"] = "{{ node_selector }}"
    pod["tolerations"] = "{{ tolerations }}"
    return template


POOL_TEMPLATES = {"docker": docker_template, "kubernetes": kubernetes_template}
