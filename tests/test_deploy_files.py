"""Dockerfile, docker-compose.yml and prefect.yaml, read without an engine (the fast tier): what they reference
exists and they agree with each other. tests/containers/ builds and runs them."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import yaml
from helpers import ROOT

from mobitune.orchestration.pool_templates import ARTIFACTS_DIR, CACHE_DIR
from mobitune.provenance import HOST_GPUS_ENV


def prefect_config() -> dict:
    return yaml.safe_load((ROOT / "prefect.yaml").read_text())


def test_prefect_yaml_entrypoints_load_the_named_flows() -> None:
    from prefect.flows import load_flow_from_entrypoint

    deployments = {d["name"]: d for d in prefect_config()["deployments"]}
    assert deployments["gpu"]["work_pool"]["name"] == "gpu"
    for deployment in deployments.values():
        path, _, name = deployment["entrypoint"].partition(":")
        assert (ROOT / path).exists()
        flow = load_flow_from_entrypoint(str(ROOT / deployment["entrypoint"]))
        assert flow.fn.__name__ == name
    sweep = deployments["nightly"]
    assert sweep["parameters"]["deployment"] == "trial-slot/gpu" and sweep["parameters"]["backend"] == "workers"
    assert sweep["schedules"][0]["cron"] and "active" in sweep["schedules"][0]


def test_dockerfile_copies_what_exists_and_starts_a_gpu_worker() -> None:
    text = (ROOT / "Dockerfile").read_text()
    assert re.search(r"^ARG BASE=pytorch/pytorch:2\.14\.1-cuda[\d.]+-cudnn\d+-runtime$", text, re.M)
    for line in re.findall(r"^COPY (.+)$", text, re.M):
        *sources, _target = (word for word in line.split() if not word.startswith("--chown"))
        if sources[0].startswith("--from="):
            continue  # from the install stage, not the context
        for source in sources:
            assert (ROOT / source).exists(), source
    cmd = yaml.safe_load(re.search(r"^CMD (.+)$", text, re.M).group(1))
    assert cmd[:3] == ["prefect", "worker", "start"]
    assert cmd[cmd.index("--pool") + 1] == "gpu" and cmd[cmd.index("--limit") + 1] == "1"
    assert "PREFECT_FLOWS_HEARTBEAT_FREQUENCY=30" in text, "the worker's flow runs send heartbeats"
    assert re.search(r"^USER mobitune$", text, re.M), "not root"
    context = (ROOT / ".dockerignore").read_text()
    assert all(
        f"!{source}" in context
        for line in re.findall(r"^COPY (?!--from)(.+)$", text, re.M)
        for source in line.split()[:-1]
        if not source.startswith("--")
    ), "the context holds what it copies"


def test_compose_runs_server_minio_and_workers_for_the_deployed_pools() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = compose["services"]
    assert {"prefect", "minio", "worker-gpu0", "sweeps"} <= set(services)
    pools = {d["work_pool"]["name"] for d in prefect_config()["deployments"]}
    served = {"gpu"}  # the image's default command
    for service in services.values():
        command = service.get("command")
        if isinstance(command, list) and command[:3] == ["prefect", "worker", "start"]:
            served.add(command[command.index("--pool") + 1])
    assert pools <= served
    for service in services.values():
        if service.get("build") == ".":
            assert service["environment"]["PREFECT_API_URL"].endswith(":4200/api")
    assert all(p.startswith("127.0.0.1:") for s in services.values() for p in s.get("ports", []))
    assert "mobitune setup && prefect deploy --all" in services["deploy"]["command"][-1]
    images = [service["image"] for service in services.values() if "image" in service]
    assert images and all(":" in image and not image.endswith(":latest") for image in images), images
    database = services["prefect"]["environment"]["PREFECT_API_DATABASE_CONNECTION_URL"]
    assert database.startswith("postgresql+asyncpg://") and "postgres" in services


def test_compose_runs_a_worker_per_gpu_each_given_its_own_and_sharing_the_caches() -> None:
    """One GPU worker service per GPU, each given its GPU by id (a count of 1 would be GPU 0 for every one), told
    that GPU's index for its trials' provenance, all on the same volumes: the prepared data, the warmups and
    torch's weights are made once per machine."""
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    reserved = {
        name: service["deploy"]["resources"]["reservations"]["devices"]
        for name, service in compose["services"].items()
        if "deploy" in service
    }
    assert reserved == {
        f"worker-gpu{index}": [{"driver": "nvidia", "device_ids": [str(index)], "capabilities": ["gpu"]}]
        for index in (0, 1)
    }
    workers = [compose["services"][name] for name in reserved]
    assert [worker["environment"][HOST_GPUS_ENV] for worker in workers] == ["0", "1"]
    assert all(worker["build"] == "." and "command" not in worker for worker in workers), "the image's GPU worker"
    shared = [f"mobitune-artifacts:{ARTIFACTS_DIR}", f"mobitune-cache:{CACHE_DIR}"]
    assert all(worker["volumes"] == shared for worker in workers)
    assert {"mobitune-artifacts", "mobitune-cache"} <= set(compose["volumes"])
    assert "copy worker-gpu1 as worker-gpu2" in (ROOT / "docker-compose.yml").read_text(), "how to add a GPU"


def test_the_projects_own_configuration_turns_telemetry_off(tmp_path: Path) -> None:
    """Not only make's and the tests' environment: prefect.toml (read by every Prefect process started in the
    project root: `mobitune sweep` and its temporary server, `prefect server start`, workers) and .dvc/config turn
    telemetry off, so an offline run logs no "ERROR ... Failed to send telemetry". Outside the project it is on."""
    quiet = ("PREFECT_SERVER_ANALYTICS_ENABLED", "DO_NOT_TRACK", "DVC_NO_ANALYTICS")
    env = {key: value for key, value in os.environ.items() if key not in quiet}
    check = "from prefect.settings import get_current_settings; print(get_current_settings().server.analytics_enabled)"
    answers = [
        subprocess.run([sys.executable, "-c", check], cwd=cwd, env=env, capture_output=True, text=True).stdout.strip()
        for cwd in (ROOT, tmp_path)
    ]
    assert answers == ["False", "True"]
    dvc = subprocess.run(["dvc", "config", "core.analytics"], cwd=ROOT, env=env, capture_output=True, text=True)
    assert dvc.stdout.strip() == "false", dvc.stderr
