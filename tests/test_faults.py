"""Faults injected for real: S3 down and back, refused credentials, a missing bucket,
a stage interrupted by a signal. Each asserts that nothing finished is lost."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import time
from pathlib import Path

import boto3
import yaml
from helpers import VENV_BIN, MotoProcess, PrefectServer, run, sweep_project, tiny_params, write_params

SECRET = os.environ["AWS_SECRET_ACCESS_KEY"]
TWO_TRIALS = {"lr": [0.005, 0.001]}


def test_s3_down_during_the_sweep_then_pushed_later(
    shared_prefect: PrefectServer, tmp_path: Path, cifar_archive: Path
) -> None:
    server = MotoProcess(tmp_path)  # not started: the endpoint is down before and during publishing
    project = sweep_project(tmp_path, cifar_archive, TWO_TRIALS, **{"finetune.epochs": 1})
    env = {"AWS_ENDPOINT_URL": server.endpoint}
    result = run(["mobitune", "sweep", "--set", "storage.uri=s3://results/team"], project, check=False, env_extra=env)
    assert result.returncode == 3, result.stderr
    message = result.stderr.splitlines()[-1]
    sweep_dir = next((project / "artifacts" / "sweeps").iterdir())
    manifest = json.loads((sweep_dir / "manifest.json").read_text())
    assert len(manifest["files"]) > 8 and (sweep_dir / "report.md").exists()
    assert f"{len(manifest['files']) + 1} object(s) not published to s3://results/team/sweeps/" in message
    assert f"S3 endpoint {server.endpoint} is unreachable" in message
    assert "Unpublished: figures/" in message and f"mobitune push {sweep_dir}" in message

    server.start()
    try:
        boto3.client("s3", endpoint_url=server.endpoint).create_bucket(Bucket="results")
        pushed = run(["mobitune", "push", str(sweep_dir)], project, env_extra=env)
        assert pushed.stdout.strip() == f"s3://results/team/sweeps/{sweep_dir.name}"
        client = boto3.client("s3", endpoint_url=server.endpoint)
        prefix = f"team/sweeps/{sweep_dir.name}/"
        keys = {o["Key"][len(prefix) :] for o in client.list_objects_v2(Bucket="results", Prefix=prefix)["Contents"]}
        assert keys == {f["path"] for f in manifest["files"]} | {"manifest.json"}
        for entry in manifest["files"]:
            body = client.get_object(Bucket="results", Key=prefix + entry["path"])["Body"].read()
            assert hashlib.sha256(body).hexdigest() == entry["sha256"]
    finally:
        server.stop()


def test_missing_bucket_and_refused_credentials_stop_before_running(tmp_path: Path, cifar_archive: Path) -> None:
    server = MotoProcess(tmp_path, INITIAL_NO_AUTH_ACTION_COUNT="1").start()  # 1 unauthenticated call, then IAM
    try:
        boto3.client("s3", endpoint_url=server.endpoint).create_bucket(Bucket="results")
        project = sweep_project(tmp_path, cifar_archive, TWO_TRIALS)
        env = {"AWS_ENDPOINT_URL": server.endpoint}
        refused = run(["mobitune", "sweep", "--set", "storage.uri=s3://results/x"], project, check=False, env_extra=env)
        assert refused.returncode == 2
        assert "S3 refused the credentials for s3://results/x (InvalidAccessKeyId)" in refused.stderr
        assert SECRET not in refused.stderr + refused.stdout
    finally:
        server.stop()
    server = MotoProcess(tmp_path).start()
    try:
        env = {"AWS_ENDPOINT_URL": server.endpoint}
        missing = run(
            ["mobitune", "sweep", "--set", "storage.uri=s3://nobucket/x"], project, check=False, env_extra=env
        )
        assert missing.returncode == 2
        assert "bucket of s3://nobucket/x does not exist" in missing.stderr and "create it first" in missing.stderr
        assert not (project / "artifacts" / "sweeps").exists()
    finally:
        server.stop()


def test_push_refuses_what_is_not_a_sweep(tmp_path: Path) -> None:
    result = run(["mobitune", "push", str(tmp_path)], tmp_path, check=False)
    assert result.returncode == 2 and "not a sweep folder (no sweep.json)" in result.stderr


def test_interrupted_stage_leaves_nothing_for_dvc_and_reruns(dvc_project: Path, cifar_archive: Path) -> None:
    """Ctrl-C in the terminal (SIGINT to dvc and its stage) mid-warmup; SIGTERM takes the same path inside the
    stage (test_dvc_pipeline.py: test_stage_turns_sigterm_and_sigint_into_a_clean_stop)."""
    # flips: every warmup epoch is a full forward (no cached features), so the stage lasts long enough to interrupt
    params = tiny_params(str(cifar_archive), **{"warmup.epochs": 6, "augment.flip": True})
    write_params(dvc_project, params)
    env = {**os.environ, "PATH": f"{VENV_BIN}{os.pathsep}{os.environ['PATH']}"}
    log_path = dvc_project / "repro.log"
    with log_path.open("w") as log:
        process = subprocess.Popen(
            ["dvc", "repro"],
            cwd=dvc_project,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            # as from a terminal: an ignored SIGINT (earlier tests can leave this process so) would be inherited
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        )
        deadline = time.monotonic() + 120
        while "warmup 1/6" not in log_path.read_text():
            assert time.monotonic() < deadline and process.poll() is None, log_path.read_text()
            time.sleep(0.05)
        os.killpg(process.pid, signal.SIGINT)
        assert process.wait(timeout=60) != 0
    assert "warmup 6/6" not in log_path.read_text(), "the stage was interrupted mid-run"
    assert not list((dvc_project / "data").rglob(".*.pt.*")), "temporary files left behind"
    lock = yaml.safe_load((dvc_project / "dvc.lock").read_text())["stages"]
    assert "download" in lock and "warmup" not in lock, "finished stages are kept, the interrupted one is not recorded"
    status = json.loads(run(["dvc", "status", "--json"], dvc_project).stdout)
    assert "warmup" in status and "download" not in status
    again = run(["dvc", "repro", "warmup"], dvc_project)  # the stages after it are not what this is about
    assert "Running stage 'warmup'" in again.stdout and "Running stage 'download'" not in again.stdout
    assert json.loads((dvc_project / "data/metrics/warmup.json").read_text())["warmup"]["epochs"] == 6


OOM_SCRIPT = """
import json, resource, sys
import mobitune.sweep.trial_training  # torch and everything a trial trains with, imported before the cap
from mobitune.params import load_params
from mobitune.sweep.plan import expand
from mobitune.sweep.trial import run_trial_recorded
from mobitune.sweep.trial_files import TrialRequest

def vm_bytes():
    with open("/proc/self/status") as status:
        return next(int(l.split()[1]) * 1024 for l in status if l.startswith("VmSize:"))

# a 'device' with ~3 GB to spare: the 224px batch of 500 needs far more, the 32px trials far less
cap = vm_bytes() + 3 * 1024**3
resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
params = load_params()
requests = [TrialRequest(sweep_id="oom", trial_id=t.trial_id, params=t.params, varied=t.varied, local_root="artifacts")
            for t in expand(params)]
results = [run_trial_recorded(request) for request in requests]
print(json.dumps([{k: r.get(k) for k in ("trial_id", "status", "error")} for r in results]))
"""


def test_out_of_memory_fails_that_trial_only(tmp_path: Path, cifar_archive: Path) -> None:
    project = sweep_project(
        tmp_path,
        cifar_archive,
        {"batch_size": [100, 500], "model.image_size": [32, 224]},
        **{"finetune.epochs": 1, "data.test_limit": 100},
    )
    result = run(["python", "-c", OOM_SCRIPT], project, timeout=600)
    outcomes = {r["trial_id"]: r for r in json.loads(result.stdout.strip().splitlines()[-1])}
    failed = [r for r in outcomes.values() if r["status"] == "failed"]
    assert len(failed) == 1 and "image_size" in failed[0]["trial_id"], outcomes
    assert "out of memory with batch_size=100, model.image_size=224: lower them" in failed[0]["error"]
    assert sorted(r["status"] for r in outcomes.values()) == ["failed", "ok", "ok"]
