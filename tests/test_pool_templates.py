"""The gpu pool's docker and kubernetes templates, rendered for a slot run by the workers' own code
(prefect-docker, prefect-kubernetes) as their workers do before they start a container or a Job. No cluster
here: what Kubernetes would run is the manifest, checked field by field, and against the rules of Kubernetes'
*restricted* Pod Security Standard (https://kubernetes.io/docs/concepts/security/pod-security-standards/)."""

from __future__ import annotations

import asyncio
import json
import re
import uuid
from typing import Any

import pytest
from helpers import ROOT
from prefect.client.schemas.objects import Flow, FlowRun
from prefect.settings import PREFECT_API_AUTH_STRING, PREFECT_API_URL, temporary_settings
from prefect.utilities.schema_tools import ValidationError, validate

from mobitune.errors import MobituneError
from mobitune.orchestration.pool_templates import (
    ARTIFACTS_DIR,
    CACHE_DIR,
    GPU_RESOURCE,
    PREFECT_HOME,
    docker_template,
    kubernetes_template,
)

API = "http://prefect.mobitune.svc:4200/api"
IMAGE = "registry.example.org/mobitune-worker:1.0"


def slot_run() -> tuple[FlowRun, Flow]:
    flow = Flow(id=uuid.uuid4(), name="trial-slot")
    return FlowRun(id=uuid.uuid4(), flow_id=flow.id, name="sweep-x-slot-0"), flow


def rendered_job(template: dict[str, Any], values: dict[str, Any]) -> dict[str, Any]:
    """The Job manifest the Kubernetes worker would create for a slot run with job variables ``values``."""
    from prefect_kubernetes.worker import KubernetesWorkerJobConfiguration

    with temporary_settings({PREFECT_API_URL: API}):
        config = asyncio.run(KubernetesWorkerJobConfiguration.from_template_and_values(template, values))
        config.prepare_for_flow_run(*slot_run())
    return config.job_manifest


def restricted_profile_violations(pod: dict[str, Any]) -> list[str]:
    """Each rule of the *restricted* Pod Security Standard (with the baseline rules it includes) that applies to
    a Job's pod spec and that ``pod`` breaks, named as the standard names it."""
    containers = [*pod.get("containers", []), *pod.get("initContainers", []), *pod.get("ephemeralContainers", [])]
    pod_context = pod.get("securityContext") or {}
    contexts = [container.get("securityContext") or {} for container in containers]
    allowed_volumes = {"configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "persistentVolumeClaim"}
    allowed_volumes |= {"projected", "secret"}
    safe_sysctls = {"kernel.shm_rmid_forced", "net.ipv4.ip_local_port_range", "net.ipv4.ip_unprivileged_port_start"}
    safe_sysctls |= {"net.ipv4.tcp_syncookies", "net.ipv4.ping_group_range", "net.ipv4.ip_local_reserved_ports"}
    safe_sysctls |= {"net.ipv4.tcp_keepalive_time", "net.ipv4.tcp_fin_timeout", "net.ipv4.tcp_keepalive_intvl"}
    safe_sysctls |= {"net.ipv4.tcp_keepalive_probes"}

    def each_or_pod(key: str, ok: Any) -> bool:
        """The pod's setting of ``key`` passes ``ok`` and no container overrides it, or every container's does."""
        if ok(pod_context.get(key)):
            return all(key not in context or ok(context[key]) for context in contexts)
        return all(ok(context.get(key)) for context in contexts)

    rules = {
        "HostProcess: windowsOptions.hostProcess must not be true": all(
            not (context.get("windowsOptions") or {}).get("hostProcess") for context in [pod_context, *contexts]
        ),
        "Host Namespaces: hostNetwork, hostPID and hostIPC must not be true": not any(
            pod.get(key) for key in ("hostNetwork", "hostPID", "hostIPC")
        ),
        "Privileged Containers: privileged must not be true": not any(c.get("privileged") for c in contexts),
        "HostPath Volumes: none": not any("hostPath" in volume for volume in pod.get("volumes", [])),
        "Host Ports: none": not any(
            port.get("hostPort") for container in containers for port in container.get("ports", [])
        ),
        "AppArmor: unset, RuntimeDefault or Localhost": all(
            (context.get("appArmorProfile") or {}).get("type", "RuntimeDefault") in ("RuntimeDefault", "Localhost")
            for context in [pod_context, *contexts]
        ),
        "SELinux: no custom user or role, type among the container types": all(
            not {"user", "role"} & set(context.get("seLinuxOptions") or {})
            and (context.get("seLinuxOptions") or {}).get("type", "container_t")
            in ("container_t", "container_init_t", "container_kvm_t", "container_engine_t")
            for context in [pod_context, *contexts]
        ),
        "/proc Mount Type: Default": all(context.get("procMount", "Default") == "Default" for context in contexts),
        "Sysctls: only the safe set": all(sysctl["name"] in safe_sysctls for sysctl in pod_context.get("sysctls", [])),
        "Volume Types: only configMap, csi, downwardAPI, emptyDir, ephemeral, persistentVolumeClaim, projected, "
        "secret": all(set(volume) - {"name"} <= allowed_volumes for volume in pod.get("volumes", [])),
        "Privilege Escalation: allowPrivilegeEscalation must be false": all(
            context.get("allowPrivilegeEscalation") is False for context in contexts
        ),
        "Running as Non-root: runAsNonRoot must be true (pod, or every container)": each_or_pod(
            "runAsNonRoot", lambda value: value is True
        ),
        "Running as Non-root user: runAsUser must not be 0": all(
            context.get("runAsUser") != 0 for context in [pod_context, *contexts]
        ),
        "Seccomp: RuntimeDefault or Localhost (pod, or every container)": each_or_pod(
            "seccompProfile", lambda value: (value or {}).get("type") in ("RuntimeDefault", "Localhost")
        ),
        "Capabilities: drop ALL, add nothing but NET_BIND_SERVICE": all(
            "ALL" in (context.get("capabilities") or {}).get("drop", [])
            and set((context.get("capabilities") or {}).get("add", [])) <= {"NET_BIND_SERVICE"}
            for context in contexts
        ),
    }
    return [rule for rule, holds in rules.items() if not holds]


def dockerfile_uid() -> int:
    """The uid of the worker image's non-root user, as the Dockerfile creates it."""
    return int(re.search(r"useradd\b[^\n]*--uid (\d+)", (ROOT / "Dockerfile").read_text()).group(1))


def test_prefects_own_kubernetes_job_breaks_the_restricted_profile_so_the_check_can_fail() -> None:
    from prefect_kubernetes.worker import KubernetesWorker

    pod = rendered_job(KubernetesWorker.get_default_base_job_template(), {})["spec"]["template"]["spec"]
    broken = restricted_profile_violations(pod)
    assert any(rule.startswith("Running as Non-root:") for rule in broken), broken
    assert any(rule.startswith("Capabilities:") for rule in broken), broken
    assert any(rule.startswith("Seccomp:") for rule in broken), broken
    assert any(rule.startswith("Privilege Escalation:") for rule in broken), broken
    pod["hostNetwork"] = True
    pod["volumes"] = [{"name": "root", "hostPath": {"path": "/"}}]
    broken = restricted_profile_violations(pod)
    assert any(rule.startswith("Host Namespaces:") for rule in broken), broken
    assert any(rule.startswith("HostPath Volumes:") for rule in broken), broken
    assert any(rule.startswith("Volume Types:") for rule in broken), broken


def test_the_kubernetes_job_passes_the_restricted_profile_with_a_read_only_root_and_no_token() -> None:
    job = rendered_job(kubernetes_template(), {"image": IMAGE})
    pod = job["spec"]["template"]["spec"]
    assert restricted_profile_violations(pod) == []
    (container,) = pod["containers"]
    assert pod["securityContext"]["runAsUser"] == dockerfile_uid(), "the image's own non-root user"
    assert pod["automountServiceAccountToken"] is False
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    mounted = {mount["mountPath"] for mount in container["volumeMounts"]}
    assert mounted == {ARTIFACTS_DIR, CACHE_DIR, PREFECT_HOME, "/tmp"}, "every path a slot writes is a volume"
    env = {item["name"]: item.get("value") for item in container["env"]}
    assert env["PREFECT_HOME"] == PREFECT_HOME, "the mounted one, not the worker's own (this test's)"
    volumes = {volume["name"]: volume for volume in pod["volumes"]}
    assert {mount["name"] for mount in container["volumeMounts"]} == set(volumes)
    assert volumes["tmp"] == {"name": "tmp", "emptyDir": {}}


def test_a_run_cannot_choose_the_secret_or_the_claim_setup_fixed() -> None:
    """``mobitune setup --s3-secret --cache-claim`` writes the names into the template. A run's job variables
    naming others are refused by the check Prefect's server makes of every deployment's and flow run's job
    variables, and were they to reach the worker, its rendering ignores them."""
    template = kubernetes_template(s3_secret="team-s3", cache_claim="team-cache")
    override = {"s3_secret": "cluster-admin-token", "cache_claim": "another-teams-data"}
    for name, value in override.items():
        with pytest.raises(ValidationError, match=f"'{name}' was unexpected"):
            validate({name: value}, template["variables"], raise_on_error=True, ignore_required=True)
    assert validate({"gpus": 2}, template["variables"], ignore_required=True) == [], "declared variables pass"
    pod = rendered_job(template, override)["spec"]["template"]["spec"]
    assert pod["containers"][0]["envFrom"] == [{"secretRef": {"name": "team-s3"}}]
    claims = [volume["persistentVolumeClaim"] for volume in pod["volumes"] if "persistentVolumeClaim" in volume]
    assert claims == [{"claimName": "team-cache"}]
    assert "cluster-admin-token" not in json.dumps(pod) and "another-teams-data" not in json.dumps(pod)


@pytest.mark.parametrize("name", ["{{ image }}", "Team S3", "-s3", "s3/../x", "a" * 254, ""])
def test_setup_refuses_a_secret_or_claim_name_kubernetes_would_not_take(name: str) -> None:
    with pytest.raises(MobituneError, match="--s3-secret"):
        kubernetes_template(s3_secret=name)
    with pytest.raises(MobituneError, match="--cache-claim"):
        kubernetes_template(cache_claim=name)


def test_the_kubernetes_job_asks_for_a_gpu_runs_the_image_and_keeps_s3_keys_in_a_secret() -> None:
    values = {"image": IMAGE, "env": {"AWS_ENDPOINT_URL": "http://minio.mobitune.svc:9000"}}
    pod = rendered_job(kubernetes_template(), values)["spec"]["template"]["spec"]
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
    assert pod["volumes"][0] == {"name": "cache", "persistentVolumeClaim": {"claimName": "mobitune-cache"}}
    assert {mount["mountPath"] for mount in container["volumeMounts"]} >= {ARTIFACTS_DIR}


def test_a_job_variable_changes_the_gpu_count_and_the_nodes() -> None:
    values = {"gpus": 2, "node_selector": {"gpu": "h200"}, "tolerations": []}
    pod = rendered_job(kubernetes_template(), values)["spec"]["template"]["spec"]
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


def test_a_slot_container_gets_the_api_credential_from_the_worker_not_from_the_template() -> None:
    """The docker worker hands each container the Prefect settings it was started with, the credential among
    them: the pool's template (stored in Prefect's database, shown in its UI) holds none."""
    from prefect_docker.worker import DockerWorkerJobConfiguration

    credential = "mobitune:worker-credential"
    settings = {PREFECT_API_URL: "http://127.0.0.1:4200/api", PREFECT_API_AUTH_STRING: credential}
    with temporary_settings(settings):
        template = docker_template()
        config = asyncio.run(DockerWorkerJobConfiguration.from_template_and_values(template, {}))
        config.prepare_for_flow_run(*slot_run())
    assert config.env["PREFECT_API_AUTH_STRING"] == credential
    assert credential not in json.dumps(template) and "AUTH" not in json.dumps(template)
