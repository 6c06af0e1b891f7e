"""The worker image in a real Docker engine (``make test-containers``: it starts the engine and builds the image
first; ``make test`` leaves these out). A sweep on a work pool of type docker: the docker worker starts one
container of the image per slot run, on the host's network, and a container killed mid-trial is a lost machine.
"""

from __future__ import annotations

import base64
import io
import json
import os
import secrets
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pandas as pd
import pytest
import yaml
from helpers import COMPOSE_SECRETS, ROOT, Postgres, PrefectServer, free_port, run, sweep_project
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
        # no GPU here: containers ask for no device (a slot run of a --gpus N pool asks Docker for GPU k by id)
        out = run(["mobitune", "setup", "--pool-type", "docker", "--gpus", "0"], project, env_extra=env).stdout
        assert "work pool gpu: created (docker)" in out and "work pool sweeps: created (process)" in out
        template = json.loads(
            run(["prefect", "work-pool", "inspect", "gpu", "--output", "json"], project, env_extra=env).stdout
        )["base_job_template"]
        variables = template["variables"]["properties"]
        variables["image"]["default"] = IMAGE
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


def stack_secrets() -> dict[str, str]:
    """A value for each of the compose file's secrets, as .env.example's line makes them."""
    values = {name: secrets.token_hex(24) for name in COMPOSE_SECRETS}
    return values | {"PREFECT_API_AUTH_STRING": f"mobitune:{values['PREFECT_API_AUTH_STRING']}"}


def compose_run(args: list[str], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    """``docker-compose`` with exactly the stack's variables ``env`` (none of this session's, no .env file)."""
    base = {key: value for key, value in os.environ.items() if key not in COMPOSE_SECRETS}
    empty = cwd / "empty.env"
    empty.touch()
    command = ["docker-compose", "--env-file", str(empty), *args]
    return subprocess.run(command, cwd=cwd, env={**base, **env}, capture_output=True, text=True, timeout=600)


def local_stack(tmp_path: Path, ports: dict[str, int]) -> Path:
    """docker-compose.yml as users get it, for this machine: each image swapped for a local build (the worker
    image; PostgreSQL and an S3 stand-in built from Debian and moto, docker/standins/), every service on the
    host's network at free ports, no GPU reservation (there is none here). Written beside the tests' files.
    MinIO's stand-in takes any key, so the stand-in of create-bucket makes the bucket alone (with the root
    account): the project user's policy is MinIO's, checked on the file by tests/test_security.py."""
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = compose["services"]
    password = "${POSTGRES_PASSWORD:?set POSTGRES_PASSWORD}"  # still from the environment, as the file has it
    database = f"postgresql+asyncpg://prefect:{password}@127.0.0.1:{ports['postgres']}/prefect"
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
    root = "aws_access_key_id=os.environ['MINIO_ROOT_USER'], aws_secret_access_key=os.environ['MINIO_ROOT_PASSWORD']"
    bucket = f"import boto3, os; boto3.client('s3', endpoint_url='{s3}', {root}).create_bucket(Bucket='mobitune')"
    services["create-bucket"] |= {"image": IMAGE, "network_mode": "host", "entrypoint": ["python", "-c", bucket]}
    services["create-bucket"].pop("command")
    for data in ("minio-data", "postgres-data"):  # the stand-ins keep theirs elsewhere; the workers' stay shared
        compose["volumes"].pop(data)
    services["postgres"].pop("volumes", None)
    services["minio"].pop("volumes", None)
    path = tmp_path / "docker-compose.local.yml"
    path.write_text(yaml.safe_dump(compose, sort_keys=False))
    return path


def test_the_compose_file_refuses_to_start_without_each_secret(engine: None, tmp_path: Path) -> None:
    """`docker-compose config` of the file as shipped, and `up` of the local stack, with one secret unset: each
    refuses and names it; no container is made."""
    ports = {name: free_port() for name in ("postgres", "prefect", "s3")}
    stack = local_stack(tmp_path, ports)
    every = stack_secrets()
    config = ["--file", str(ROOT / "docker-compose.yml"), "config", "--quiet"]
    accepted = compose_run(config, tmp_path, every)
    assert accepted.returncode == 0, accepted.stderr
    for name in COMPOSE_SECRETS:
        without = {key: value for key, value in every.items() if key != name}
        refused = compose_run(config, tmp_path, without)
        assert refused.returncode != 0 and f"set {name}" in refused.stderr, (name, refused.stderr)
    project = ["--project-name", "mobitune-refused", "--file", str(stack)]
    without = {key: value for key, value in every.items() if key != "PREFECT_API_AUTH_STRING"}
    refused = compose_run([*project, "up", "--detach", "prefect"], tmp_path, without)
    assert refused.returncode != 0 and "set PREFECT_API_AUTH_STRING" in refused.stderr, refused.stderr
    assert docker("ps", "-aq", "--filter", "label=com.docker.compose.project=mobitune-refused").split() == []


def test_the_compose_stack_comes_up_deploys_and_runs_a_workers_sweep(
    engine: None, tmp_path: Path, cifar_archive: Path, http_root: tuple[str, Path]
) -> None:
    """`docker-compose up` of the stack (PostgreSQL, the Prefect server on it, S3, a GPU worker and a sweeps
    worker), its `deploy` job (`mobitune setup && prefect deploy --all`), then a workers sweep from this machine:
    its trials run in the stack's worker container and its results land in the stack's S3. The server asks for
    the credential the stack was given (a request without it gets 401) and a CSRF token (a change without it
    gets 403): every client of the stack and this machine's sweep send them."""
    ports = {name: free_port() for name in ("postgres", "prefect", "s3")}
    stack = local_stack(tmp_path, ports)
    stack_env = stack_secrets() | {"PREFECT_UI_ORIGIN": f"http://127.0.0.1:{ports['prefect']}"}
    compose = ["--project-name", "mobitune-test", "--file", str(stack)]

    def up(*args: str) -> str:
        done = compose_run([*compose, *args], tmp_path, stack_env)
        assert done.returncode == 0, f"docker-compose {' '.join(args)}: {done.stdout}\n{done.stderr}"
        return done.stdout

    base_url, served = http_root
    shutil.copy(cifar_archive, served / "cifar-compose.tar.gz")
    project = sweep_project(tmp_path, cifar_archive, SWEEP, **{"data.source": f"{base_url}/cifar-compose.tar.gz"})
    api = f"http://127.0.0.1:{ports['prefect']}/api"
    env = {
        "PREFECT_API_URL": api,
        "PREFECT_API_AUTH_STRING": stack_env["PREFECT_API_AUTH_STRING"],
        "AWS_ENDPOINT_URL": f"http://127.0.0.1:{ports['s3']}",
        "AWS_ACCESS_KEY_ID": stack_env["AWS_ACCESS_KEY_ID"],
        "AWS_SECRET_ACCESS_KEY": stack_env["AWS_SECRET_ACCESS_KEY"],
    }
    try:
        up("up", "--detach", "postgres", "prefect", "minio", "create-bucket")
        deadline = time.monotonic() + 180
        while run(["prefect", "work-pool", "ls"], tmp_path, check=False, env_extra=env).returncode:
            assert time.monotonic() < deadline, up("logs", "--tail", "40")
            time.sleep(2)
        credential = base64.b64encode(env["PREFECT_API_AUTH_STRING"].encode()).decode()
        assert httpx.get(f"{api}/admin/version").status_code == 401, "no credential, no answer"
        authorized = {"Authorization": f"Basic {credential}"}
        assert httpx.get(f"{api}/admin/version", headers=authorized).status_code == 200
        no_csrf = httpx.post(f"{api}/work_pools/", json={"name": "no-csrf", "type": "process"}, headers=authorized)
        assert no_csrf.status_code == 403 and "CSRF" in no_csrf.text, no_csrf.text
        deployed = up("run", "--rm", "deploy")
        assert "work pool gpu: created" in deployed and "trial-slot/gpu" in deployed, deployed
        up("up", "--detach", "worker-gpu0", "sweeps")  # no GPU here: one worker is enough
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
        compose_run([*compose, "down", "--volumes", "--remove-orphans"], tmp_path, stack_env)
