"""Helpers shared by the tests (fixtures live in conftest.py)."""

from __future__ import annotations

import base64
import contextlib
import functools
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from mobitune.params import Params, set_dotted

ROOT = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def closed_port_url(path: str = "/cifar-10-python.tar.gz") -> str:
    """An http URL on loopback where nothing listens: an 'unreachable' source."""
    return f"http://127.0.0.1:{free_port()}{path}"


@functools.cache
def pristine(path: str) -> str:
    """The project's file at ``path`` as git holds it (its index: HEAD's copy unless a change is staged), never
    the working tree's. Tests must not depend on the user's workspace: `dvc exp run -S lr=...` leaves params.yaml
    edited there, and a test that read it would fail after the workflow the README teaches."""
    shown = subprocess.run(["git", "show", f":{path}"], cwd=ROOT, capture_output=True, text=True)
    if shown.returncode != 0:
        raise AssertionError(f"git show :{path} in {ROOT}: {shown.stderr.strip()}; the tests run in a git clone")
    return shown.stdout


def pristine_copy(path: str, folder: Path) -> Path:
    """:func:`pristine`'s ``path`` written under ``folder`` (at the same relative path), for code that reads a
    file."""
    copy = folder / path
    copy.parent.mkdir(parents=True, exist_ok=True)
    copy.write_text(pristine(path))
    return copy


def tiny_params(source: str, pretrained: str = "none", **overrides: object) -> dict:
    """params.yaml for tests: the project's file (as committed) with tiny epochs and batches on the CPU."""
    params = yaml.safe_load(pristine("params.yaml"))
    params["device"] = "cpu"
    params["data"].update(source=source, md5=None)
    params["model"].update(pretrained=pretrained, hidden_units=32)
    params["warmup"].update(epochs=1, batch_size=100)
    params["finetune"]["epochs"] = 2
    params["batch_size"] = 100
    for key, value in overrides.items():
        set_dotted(params, key, value)
    return params


def run(
    cmd: list[str], cwd: Path, check: bool = True, env_extra: dict[str, str] | None = None, **kwargs: object
) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": f"{VENV_BIN}{os.pathsep}{os.environ['PATH']}", **(env_extra or {})}
    result = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, **kwargs)
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    return result


def write_params(project: Path, params: dict) -> None:
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def sweep_project(tmp_path: Path, archive: Path, sweep: dict, **overrides: object) -> Path:
    """A project folder (params.yaml, prefect.yaml, flows/) for running sweeps from."""
    import shutil

    project = tmp_path / "project"
    project.mkdir()
    params = tiny_params(str(archive), **overrides)
    params["sweep"] = {"mode": "one-at-a-time", "seeds": [0], **sweep}
    write_params(project, params)
    shutil.copy(ROOT / "prefect.yaml", project / "prefect.yaml")
    shutil.copytree(ROOT / "flows", project / "flows", ignore=shutil.ignore_patterns("__pycache__"))
    return project


@dataclass
class DvcExperiments:
    project: Path
    repro: str  # what the first `dvc repro` printed
    evaluate_metrics: dict  # data/metrics/evaluate.json after it (dvc exp run then leaves its own there)
    exp_run: str  # what `dvc exp run` of the experiment printed


class MotoProcess:
    """moto's standalone S3 server as its own process, so a test can stop and restart it."""

    def __init__(self, workdir: Path, **env: str) -> None:
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.workdir = workdir
        self.env = {**os.environ, **env}
        self.process: subprocess.Popen | None = None

    def start(self) -> MotoProcess:
        import time
        import urllib.request

        log = (self.workdir / "moto.log").open("a")
        self.process = subprocess.Popen(
            [str(VENV_BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(self.port)],
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        for _ in range(100):
            try:
                urllib.request.urlopen(f"{self.endpoint}/moto-api/", timeout=1)
                return self
            except OSError:
                time.sleep(0.1)
        raise AssertionError("moto_server did not start")

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(timeout=10)
            self.process = None


GPU_WORKER = ["prefect", "worker", "start", "--pool", "gpu", "--limit", "1"]  # one trial at a time


class PrefectServer:
    """A ``prefect server`` on a free loopback port with API auth on: its credential is the test session's
    ``PREFECT_API_AUTH_STRING`` (conftest.py), which every client the tests start has in its environment, so a
    client that does not send it fails its test."""

    def __init__(self, home: Path) -> None:
        self.port = free_port()
        self.api = f"http://127.0.0.1:{self.port}/api"
        self.auth_string = os.environ["PREFECT_API_AUTH_STRING"]
        self.env = {
            **os.environ,
            "PATH": f"{VENV_BIN}{os.pathsep}{os.environ['PATH']}",
            "PREFECT_HOME": str(home),
            "PREFECT_API_URL": self.api,
            "PREFECT_API_AUTH_STRING": self.auth_string,
            "PREFECT_UI_API_URL": self.api,  # the UI's pages call the API here, not at the default port
            "PREFECT_WORKER_QUERY_SECONDS": "1",
            "PREFECT_WORKER_PREFETCH_SECONDS": "1",
            # the 503s a server answers while its database is locked are in its log, not only in its clients'
            "PREFECT_SERVER_LOG_RETRYABLE_ERRORS": "true",
        }
        self.processes: list[subprocess.Popen] = []
        self.logs: list[Path] = []

    def start(self, name: str, cmd: list[str], cwd: Path, env: dict | None = None) -> Path:
        log = cwd / f"{name}.log"
        process = subprocess.Popen(
            cmd,
            cwd=cwd,
            env={**self.env, **(env or {})},
            stdout=log.open("w"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.processes.append(process)
        return log

    @property
    def authorization(self) -> dict[str, str]:
        """The header of a request with the server's credential (HTTP Basic, as Prefect's client sends it)."""
        return {"Authorization": "Basic " + base64.b64encode(self.auth_string.encode()).decode()}

    def api_post(self, path: str, body: dict) -> Any:
        """POST ``body`` to the server's REST API (as the UI does); the decoded answer."""
        data = json.dumps(body).encode()
        headers = {"Content-Type": "application/json", **self.authorization}
        return self._answer(urllib.request.Request(f"{self.api}/{path}", data, headers))

    def api_get(self, path: str) -> Any:
        return self._answer(urllib.request.Request(f"{self.api}/{path}", headers=self.authorization))

    @staticmethod
    def _answer(request: urllib.request.Request) -> Any:
        """The decoded answer; a 503 is asked again, as Prefect's own client does (the server answers it while
        SQLite is locked by its background writers, after a busy test)."""
        for delay in (1, 2, 4, 0):
            try:
                with urllib.request.urlopen(request, timeout=30) as response:
                    return json.loads(response.read())
            except urllib.error.HTTPError as exc:
                if exc.code != 503 or not delay:
                    raise
                time.sleep(delay)

    def wait_healthy(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                urllib.request.urlopen(f"{self.api}/health", timeout=2)
                return
            except OSError:
                time.sleep(0.5)
        raise AssertionError("prefect server did not become healthy")

    def deploy_with_worker(self, project: Path, env: dict[str, str], name: str = "worker") -> Path:
        """``prefect deploy --all`` from ``project``, then one worker (a trial at a time) on pool `gpu`; its log."""
        run(["prefect", "--no-prompt", "deploy", "--all"], project, env_extra=env)
        return self.start(name, GPU_WORKER, project, {**env, "PREFECT_LOGGING_LEVEL": "INFO"})

    def start_sweep(self, project: Path, env: dict[str, str], *args: str) -> subprocess.Popen:
        """``mobitune sweep --backend workers`` in the background, its output in ``project/sweep.log``."""
        with (project / "sweep.log").open("w") as out:
            return subprocess.Popen(
                ["mobitune", "sweep", "--backend", "workers", *args],
                cwd=project,
                stdout=out,
                stderr=subprocess.STDOUT,
                env={**self.env, **env},
            )

    @staticmethod
    def wait_for(text: str, log: Path, sweep: subprocess.Popen, project: Path) -> None:
        deadline = time.monotonic() + 300
        while text not in log.read_text():
            assert time.monotonic() < deadline and sweep.poll() is None, (project / "sweep.log").read_text()
            time.sleep(0.2)

    @property
    def server_command(self) -> list[str]:
        return ["prefect", "server", "start", "--host", "127.0.0.1", "--port", str(self.port)]

    def start_server(self, cwd: Path, name: str = "server") -> Path:
        """The server process, first in :attr:`processes`, requiring :attr:`auth_string` (the server's own
        setting, which no client gets); its log."""
        log = self.start(name, self.server_command, cwd, {"PREFECT_SERVER_API_AUTH_STRING": self.auth_string})
        self.processes.insert(0, self.processes.pop())
        return log

    def stop_server(self) -> None:
        """Stop the server process only (as for an upgrade): workers and sweeps keep theirs."""
        _stop(self.processes.pop(0))

    def stop(self, keep: int = 0) -> None:
        """Stop the processes started after the first ``keep`` (the server is the first)."""
        while len(self.processes) > keep:
            _stop(self.processes.pop())


def _stop(process: subprocess.Popen) -> None:
    for _ in range(2):  # a process worker needs two SIGINTs
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGINT)
            time.sleep(0.3)
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (a worker's flow-run processes), from /proc."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, stack = [], [pid]
    while stack:
        for child in children.get(stack.pop(), []):
            found.append(child)
            stack.append(child)
    return found


def postgres_bin() -> Path | None:
    """The newest PostgreSQL server binaries of Debian's ``postgresql`` package (not on PATH there)."""
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"), key=lambda p: int(p.parts[-3]))
    return found[-1].parent if found else None


class Postgres:
    """A throw-away PostgreSQL cluster on a free loopback port, trusting local connections.

    ``initdb`` refuses to run as root: as root the cluster belongs to Debian's ``postgres`` user.
    """

    def __init__(self, bindir: Path) -> None:
        self.bindir = bindir
        self.port = free_port()
        self.data = Path(tempfile.mkdtemp(prefix="mobitune-pg-"))
        self.url = f"postgresql+asyncpg://postgres@127.0.0.1:{self.port}/prefect"

    def _as_owner(self, *cmd: str) -> subprocess.CompletedProcess:
        prefix = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        return subprocess.run([*prefix, *cmd], capture_output=True, text=True, check=True, timeout=120)

    def start(self) -> Postgres:
        if os.geteuid() == 0:
            shutil.chown(self.data, "postgres")
        cluster = str(self.data / "cluster")
        self._as_owner(str(self.bindir / "initdb"), "-D", cluster, "-U", "postgres", "--auth=trust", "-E", "UTF8")
        options = f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.data} -c max_connections=200"
        log = str(self.data / "postgres.log")
        self._as_owner(str(self.bindir / "pg_ctl"), "-D", cluster, "-o", options, "-l", log, "-w", "start")
        self._as_owner(
            str(self.bindir / "createdb"), "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres", "prefect"
        )
        return self

    def restart(self) -> None:
        """A fast shutdown (open connections cut, as on a crash or an upgrade), then started again."""
        cluster, log = str(self.data / "cluster"), str(self.data / "postgres.log")
        self._as_owner(str(self.bindir / "pg_ctl"), "-D", cluster, "-l", log, "-m", "fast", "-w", "restart")

    def stop(self) -> None:
        self._as_owner(str(self.bindir / "pg_ctl"), "-D", str(self.data / "cluster"), "-m", "fast", "-w", "stop")
        shutil.rmtree(self.data, ignore_errors=True)


class TcpProxy:
    """A loopback TCP proxy in front of a server: :meth:`cut` makes the server unreachable (connections refused,
    open ones reset) as an outage would, :meth:`restore` brings it back on the same port, its state intact."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.connections: list[socket.socket] = []
        self.lock = threading.Lock()
        self.listener: socket.socket | None = None
        self.restore()

    def restore(self) -> None:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        self.listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def cut(self) -> None:
        listener, self.listener = self.listener, None
        if listener is not None:
            listener.close()
        with self.lock:
            for connection in self.connections:
                with contextlib.suppress(OSError):
                    connection.shutdown(socket.SHUT_RDWR)
                connection.close()
            self.connections.clear()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return  # cut
            try:
                upstream = socket.create_connection(("127.0.0.1", self.upstream_port))
            except OSError:
                client.close()
                continue
            with self.lock:
                self.connections += [client, upstream]
            for source, target in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(source, target), daemon=True).start()

    def _pump(self, source: socket.socket, target: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := source.recv(65536):
                target.sendall(data)
        with contextlib.suppress(OSError):
            target.shutdown(socket.SHUT_WR)
        with self.lock:
            if source in self.connections:
                self.connections.remove(source)


# every secret docker-compose.yml requires (${VAR:?...}): .env.example lists each, the stack test sets each
COMPOSE_SECRETS = (
    "PREFECT_API_AUTH_STRING",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "MINIO_ROOT_USER",
    "MINIO_ROOT_PASSWORD",
    "POSTGRES_PASSWORD",
)


def write_sweep_folder(
    folder: Path, trials: list[tuple[list[str], int, float | tuple[float, float], str]], provenance: dict | None
) -> Path:
    """A finished sweep's folder as `mobitune sweep` writes it: (overrides, seed, test accuracy, status) a trial.
    The accuracy of a trial with ``augment.test_flip`` is (single view, flips), or one figure as recorded before
    both views were (the flipped one). ``provenance``: every trial's block (None: the bare ``git_rev`` that folders
    recorded before issue 27)."""
    record: dict = {"sweep_id": folder.name, "axes": ["lr"], "base": {"lr": 0.005}, "mode": "grid", "trials": []}
    for index, (overrides, seed, accuracy, status) in enumerate(trials):
        trial_id = f"t{index:03d}-s{seed}"
        record["trials"].append({"trial_id": trial_id, "varied": {"seed": seed}})
        params = Params().override([*overrides, f"seed={seed}"]).to_dict()
        trial = folder / "trials" / trial_id
        trial.mkdir(parents=True)
        (trial / "params.json").write_text(json.dumps({"params": params}))
        accuracy, flips = accuracy if isinstance(accuracy, tuple) else (accuracy, None)
        metrics = {"train_loss": 0.5, "test_loss": 1 - accuracy, "train_accuracy": 0.9, "test_accuracy": accuracy}
        if flips is not None:
            metrics.update(test_loss_flips=1 - flips, test_accuracy_flips=flips)
        metrics.update(status=status, seconds=1.0, error=None)
        if provenance is None:
            metrics["git_rev"] = "a3da2d4d65cb-dirty"
        else:
            metrics["provenance"] = provenance
        (trial / "metrics.json").write_text(json.dumps(metrics))
        phases = ["warmup"] * params["warmup"]["epochs"] + ["finetune"] * params["finetune"]["epochs"]
        pd.DataFrame({"step": range(1, len(phases) + 1), "phase": phases}).to_csv(trial / "history.csv", index=False)
    (folder / "sweep.json").write_text(json.dumps(record))
    (folder / "report.md").write_text("# a sweep\n")
    return folder
