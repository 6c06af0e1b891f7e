"""The gpu pool's docker and kubernetes templates, rendered for a slot run by the workers' own code
(prefect-docker, prefect-kubernetes) as their workers do before they start a container or a Job. No cluster
here: what Kubernetes would run is the manifest, checked field by field."""

from __future__ import annotations

import asyncio
import uuid

from prefect.client.schemas.objects import Flow, FlowRun
from prefect.settings import PREFECT_API_URL, temporary_settings

from mobitune.orchestration.pool_templates import ARTIFACTS_DIR, GPU_RESOURCE, docker_template, kubernetes_template

API = "http://prefect.mobitune.svc:4200/api"
IMAGE = "registry.example.org/mobitune-worker:1.0"


def slot_run() -> tuple[FlowRun, Flow]:
    flow = Flow(id=uuid.uuid4(), name="trial-slot")
    return FlowRun(id=uuid.uuid4(), flow_id=flow.id, name="sweep-x-slot-0"), flow


def test_the_kubernetes_job_asks_for_a_gpu_runs_the_image_and_keeps_s3_keys_in_a_secret() -> None:
    from prefect_kubernetes.worker import KubernetesWorkerJobConfiguration

    values = {"image": IMAGE, "env": {"AWS_ENDPOINT_URL": "http://minio.mobitune.svc:9000"}}
    with temporary_settings({PREFECT_API_URL: API}):
        config = asyncio.run(KubernetesWorkerJobConfiguration.from_template_and_values(kubernetes_template(), values))
        config.prepare_for_flow_run(*slot_run())
    pod = config.job_manifest["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["resources"]["limits"][GPU_RESOURCE] == 1
    assert container["image"] == IMAGE
    assert container["args"] == ["prefect", "flow-run", "execute"]
    env = {item["name"]: item.get("value") for item in container["env"]}
    assert env["PREFECT_API_URL"] == API and env["AWS_ENDPOINT_URL"] == "http://minio.mobitune.svc:9000"
    assert not {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"} & set(env), "keys come from the secret only"
    assert container["envFrom"] == [{"secretRef": {"name": "mobitune-s3"}}]
    assert pod["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert pod["tolerations"] == [{"key": GPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"}]
    assert pod["volumes"] == [{"name": "cache", "persistentVolumeClaim": {"claimName": "mobitune-cache"}}]
    assert {mount["mountPath"] for mount in container["volumeMounts"]} >= {ARTIFACTS_DIR}


def test_a_job_variable_changes_the_gpu_count_and_the_nodes() -> None:
    from prefect_kubernetes.worker import KubernetesWorkerJobConfiguration

    values = {"gpus": 2, "node_selector": {"gpu": "h200"}, "tolerations": []}
    with temporary_settings({PREFECT_API_URL: API}):
        config = asyncio.run(KubernetesWorkerJobConfiguration.from_template_and_values(kubernetes_template(), values))
        config.prepare_for_flow_run(*slot_run())
    pod = config.job_manifest["spec"]["template"]["spec"]
    assert pod["containers"][0]["resources"]["limits"][GPU_RESOURCE] == 2 and pod["nodeSelector"] == {"gpu": "h200"}


def test_the_docker_container_runs_the_image_on_the_host_network_with_one_gpu() -> None:
    from prefect_docker.worker import DockerWorkerJobConfiguration

    with temporary_settings({PREFECT_API_URL: "http://127.0.0.1:4200/api"}):
        config = asyncio.run(DockerWorkerJobConfiguration.from_template_and_values(docker_template(), {}))
        config.prepare_for_flow_run(*slot_run())
    assert config.image == "mobitune-worker:latest" and config.network_mode == "host"
    assert config.container_create_kwargs["device_requests"] == [
        {"driver": "nvidia", "count": 1, "capabilities": [["gpu"]]}
    ]
    assert f"mobitune-artifacts:{ARTIFACTS_DIR}" in config.volumes
    assert config.env["PREFECT_API_URL"] == "http://127.0.0.1:4200/api"
