"""The gpu pool's docker and kubernetes templates, rendered for a slot run by the workers' own code
(prefect-docker, prefect-kubernetes) as their workers do before they start a container or a Job. No cluster
here: what Kubernetes would run is the manifest, checked field by field, and against the rules of Kubernetes'
*restricted* Pod Security Standard (https://kubernetes.io/docs/concepts/security/pod-security-standards/).
No Docker engine either: what it would be asked is the body of the container's create request, as the docker
worker makes it for each slot run a sweep asks for; on a multi-GPU machine each slot container gets its GPU by id.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import uuid
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from helpers import ROOT
from prefect.client.schemas.objects import Flow, FlowRun, WorkPool
from prefect.client.schemas.responses import DeploymentResponse
from prefect.settings import PREFECT_API_AUTH_STRING, PREFECT_API_URL, temporary_settings
from prefect.states import Scheduled
from prefect.utilities.schema_tools import ValidationError, validate

from mobitune.cli import main
from mobitune.errors import MobituneError
from mobitune.orchestration.pool_templates import (
    ARTIFACTS_DIR,
    CACHE_DIR,
    GPU_RESOURCE,
    PREFECT_HOME,
    GpuPinning,
    docker_template,
    kubernetes_template,
)
from mobitune.orchestration.server_setup import _put_gpu_queues
from mobitune.orchestration.slots import SlotRunner
from mobitune.orchestration.trial_flow import trial_slot
from mobitune.params import Params
from mobitune.provenance import HOST_GPUS_ENV, provenance
from mobitune.sweep.trial_files import TrialRequest

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
        {"driver": "nvidia", "device_ids": ["0"], "capabilities": [["gpu"]]}
    ], "GPU 0 by its id where a run names none: a count would be GPU 0 for every container of the machine"
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


class DockerPoolServer:
    """The Prefect server as a sweep's :class:`SlotRunner` and a docker worker read it: pool ``gpu`` of type docker
    with work queues ``queues`` (``mobitune setup --pool-type docker --gpus N`` makes gpu-0 ... gpu-<N-1>), the
    deployment ``trial-slot/container`` with job variables ``deployment_variables``, four workers online. Every
    slot run asked for stays queued: what is checked is what it asks of the worker."""

    def __init__(self, template: dict[str, Any], queues: list[str], deployment_variables: dict[str, Any]) -> None:
        self.pool = WorkPool(name="gpu", type="docker", base_job_template=template)
        self.flow = Flow(id=uuid.uuid4(), name="trial-slot")
        self.deployment = DeploymentResponse(
            id=uuid.uuid4(),
            name="container",
            flow_id=self.flow.id,
            work_pool_name="gpu",
            job_variables=deployment_variables,
        )
        self.queues = queues
        self.runs: list[FlowRun] = []

    # what the sweep reads (a synchronous client)
    def read_deployment_by_name(self, name: str) -> DeploymentResponse:
        return self.deployment

    def read_work_pool(self, name: str) -> WorkPool:
        return self.pool

    def read_work_queues(self, work_pool_name: str) -> list[Any]:
        return [SimpleNamespace(name=name) for name in self.queues]

    def read_workers_for_work_pool(self, pool: str) -> list[Any]:
        return [SimpleNamespace(status="ONLINE")] * 4

    def read_flow_runs(self, flow_run_filter: Any, limit: int) -> list[FlowRun]:
        return [run for run in self.runs if run.id in flow_run_filter.id.any_][:limit]

    # Prefect's run_deployment, as the sweep calls it
    def launch(self, deployment: str, parameters: dict, timeout: int, flow_run_name: str, **options: Any) -> FlowRun:
        run = FlowRun(
            id=uuid.uuid4(),
            flow_id=self.flow.id,
            deployment_id=self.deployment.id,
            name=flow_run_name,
            parameters=parameters,
            work_queue_name=options.get("work_queue_name"),
            job_variables=options.get("job_variables") or {},
            state=Scheduled(),
        )
        self.runs.append(run)
        return run

    # what the docker worker reads of a run (an asynchronous client)
    async def read_flow(self, flow_id: uuid.UUID) -> Flow:
        return self.flow


def slot_runs_of_a_sweep(server: DockerPoolServer, root: Path, slots: int) -> list[FlowRun]:
    """The slot runs a workers sweep of ``slots`` trials asks for at its first look, all at once."""
    sweep = SimpleNamespace(sweep_id="s1", trial_store=None, root=root, sweep_dir=root / "s1")
    runner = SlotRunner(sweep, "trial-slot/container", server, 300, slots, logging.getLogger("test"), server.launch)
    jobs = [runner.start(TrialRequest(sweep_id="s1", trial_id=f"t{i}", params=Params())) for i in range(slots)]
    runner.outcome(jobs[0])
    return server.runs


def container_create_body(server: DockerPoolServer, run: FlowRun) -> dict[str, Any]:
    """What the docker worker sends the Docker engine (``POST /containers/create``) to start slot run ``run``: the
    job configuration as the worker resolves it (the pool's template, the deployment's job variables and the run's
    over them), the container settings prefect-docker builds from it, as docker-py sends them. No engine here:
    the request is kept, not sent."""
    from prefect_docker.worker import DockerWorker, DockerWorkerJobConfiguration

    import docker

    class Sent(Exception):
        pass

    bodies = []

    def post_json(url: str, data: dict[str, Any], params: Any = None) -> None:
        bodies.append(data)
        raise Sent

    engine = docker.DockerClient(base_url="tcp://127.0.0.1:9", version="1.47")
    engine.api._post_json = post_json
    with temporary_settings({PREFECT_API_URL: "http://prefect.example.org:4200/api"}):
        config = asyncio.run(
            DockerWorkerJobConfiguration.resolve_for_flow_run(
                run, client=server, work_pool=server.pool, worker_name="gpu-box", deployment=server.deployment
            )
        )
        worker = DockerWorker(work_pool_name="gpu")
        with pytest.raises(Sent):
            worker._create_container(engine, **worker._build_container_settings(engine, config))
    return bodies[0]


def test_the_slot_containers_of_a_sweep_on_two_gpus_take_gpus_0_1_0_1_by_id(tmp_path: Path) -> None:
    """Four slots of a sweep on a docker pool whose machines have two GPUs (queues gpu-0 and gpu-1): each slot run
    goes to one GPU's queue, and its container, as the docker worker creates it, asks Docker for that GPU by id,
    never by a count (which Docker makes GPU 0 for every container). What else the deployment asks of its
    containers stays, and each slot is told its GPU for its trials' provenance."""
    deployment_variables = {"container_create_kwargs": {"shm_size": "2g"}}
    server = DockerPoolServer(docker_template(gpus=2), ["default", "gpu-0", "gpu-1"], deployment_variables)
    runs = slot_runs_of_a_sweep(server, tmp_path, slots=4)
    assert [run.work_queue_name for run in runs] == ["gpu-0", "gpu-1", "gpu-0", "gpu-1"]
    assert [run.parameters["machine_gpu"] for run in runs] == [0, 1, 0, 1]
    host_configs = [container_create_body(server, run)["HostConfig"] for run in runs]
    requests = [config["DeviceRequests"] for config in host_configs]
    assert requests == [
        [{"Driver": "nvidia", "Count": 0, "DeviceIDs": [gpu], "Capabilities": [["gpu"]], "Options": {}}]
        for gpu in ("0", "1", "0", "1")
    ]
    assert all(config["ShmSize"] == 2 * 2**30 and config["NetworkMode"] == "host" for config in host_configs)


def test_a_docker_pool_of_machines_without_a_gpu_asks_for_none(tmp_path: Path) -> None:
    """``mobitune setup --pool-type docker --gpus 0``: no GPU queue, and a slot container asks for no device."""
    server = DockerPoolServer(docker_template(gpus=0), ["default"], {})
    runs = slot_runs_of_a_sweep(server, tmp_path, slots=2)
    assert [(run.work_queue_name, run.job_variables) for run in runs] == [(None, {}), (None, {})]
    assert all("machine_gpu" not in run.parameters for run in runs)
    assert all("DeviceRequests" not in container_create_body(server, run)["HostConfig"] for run in runs)


@pytest.mark.parametrize(
    ("live_slots", "gpu"),
    [([], 0), ([0], 1), ([0, 1, 2, 3], 0), ([0, 1, 3, 0, 1, 3], 2), ([1, None], 0)],
    ids=["first", "second", "round again", "a lost slot's GPU", "an unpinned slot counts for none"],
)
def test_a_new_slot_goes_to_the_gpu_with_fewest_live_slots(live_slots: list[int | None], gpu: int) -> None:
    assert GpuPinning(gpus=(0, 1, 2, 3), create_kwargs={}).next_gpu(live_slots) == gpu


class QueueServer:
    """The work queues of pool gpu, as ``mobitune setup`` reads and changes them."""

    def __init__(self, names: list[str]) -> None:
        self.queues = {name: SimpleNamespace(name=name, id=uuid.uuid4()) for name in names}

    def read_work_queues(self, work_pool_name: str) -> list[Any]:
        return list(self.queues.values())

    def create_work_queue(self, name: str, work_pool_name: str, description: str) -> None:
        self.queues[name] = SimpleNamespace(name=name, id=uuid.uuid4())

    def delete_work_queue_by_id(self, queue_id: uuid.UUID) -> None:
        self.queues = {name: queue for name, queue in self.queues.items() if queue.id != queue_id}


def test_setup_makes_a_queue_per_gpu_and_removes_those_beyond() -> None:
    server = QueueServer(["default", "gpu-1", "gpu-7", "gpu-fast"])
    said = _put_gpu_queues(server, "gpu", 4)
    assert set(server.queues) == {"default", "gpu-0", "gpu-1", "gpu-2", "gpu-3", "gpu-fast"}
    assert "gpu-0, gpu-1, gpu-2, gpu-3" in said and "--type docker --work-queue gpu-<index>" in said
    _put_gpu_queues(server, "gpu", 0)
    assert set(server.queues) == {"default", "gpu-fast"}, "machines without a GPU: no GPU queue, nothing pinned"


@pytest.mark.parametrize(
    ("arguments", "refusal"),
    [
        (["--gpus", "2"], "--gpus: only for --pool-type docker"),
        (["--pool-type", "kubernetes", "--gpus", "2"], "--gpus: only for --pool-type docker"),
        (["--pool-type", "docker", "--gpus", "-1"], "--gpus must be 0 or more, got -1"),
    ],
)
def test_setup_refuses_gpus_it_cannot_pin(
    arguments: list[str], refusal: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit):
        main(["setup", *arguments])
    assert refusal in capsys.readouterr().err


@pytest.mark.parametrize(
    ("cuda_visible", "host_gpus", "local", "machine"),
    [
        (None, None, 1, 1),
        ("1", None, 0, 1),
        (None, "1", 0, 1),
        ("1", "2,3", 0, 3),
        ("GPU-5b0c", None, 0, "GPU-5b0c"),
        ("", "", 1, 1),
    ],
    ids=["as CUDA numbers it", "a worker under CUDA_VISIBLE_DEVICES", "a container", "both", "by UUID", "empty"],
)
def test_provenance_records_the_machines_index_of_the_gpu(
    cuda_visible: str | None, host_gpus: str | None, local: int, machine: int | str, monkeypatch: pytest.MonkeyPatch
) -> None:
    for variable, value in (("CUDA_VISIBLE_DEVICES", cuda_visible), (HOST_GPUS_ENV, host_gpus)):
        if value is None:
            monkeypatch.delenv(variable, raising=False)
        else:
            monkeypatch.setenv(variable, value)
    recorded = provenance(device="NVIDIA H100 80GB HBM3", device_index=local)
    assert recorded["device"] == "NVIDIA H100 80GB HBM3" and recorded["device_index"] == machine
    assert provenance(device="cpu")["device_index"] is None


def test_a_slot_pinned_to_gpu_1_records_gpu_1_for_its_trials(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The slot run's ``machine_gpu`` (the sweep's pinning) reaches the provenance of the trials it runs, for
    which CUDA calls the container's one GPU 0."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv(HOST_GPUS_ENV, "the slot's own")  # restored after the test
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    assert trial_slot.fn(sweep_id="s1", slot="s1-slot-1", idle_timeout_s=0, machine_gpu=1) == 0
    assert provenance(device="NVIDIA H100 80GB HBM3", device_index=0)["device_index"] == 1


def test_a_trial_that_does_not_fit_its_pinned_gpu_is_refused_naming_that_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    """Two slot containers on GPU 1 of the machine: the second's trial is checked against what the first left free
    of the whole GPU, and refused naming the machine's GPU 1, not the cuda:0 its container sees."""
    import numpy as np
    import torch

    from mobitune.training.data import Dataset, Split
    from mobitune.training.memory import GIB, DeviceMemoryError, check_trial_fits

    monkeypatch.setenv(HOST_GPUS_ENV, "1")
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device: (4 * GIB, 80 * GIB))  # the first slot holds 76
    monkeypatch.setattr(torch.cuda, "memory_reserved", lambda device: 0)
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda device: 0)
    images = np.zeros((10, 3, 32, 32), dtype=np.uint8)
    data = Dataset(Split(images, np.zeros(10)), Split(images, np.zeros(10)), list("abcdefghij"), {})
    check_trial_fits(Params().override(["model.image_size=32", "batch_size=32"]), torch.device("cuda:0"), data)
    refused = r"cuda:0 \(GPU 1 of the machine\): 1 trial\(s\) of about [\d.]+ GiB each need .* 4.0 GiB is free there"
    with pytest.raises(DeviceMemoryError, match=refused + r".* docker pool .* queue gpu-<index>"):
        check_trial_fits(Params().override(["model.image_size=224"]), torch.device("cuda:0"), data)
