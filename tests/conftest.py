"""Shared fixtures: tiny data sets, a loopback HTTP server, a loopback S3 server (moto's
standalone server over HTTP) and a throw-away DVC project. Nothing here leaves 127.0.0.1."""

from __future__ import annotations

import functools
import http.server
import json
import os
import secrets
import shutil
import subprocess
import tempfile
import threading
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

# Before anything imports prefect, DVC or boto3: no telemetry, no cloud probes, private homes. Every Prefect client
# sends the session's credential, which the test Prefect servers (helpers.PrefectServer) require.
_HOME = Path(tempfile.mkdtemp(prefix="mobitune-tests-"))
os.environ.update(
    {
        "PREFECT_API_AUTH_STRING": f"mobitune-tests:{secrets.token_hex(16)}",
        "DVC_NO_ANALYTICS": "1",
        "DO_NOT_TRACK": "1",
        "PREFECT_HOME": str(_HOME / "prefect"),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_LOGGING_LEVEL": "WARNING",
        "AWS_ACCESS_KEY_ID": "testing-key-id",
        "AWS_SECRET_ACCESS_KEY": "testing-secret-key",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_EC2_METADATA_DISABLED": "true",
        "TORCH_HOME": str(_HOME / "torch"),
        "GIT_AUTHOR_NAME": "mobitune tests",
        "GIT_AUTHOR_EMAIL": "tests@example.invalid",
        "GIT_COMMITTER_NAME": "mobitune tests",
        "GIT_COMMITTER_EMAIL": "tests@example.invalid",
    }
)
os.environ.pop("AWS_ENDPOINT_URL", None)
os.environ.pop("AWS_PROFILE", None)
os.environ.pop("PREFECT_API_URL", None)  # sweeps without --backend workers use a temporary server
os.environ.pop("PREFECT_API_KEY", None)  # Prefect Cloud's: a client sends it instead of the auth string
os.environ.pop("PREFECT_SERVER_API_AUTH_STRING", None)  # the test servers' own, given to them alone

from browser import CHROMIUM, NOT_INSTALLED, Browser  # noqa: E402
from datasets import write_cifar_archive  # noqa: E402
from helpers import (  # noqa: E402
    ROOT,
    VENV_BIN,
    DvcExperiments,
    Postgres,
    PrefectServer,
    free_port,
    postgres_bin,
    pristine_copy,
    run,
    sweep_project,
    tiny_params,
    write_params,
)
from published import FOUR_TRIALS, RECIPE, published_sweep  # noqa: E402

E2E_MODULES = {"test_sweep_flows", "test_faults", "test_fleet", "test_browser"}
SERVER_FIXTURES = {
    *("s3", "s3_server", "http_root", "prefect_server", "workers", "postgres", "browser"),
    *("dvc_project", "dvc_experiments"),
}


# `make test` runs the end-to-end tier on two pytest-xdist workers (`--dist loadgroup`), each building its own
# session fixtures. The tests of an expensive shared fixture form one group, run on one worker, so it is built once:
# the fleet's module (its fleet is the module's) with the local sweep, which its S3 test runs while it waits out the
# outage it causes; the DVC project after `dvc repro` and `dvc exp run`. Every other test goes on its own to the
# worker that is free (the largest groups go first: pytest-xdist's --loadscope-reorder).
E2E_GROUPS = {"test_fleet": "fleet", "local_sweep": "fleet", "dvc_experiments": "dvc"}  # module or fixture -> group


@pytest.hookimpl(tryfirst=True)  # before pytest-xdist's own, which reads the groups into the tests' ids
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """End-to-end tests (real servers, subprocesses) are marked ``e2e``, so ``make test-fast`` can leave them out,
    and those of a shared expensive fixture grouped (:data:`E2E_GROUPS`)."""
    for item in items:
        if item.module.__name__ in E2E_MODULES or SERVER_FIXTURES & set(item.fixturenames):
            item.add_marker(pytest.mark.e2e)
            groups = [E2E_GROUPS[key] for key in (item.module.__name__, *item.fixturenames) if key in E2E_GROUPS]
            if groups:
                item.add_marker(pytest.mark.xdist_group(groups[0]))


def pytest_runtest_setup(item: pytest.Item) -> None:
    """Under ``--dist loadgroup``, a grouped test reached its worker with its group (pytest-xdist marks it in the
    test's id; with pytest 9.2 that stopped working, silently: pytest-xdist#1386), or its group's fixtures would
    be built on every worker."""
    if getattr(item.config.option, "loadgroup", False) and item.get_closest_marker("xdist_group"):
        if "@" not in item.nodeid:
            pytest.fail("pytest-xdist lost this test's xdist_group: keep pytest at pyproject.toml's pin (#1386)")


@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Under ``make test`` (``MOBITUNE_NO_SKIPS``) a skipped test fails the run: nothing is left out silently."""
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    skipped = reporter.stats.get("skipped", []) if reporter is not None else []
    if skipped and os.environ.get("MOBITUNE_NO_SKIPS") and session.exitstatus == 0:
        reporter.ensure_newline()
        reporter.write_line(f"error: {len(skipped)} test(s) skipped (reasons above); every test must run", red=True)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


@pytest.fixture(scope="session")
def cifar_archive(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small ``cifar-10-python.tar.gz`` in the official format (5x200 train, 500 test)."""
    return write_cifar_archive(tmp_path_factory.mktemp("cifar") / "cifar-10-python.tar.gz", 200, 500)


@pytest.fixture(scope="session")
def calibrated_weights(tmp_path_factory: pytest.TempPathFactory, cifar_archive: Path) -> Path:
    """A MobileNetV2 state dict whose BatchNorm statistics fit the tiny data.

    ImageNet weights cannot be downloaded here; random weights with the default
    BatchNorm statistics make frozen features collapse to ~0. Re-estimating the
    statistics on the data gives frozen features with signal: a fair stand-in
    for "pretrained" that the learning tests load through ``model.pretrained``.
    """
    import numpy as np
    import torch
    import torchvision

    from mobitune.training.batches import BatchTransform
    from mobitune.training.data import decode

    torch.manual_seed(0)
    net = torchvision.models.mobilenet_v2()
    for module in net.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.momentum = None  # cumulative average over the calibration pass
    train, _, _, _ = decode(cifar_archive)
    x = BatchTransform(torch.device("cpu"), 32)(torch.from_numpy(np.array(train.images[:500])))
    net.train()
    with torch.no_grad():
        net.features(x)
    path = tmp_path_factory.mktemp("weights") / "calibrated-mobilenet_v2.pt"
    torch.save(net.state_dict(), path)
    return path


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="session")
def http_root(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """A loopback HTTP server; returns its base URL and the folder it serves."""
    root = tmp_path_factory.mktemp("http")
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_QuietHandler, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", root
    server.shutdown()


@pytest.fixture(scope="module")
def postgres() -> Iterator[Postgres]:
    """A throw-away PostgreSQL cluster: the database of a Prefect server that several machines write to at once
    (SQLite, the default, answers them 503 while it is locked)."""
    bindir = postgres_bin()
    if bindir is None:
        pytest.fail(
            "PostgreSQL is not installed (no /usr/lib/postgresql/*/bin/pg_ctl): run 'apt-get install postgresql' "
            "(`make test` and `make test-containers` install it where apt-get and root allow)"
        )
    server = Postgres(bindir).start()
    yield server
    server.stop()


@dataclass
class S3Server:
    endpoint: str

    def client(self):  # noqa: ANN201
        import boto3

        return boto3.client("s3", endpoint_url=self.endpoint)

    def reset(self) -> None:
        urllib.request.urlopen(urllib.request.Request(f"{self.endpoint}/moto-api/reset", method="POST"))

    def bucket(self, name: str) -> str:
        self.client().create_bucket(Bucket=name)
        return name


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Server]:
    """moto's standalone S3 server, over HTTP on 127.0.0.1, for the whole session."""
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    yield S3Server(f"http://127.0.0.1:{port}")
    server.stop()


@pytest.fixture
def s3(s3_server: S3Server, monkeypatch: pytest.MonkeyPatch) -> S3Server:
    """The S3 server, emptied, with ``AWS_ENDPOINT_URL`` pointing at it."""
    s3_server.reset()
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_server.endpoint)
    return s3_server


@pytest.fixture
def dvc_project(tmp_path: Path) -> Path:
    """A fresh git + DVC repo holding the project's dvc.yaml, params.yaml and code."""
    return new_dvc_project(tmp_path / "project")


@pytest.fixture(scope="session")
def dvc_experiments(
    tmp_path_factory: pytest.TempPathFactory, cifar_archive: Path, calibrated_weights: Path
) -> DvcExperiments:
    """A DVC project after `dvc repro` (committed as `main`) and `dvc exp run` of a recipe (experiment `low-lr`),
    shared by the pipeline's end-to-end test and the offline plots page: the pipeline runs once."""
    project = new_dvc_project(tmp_path_factory.mktemp("dvc-experiments") / "project")
    write_params(project, tiny_params(str(cifar_archive), pretrained=str(calibrated_weights)))
    repro = run(["dvc", "repro"], project).stdout
    evaluate_metrics = json.loads((project / "data/metrics/evaluate.json").read_text())
    run(["git", "add", "-A"], project)
    run(["git", "commit", "-qm", "baseline"], project)
    (project / "low-lr.yaml").write_text("lr: 0.002\nfinetune.schedule: cosine\nfinetune.weight_decay: 0.01\n")
    exp_run = run(["bash", "-c", "mobitune recipe low-lr.yaml | xargs dvc exp run -n low-lr"], project).stdout
    return DvcExperiments(project, repro, evaluate_metrics, exp_run)


def new_dvc_project(project: Path) -> Path:
    """A git + DVC repo at ``project`` with the project's dvc.yaml, params.yaml and code."""
    project.mkdir(parents=True)
    for name in ("dvc.yaml", ".gitignore", ".dvcignore"):
        shutil.copy(ROOT / name, project / name)
    pristine_copy("params.yaml", project)  # as committed: `dvc exp run -S` leaves the workspace's edited
    shutil.copytree(ROOT / "src", project / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    run(["git", "init", "-q", "-b", "main"], project)
    run(["dvc", "init", "-q"], project)
    shutil.copy(ROOT / ".dvc" / "config", project / ".dvc" / "config")  # no analytics; the offline plot page
    shutil.copytree(ROOT / ".dvc" / "plots", project / ".dvc" / "plots")
    return project


@pytest.fixture(scope="session")
def local_sweep(tmp_path_factory: pytest.TempPathFactory, cifar_archive: Path, s3_server) -> Iterator[dict]:
    """A 4-trial sweep on the local backend with a recipe, published to the S3 server (on Prefect's temporary
    server: the embedded default). A second sweep, the first one's base trial alone, runs at the same time in
    the same folder and publishes to the same prefix. Shared by the sweep-flow tests and the workers backend's
    test on the fleet (test_fleet.py), which compares its results with these."""
    bucket = s3_server.bucket("local-results")  # its own bucket: a fleet sweep may be using the server meanwhile
    project = sweep_project(tmp_path_factory.mktemp("local"), cifar_archive, FOUR_TRIALS)
    (project / "recipe.yaml").write_text(RECIPE)
    env = {**os.environ, "PATH": f"{VENV_BIN}{os.pathsep}{os.environ['PATH']}"}
    env |= {"AWS_ENDPOINT_URL": s3_server.endpoint, "PREFECT_LOGGING_LEVEL": "INFO"}  # epochs are run logs
    command = ["mobitune", "sweep", "--recipe", "recipe.yaml", "--set", f"storage.uri=s3://{bucket}/team"]
    alone = ["--set", "sweep.lr=[0.005]", "--set", "sweep.batch_size=[100]"]
    processes = [
        subprocess.Popen(cmd, cwd=project, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for cmd in (command, [*command, *alone])
    ]
    outputs = [process.communicate(timeout=600) for process in processes]
    assert [p.returncode for p in processes] == [0, 0], outputs
    sweep_dirs = [Path(out.strip().splitlines()[-1]) for out, _ in outputs]
    sweep_id, tree = published_sweep(s3_server, bucket, "team", sweep_dirs[0].name)
    yield {
        "project": project,
        "stdout": "".join(outputs[0]),
        "other_stdout": "".join(outputs[1]),
        "sweep_id": sweep_id,
        "tree": tree,
        "sweep_dirs": sweep_dirs,
        "bucket": bucket,
    }


@pytest.fixture
def browser() -> Iterator[Browser]:
    """Headless Chromium (Debian's package), closed when the test ends; a test fails if it is not installed."""
    if CHROMIUM is None:
        pytest.fail(NOT_INSTALLED)
    chromium = Browser()
    yield chromium
    chromium.close()


@pytest.fixture
def shared_prefect(prefect_server: PrefectServer, monkeypatch: pytest.MonkeyPatch) -> PrefectServer:
    """Sweeps the test starts use the session's Prefect server, not a temporary one each (~10 s per command):
    for tests about something else. ``local_sweep`` keeps the temporary server, so that path stays tested."""
    monkeypatch.setenv("PREFECT_API_URL", prefect_server.api)
    return prefect_server


@pytest.fixture
def workers(prefect_server: PrefectServer) -> Iterator[PrefectServer]:
    """The server, with every worker a test starts stopped when the test ends."""
    yield prefect_server
    prefect_server.stop(keep=1)


@pytest.fixture(scope="session")
def prefect_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrefectServer]:
    home = tmp_path_factory.mktemp("prefect-server")
    server = PrefectServer(home)
    server.start_server(home)
    server.wait_healthy()
    for pool in ("gpu", "sweeps"):
        run(
            ["prefect", "work-pool", "create", pool, "--type", "process"],
            home,
            env_extra={"PREFECT_API_URL": server.api},
        )
    yield server
    server.stop()
