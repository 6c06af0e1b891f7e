"""The worker image in a real Docker engine (``make test-containers``: it starts the engine and builds the image
first; ``make test`` leaves these out). A sweep on a work pool of type docker: the docker worker starts one
container of the image per slot run, on the host's network, and a container killed mid-trial is a lost machine.
"""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest
import yaml
from helpers import ROOT, Postgres, PrefectServer, free_port, run, sweep_project
from published import METRICS, published_sweep

pytestmark = pytest.mark.containers

IMAGE = "mobitune-worker:test"  # built by make test-containers
VOLUMES = ("mobitune-test-artifacts", "mobitune-test-cache")
SWEEP = {"lr": [0.005, 0.001]}
THREE_EPOCHS = {"finetune.epochs": 3}


def docker(*args: str, check: bool = True) -> str:
    done = subprocess.run(["docker", *args], capture_output=True, text=True)
    if check and done.returncode != 0:
        raise AssertionError(f"docker {' '.join(args)}: {done.stderr}")
    return done.stdout


@pytest.fixture(scope="module")
def engine() -> Iterator[None]:
    """The engine answers and the image is built; every container of the image and the test volumes removed after."""
    if shutil.which("docker") is None or subprocess.run(["docker", "info"], capture_output=True).returncode:
        pytest.fail("no Docker engine answers: run `make test-containers` (it installs docker.io and starts dockerd)")
    if subprocess.run(["docker", "image", "inspect", IMAGE], capture_output=True).returncode:
        pytest.fail(f"no image {IMAGE}: `make test-containers` builds it")
    try:
        yield
    finally:
        containers = docker("ps", "-aq", "--filter", f"ancestor={IMAGE}").split()
        if containers:
            docker("rm", "-f", *containers, check=False)
        docker("volume", "rm", "-f", *VOLUMES, check=False)


def slot_containers() -> list[str]:
    return docker("ps", "-q", "--filter", f"ancestor={IMAGE}").split()


def test_a_docker_pool_runs_the_trials_in_containers_and_a_killed_one_is_a_lost_machine(
    engine: None, tmp_path: Path, cifar_archive: Path, http_root: tuple[str, Path], s3_server, postgres: Postgres
) -> None:
    """Two trials of three finetune epochs on pool gpu of type docker, one slot container each; once a trial has
    stored its first epoch's checkpoint, a slot container is killed. The worker reports its run Crashed, the
    trial goes to a new slot, and every trial ends ok once, each epoch trained once, with the local backend's
    metrics. The server keeps its state in PostgreSQL, as the compose stack's does: on SQLite, which answers 503
    (unlogged) while a writer holds its lock, one run in five saw 5xx answers for 300 s."""
    base_url, served = http_root
    shutil.copy(cifar_archive, served / "cifar-containers.tar.gz")  # a container cannot see this disk: it fetches
    source = f"{base_url}/cifar-containers.tar.gz"
    params = {**THREE_EPOCHS, "data.source": source}
    (tmp_path / "local").mkdir()
    reference = sweep_project(tmp_path / "local", cifar_archive, SWEEP, **params)  # the same sweep, local backend
    local = run(["mobitune", "sweep"], reference)
    local_results = pd.read_csv(Path(local.stdout.strip().splitlines()[-1]) / "results.csv")
    project = sweep_project(tmp_path, cifar_archive, SWEEP, **params)
    bucket = s3_server.bucket("containers")
    server = PrefectServer(tmp_path / "prefect-home")
    server.env["PREFECT_SERVER_DATABASE_CONNECTION_URL"] = postgres.url
    server_log = server.start_server(tmp_path)
    try:
        server.wait_healthy(timeout=120)
        env = {"PREFECT_API_URL": server.api, "AWS_ENDPOINT_URL": s3_server.endpoint}
        out = run(["mobitune", "setup", "--pool-type", "docker"], project, env_extra=env).stdout
        assert "work pool gpu: created (docker)" in out and "work pool sweeps: created (process)" in out
        template = json.loads(
            run(["prefect", "work-pool", "inspect", "gpu", "--output", "json"], project, env_extra=env).stdout
        )["base_job_template"]
        variables = template["variables"]["properties"]
        variables["image"]["default"] = IMAGE
        variables["container_create_kwargs"]["default"] = {}  # no GPU here: no device request
        variables["volumes"]["default"] = [
            f"{VOLUMES[0]}:/opt/mobitune/artifacts",
            f"{VOLUMES[1]}:/home/mobitune/.cache",
        ]
        variables["env"]["default"] = {key: value for key, value in server.env.items() if key.startswith("AWS_")} | {
            "AWS_ENDPOINT_URL": s3_server.endpoint
        }
        (tmp_path / "template.json").write_text(json.dumps(template))
        run(
            ["prefect", "work-pool", "update", "gpu", "--base-job-template", str(tmp_path / "template.json")],
            project,
            env_extra=env,
        )
        run(["prefect", "--no-prompt", "deploy", "--all"], project, env_extra=env)
        worker = server.start(
            "docker-worker", ["prefect", "worker", "start", "--pool", "gpu", "--type", "docker"], project, env
        )
        sweep = server.start_sweep(
            project, env, "--deployment", "trial-slot/container", "--set", f"storage.uri=s3://{bucket}/p"
        )
        checkpoints = {"Bucket": bucket, "Prefix": "p/checkpoints/"}
        deadline = time.monotonic() + 300
        while not s3_server.client().list_objects_v2(**checkpoints)["KeyCount"]:
            assert sweep.poll() is None and time.monotonic() < deadline, (project / "sweep.log").read_text()
            time.sleep(0.2)
        killed = slot_containers()[0]  # both slots are mid-trial: a trial's first of three epochs is stored
        docker("kill", killed)
        logs = (project / "sweep.log", worker, server_log)
        assert sweep.wait(timeout=600) == 0, "\n".join(log.read_text() for log in logs)
        crashed = {"flow_runs": {"state": {"type": {"any_": ["CRASHED"]}}}}
        lost = [run["name"] for run in server.api_post("flow_runs/filter", crashed) if "-slot-" in run["name"]]
        assert len(lost) == 1, f"the killed container's slot run, reported by its worker: {lost}"
    finally:
        server.stop()
    assert docker("inspect", "--format", "{{.State.ExitCode}}", killed).strip() == "137"
    sweep_id, tree = published_sweep(s3_server, bucket, "p")
    results = pd.read_csv(io.BytesIO(tree["results.csv"]))
    assert len(results) == 2 and set(results["status"]) == {"ok"} and results["trial_id"].is_unique
    sweep_dir = project / "artifacts" / "sweeps" / sweep_id
    for trial_id in results["trial_id"]:
        history = pd.read_csv(sweep_dir / "trials" / trial_id / "history.csv")
        assert history["step"].tolist() == [1, 2, 3, 4], f"{trial_id}: warmup, then each finetune epoch once"
    merged = results.merge(local_results, on="trial_id", suffixes=("_docker", "_local"))
    assert len(merged) == 2
    for metric in METRICS:
        assert (merged[f"{metric}_docker"] - merged[f"{metric}_local"]).abs().max() <= 1e-4, metric


def local_stack(tmp_path: Path, ports: dict[str, int]) -> Path:
    """docker-compose.yml as users get it, for this machine: each image swapped for a local build (the worker
    image; PostgreSQL and an S3 stand-in built from Debian and moto, docker/standins/), every service on the
    host's network at free ports, no GPU reservation (there is none here). Written beside the tests' files."""
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = compose["services"]
    database = f"postgresql+asyncpg://prefect:prefect@127.0.0.1:{ports['postgres']}/prefect"
    api, s3 = f"http://127.0.0.1:{ports['prefect']}/api", f"http://127.0.0.1:{ports['s3']}"
    for service in services.values():
        service.pop("ports", None)
        service.pop("deploy", None)
        service["network_mode"] = "host"
        if service.pop("build", None) is not None:
            service["image"] = IMAGE
        if "PREFECT_API_URL" in service.get("environment", {}):
            service["environment"] = {**service["environment"], "PREFECT_API_URL": api, "AWS_ENDPOINT_URL": s3}
    services["postgres"] |= {
        "image": "mobitune-postgres:test",
        "healthcheck": {
            "test": ["CMD-SHELL", f"pg_isready -h 127.0.0.1 -p {ports['postgres']} -U prefect"],
            "interval": "2s",
            "retries": 30,
        },
    }
    services["postgres"]["environment"] = {**services["postgres"]["environment"], "PGPORT": str(ports["postgres"])}
    services["prefect"] |= {
        "image": IMAGE,
        "command": f"prefect server start --host 127.0.0.1 --port {ports['prefect']}",
    }
    services["prefect"]["environment"] = {
        **services["prefect"]["environment"],
        "PREFECT_API_DATABASE_CONNECTION_URL": database,
    }
    services["minio"] = {
        "image": "mobitune-s3:test",
        "network_mode": "host",
        "command": ["moto_server", "-H", "127.0.0.1", "-p", str(ports["s3"])],
    }
    bucket = f"import boto3; boto3.client('s3', endpoint_url='{s3}').create_bucket(Bucket='mobitune')"
    services["create-bucket"] = {
        "image": IMAGE,
        "network_mode": "host",
        "depends_on": ["minio"],
        "environment": services["worker"]["environment"],
        "entrypoint": ["python", "-c", bucket],
    }
    compose.pop("volumes", None)
    services["postgres"].pop("volumes", None)
    services["minio"].pop("volumes", None)
    path = tmp_path / "docker-compose.local.yml"
    path.write_text(yaml.safe_dump(compose, sort_keys=False))
    return path


def test_the_compose_stack_comes_up_deploys_and_runs_a_workers_sweep(
    engine: None, tmp_path: Path, cifar_archive: Path, http_root: tuple[str, Path]
) -> None:
    """`docker-compose up` of the stack (PostgreSQL, the Prefect server on it, S3, a GPU worker and a sweeps
    worker), its `deploy` job (`mobitune setup && prefect deploy --all`), then a workers sweep from this machine:
    its trials run in the stack's worker container and its results land in the stack's S3."""
    ports = {name: free_port() for name in ("postgres", "prefect", "s3")}
    stack = local_stack(tmp_path, ports)
    compose = ["docker-compose", "--project-name", "mobitune-test", "--file", str(stack)]
    base_url, served = http_root
    shutil.copy(cifar_archive, served / "cifar-compose.tar.gz")
    project = sweep_project(tmp_path, cifar_archive, SWEEP, **{"data.source": f"{base_url}/cifar-compose.tar.gz"})
    env = {
        "PREFECT_API_URL": f"http://127.0.0.1:{ports['prefect']}/api",
        "AWS_ENDPOINT_URL": f"http://127.0.0.1:{ports['s3']}",
    }
    try:
        run([*compose, "up", "--detach", "postgres", "prefect", "minio", "create-bucket"], tmp_path)
        deadline = time.monotonic() + 180
        while run(["prefect", "work-pool", "ls"], tmp_path, check=False, env_extra=env).returncode:
            assert time.monotonic() < deadline, run([*compose, "logs", "--tail", "40"], tmp_path).stdout
            time.sleep(2)
        deployed = run([*compose, "run", "--rm", "deploy"], tmp_path).stdout
        assert "work pool gpu: created" in deployed and "trial-slot/gpu" in deployed, deployed
        run([*compose, "up", "--detach", "worker", "sweeps"], tmp_path)
        sweep = run(
            ["mobitune", "sweep", "--backend", "workers", "--set", "storage.uri=s3://mobitune/results"],
            project,
            env_extra=env,
            timeout=600,
        )
        sweep_dir = Path(sweep.stdout.strip().splitlines()[-1])
        results = pd.read_csv(sweep_dir / "results.csv")
        assert len(results) == 2 and set(results["status"]) == {"ok"}
        import boto3

        keys = boto3.client("s3", endpoint_url=env["AWS_ENDPOINT_URL"]).list_objects_v2(
            Bucket="mobitune", Prefix=f"results/sweeps/{sweep_dir.name}/"
        )
        assert f"results/sweeps/{sweep_dir.name}/report.md" in {obj["Key"] for obj in keys["Contents"]}
    finally:
        run([*compose, "down", "--volumes", "--remove-orphans"], tmp_path, check=False)
