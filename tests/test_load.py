"""A load test on a production-shaped fleet: a Prefect server on a real PostgreSQL (Debian's package, started
here), four `prefect worker` processes, a 40-trial sweep, and worker machines lost mid-trial at random: nothing
reports those crashes, so the heartbeat automation of `mobitune setup` marks their runs Crashed, the sweep
submits each trial again, and another worker resumes it from its checkpoint. A trial's process killed on a
worker that lives is reported by the worker and resumed the same way."""

from __future__ import annotations

import os
import random
import re
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest
from datasets import write_cifar_archive
from helpers import GPU_WORKER, Postgres, PrefectServer, descendants, postgres_bin, run, sweep_project

TRIALS = 40
WORKERS = 4
KILLS = 2  # once 5 trials have finished, one after the other; each replaced, so the fleet stays at four
FINETUNE_EPOCHS = 2


@pytest.fixture(scope="module")
def postgres() -> Iterator[Postgres]:
    bindir = postgres_bin()
    if bindir is None:
        pytest.skip(
            "PostgreSQL is not installed (no /usr/lib/postgresql/*/bin/pg_ctl): `make test` installs Debian's "
            "postgresql package where apt-get and root allow it"
        )
    server = Postgres(bindir).start()
    yield server
    server.stop()


def lose_machine(process: subprocess.Popen) -> None:
    """SIGKILL a worker and its flow-run processes at once: nothing is left to report the crash."""
    victims = [process.pid, *descendants(process.pid)]
    for pid in victims:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    process.wait()


def test_forty_trials_on_postgres_with_lost_workers_are_each_run_once(postgres: Postgres, tmp_path: Path) -> None:
    archive = write_cifar_archive(tmp_path / "cifar-10-python.tar.gz", 20, 50)
    lrs = [round(0.0005 * (i + 1), 4) for i in range(TRIALS)]
    project = sweep_project(
        tmp_path, archive, {"mode": "grid", "lr": lrs}, **{"finetune.epochs": FINETUNE_EPOCHS, "batch_size": 25}
    )
    fleet = PrefectServer(tmp_path / "prefect-home")
    fleet.env["PREFECT_SERVER_DATABASE_CONNECTION_URL"] = postgres.url
    env = {"PREFECT_API_URL": fleet.api, "PREFECT_FLOWS_HEARTBEAT_FREQUENCY": "30"}
    # four trainings on two cores: one thread each, or OpenMP's spinning threads slow every epoch tenfold
    worker_env = {**env, "PREFECT_LOGGING_LEVEL": "INFO", "OMP_NUM_THREADS": "1"}
    server_cmd = ["prefect", "server", "start", "--host", "127.0.0.1", "--port", str(fleet.port)]
    sweep: subprocess.Popen | None = None
    try:
        server_log = fleet.start("server", server_cmd, tmp_path)
        fleet.wait_healthy(timeout=120)
        first = run(["mobitune", "setup", "--heartbeat-timeout-s", "60"], project, env_extra=env).stdout
        again = run(["mobitune", "setup", "--heartbeat-timeout-s", "60"], project, env_extra=env).stdout
        assert "automation 'mobitune: crash flow runs whose heartbeats stopped': created" in first
        assert "work pool gpu: exists" in again and "heartbeats stopped': updated" in again, "setup is idempotent"
        run(["prefect", "--no-prompt", "deploy", "--all"], project, env_extra=env)
        live: dict[Path, subprocess.Popen] = {}

        def start_worker(name: str) -> None:
            log = fleet.start(name, [*GPU_WORKER, "--name", name], project, worker_env)
            live[log] = fleet.processes[-1]

        for i in range(WORKERS):
            start_worker(f"worker-{i}")
        started = time.monotonic()
        sweep = fleet.start_sweep(project, env)
        rng = random.Random(0)
        epoch_line = f"finetune 1/{FINETUNE_EPOCHS}"

        def mid_trial() -> Path:
            """A worker whose trial has just stored its first finetune checkpoint and trains on."""
            seen = {log: log.read_text().count(epoch_line) for log in live}
            while not (found := [log for log in live if log.read_text().count(epoch_line) > seen[log]]):
                assert sweep.poll() is None, (project / "sweep.log").read_text()
                time.sleep(0.05)
            return rng.choice(sorted(found))

        while len(list(project.glob("artifacts/sweeps/*/trials/*/metrics.json"))) < TRIALS // 8:
            assert sweep.poll() is None and time.monotonic() - started < 600, (project / "sweep.log").read_text()
            time.sleep(0.5)
        for kill in range(KILLS):
            lose_machine(live.pop(mid_trial()))
            start_worker(f"replacement-{kill}")
        # a trial's process killed, its worker alive: the worker reports the crash, no heartbeat wait
        for pid in descendants(live[mid_trial()].pid):
            os.kill(pid, signal.SIGKILL)
        assert sweep.wait(timeout=900) == 0, (project / "sweep.log").read_text()
        seconds = time.monotonic() - started
        sweep_log = (project / "sweep.log").read_text()
        sweep_dir = Path(sweep_log.strip().splitlines()[-1])
        results = pd.read_csv(sweep_dir / "results.csv")
        assert sorted(results["lr"]) == lrs, "every trial exactly once"
        assert set(results["status"]) == {"ok"}, results[["trial_id", "status", "error"]]
        for trial_id in results["trial_id"]:
            history = pd.read_csv(sweep_dir / "trials" / trial_id / "history.csv")
            assert history["step"].tolist() == list(range(1, FINETUNE_EPOCHS + 2)), f"{trial_id}: each epoch once"
        resubmitted = len(re.findall(r"Crashed; submitting again", sweep_log))
        assert resubmitted >= KILLS + 1, "each crashed trial is submitted again (lost machines: by the automation)"
        worker_logs = [*project.glob("worker-*.log"), *project.glob("replacement-*.log")]
        resumed = sum(log.read_text().count("resuming from its checkpoint after finetune epoch") for log in worker_logs)
        assert resumed >= 1, "a lost trial resumes from its checkpoint on another worker"
        assert "database is locked" not in server_log.read_text()
        print(
            f"load test: {TRIALS} trials, {WORKERS} workers on PostgreSQL, {KILLS} lost mid-trial, "
            f"{resubmitted} trial(s) resubmitted, lost 0, {seconds:.0f} s"
        )
    finally:
        if sweep is not None and sweep.poll() is None:
            sweep.kill()
        fleet.stop()
