from __future__ import annotations

import base64
import hashlib
import http.server
import json
import os
import subprocess
import threading
import urllib.error
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import VENV_BIN, run, sweep_project
from prefect.exceptions import ParameterTypeError
from prefect.utilities.callables import parameter_schema

from mobitune.errors import MobituneError
from mobitune.orchestration.mailbox import Mailbox, remove_stale_mailboxes
from mobitune.orchestration.sweep_flow import sweep
from mobitune.orchestration.sweep_start import check_paths
from mobitune.orchestration.trial_flow import job_request, slot_root, trial_slot
from mobitune.params import Params
from mobitune.pipeline.exp_import import sweep_folder
from mobitune.redaction import redact, register_secret
from mobitune.release.sweep_export import export_trial
from mobitune.storage.fetch import FetchError, fetch
from mobitune.storage.names import UnsafeName
from mobitune.storage.records import write_json
from mobitune.storage.stores import LocalStore
from mobitune.sweep.publish import ManifestError
from mobitune.sweep.run import SweepLocked, SweepRun, hold_sweep_lock
from mobitune.sweep.trial_setup import result_cache_key

# --- names and paths from outside (issue 37 item 2) ---
# A flow parameter, a mailbox message and a bucket's manifest.json are written by whoever reaches the Prefect API
# or the bucket. Each attack below plants a sentinel file beside the folder it aims at and checks it survives.

TRAVERSALS = ["..", "../..", "a/../../b", "/etc", ".", "", "x" * 129, "slot\x00", "~root", "a b"]


def _sentinel(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "keep.txt").write_text("kept")
    return folder / "keep.txt"


@pytest.mark.parametrize("name", TRAVERSALS)
def test_prefect_refuses_a_slot_run_whose_names_could_leave_the_slots_folder(name: str) -> None:
    with pytest.raises(ParameterTypeError):
        trial_slot.validate_parameters({"sweep_id": name, "slot": "slot-1"})
    with pytest.raises(ParameterTypeError):
        trial_slot.validate_parameters({"sweep_id": "20261207-000000-abcdef", "slot": name})


def test_the_deployments_parameter_schema_carries_the_name_and_path_patterns() -> None:
    """What the Prefect server checks a run of a deployment against (``enforce_parameter_schema``)."""
    slot = parameter_schema(trial_slot).model_dump()["properties"]
    assert slot["sweep_id"]["pattern"] and slot["slot"]["pattern"]
    flow = parameter_schema(sweep).model_dump()["properties"]
    for name in ("params_file", "local_root"):
        assert flow[name]["pattern"], name


def test_the_prefect_server_refuses_a_slot_run_whose_names_leave_the_slots_folder(
    prefect_server, tmp_path: Path, cifar_archive: Path
) -> None:
    """The attack as a caller of the API makes it: a run of the ``trial-slot/gpu`` deployment with ``..`` names."""
    project = sweep_project(tmp_path, cifar_archive, {"lr": [0.005]})
    run(
        ["prefect", "--no-prompt", "deploy", "--name", "gpu"],
        project,
        env_extra={"PREFECT_API_URL": prefect_server.api},
    )
    [gpu] = prefect_server.api_post("deployments/filter", {"deployments": {"name": {"any_": ["gpu"]}}})
    for parameters in ({"sweep_id": "..", "slot": ".."}, {"sweep_id": "s1", "slot": "../../x"}):
        with pytest.raises(urllib.error.HTTPError) as refused:
            prefect_server.api_post(f"deployments/{gpu['id']}/create_flow_run", {"parameters": parameters})
        assert refused.value.code in (409, 422), parameters
    accepted = prefect_server.api_post(
        f"deployments/{gpu['id']}/create_flow_run", {"parameters": {"sweep_id": "s1", "slot": "s1-slot-1"}}
    )
    prefect_server.api_post(f"flow_runs/{accepted['id']}/set_state", {"state": {"type": "CANCELLED"}, "force": True})


@pytest.mark.parametrize("name", ["..", "../x", "/"])
def test_a_mailbox_named_from_outside_cannot_remove_the_folder_above_the_slots(tmp_path: Path, name: str) -> None:
    kept = _sentinel(tmp_path / "artifacts")
    with pytest.raises(UnsafeName, match="not a valid name"):
        Mailbox(None, tmp_path / "artifacts", name, name).remove()
    assert kept.read_text() == "kept"


@pytest.mark.parametrize("key", ["../outside", "/etc/passwd", "slots/../../outside", "a\\..\\b"])
def test_the_local_store_refuses_keys_that_leave_its_root(tmp_path: Path, key: str) -> None:
    store = LocalStore(tmp_path / "root")
    kept = _sentinel(tmp_path / "outside")
    for attempt in (lambda: store.put_bytes(key, b"x"), lambda: store.get_bytes(key), lambda: store.delete_prefix(key)):
        with pytest.raises(UnsafeName):
            attempt()
    assert kept.read_text() == "kept" and not (tmp_path / "root").exists()


def test_the_local_store_refuses_a_link_that_leads_out(tmp_path: Path) -> None:
    kept = _sentinel(tmp_path / "outside")
    (tmp_path / "root" / "slots").mkdir(parents=True)
    (tmp_path / "root" / "slots" / "s1").symlink_to(tmp_path / "outside")
    with pytest.raises(UnsafeName, match="through a link"):
        LocalStore(tmp_path / "root").delete_prefix("slots/s1")
    assert kept.read_text() == "kept"


def test_stale_mailbox_clean_up_removes_only_slot_keys(tmp_path: Path) -> None:
    """Keys a bucket writer planted under ``slots/`` that are not a slot's (a bad name, no message) stay."""
    store = LocalStore(tmp_path)
    store.put_bytes("slots/s1/slot-1/beat.json", b"{}")
    store.put_bytes("slots/s1/keep.json", b"{}")
    for path in (tmp_path / "slots").rglob("*.json"):
        os.utime(path, (0, 0))
    assert remove_stale_mailboxes(None, tmp_path) == ["slots/s1/slot-1"]
    assert (tmp_path / "slots/s1/keep.json").exists()


def test_a_slot_refuses_malformed_jobs_and_jobs_of_another_sweep() -> None:
    request = {"sweep_id": "s2", "trial_id": "t000", "params": Params().to_dict()}
    assert job_request({"request": request}, "s1", "artifacts")[1].startswith("refused a job of sweep s2")
    assert job_request({"request": {**request, "sweep_id": "s1", "trial_id": "../x"}}, "s1", "artifacts")[0] is None
    assert job_request({"malformed": "[]"}, "s1", "artifacts")[0] is None
    accepted, _ = job_request({"request": {**request, "sweep_id": "s1"}}, "s1", "artifacts")
    assert accepted is not None and accepted.local_root == "artifacts"


def test_a_slots_local_root_is_the_project_or_a_shared_sweeps_folder(tmp_path: Path) -> None:
    assert slot_root("artifacts", "s1") == "artifacts"
    for outside in ("/", "/etc", "../artifacts", str(tmp_path)):
        with pytest.raises(UnsafeName, match="local_root"):
            slot_root(outside, "s1")
    (tmp_path / "sweeps" / "s1").mkdir(parents=True)
    assert slot_root(str(tmp_path), "s1") == str(tmp_path)


@pytest.mark.parametrize(
    "given",
    [
        {"params_file": "/etc/passwd"},
        {"params_file": "../params.yaml"},
        {"recipe": "/root/.aws/credentials"},
        {"local_root": "/"},
        {"resume": "../../.."},
    ],
)
def test_a_sweeps_paths_stay_inside_the_project(given: dict[str, str]) -> None:
    with pytest.raises(ParameterTypeError):
        sweep.validate_parameters(given)
    paths = {"params_file": "params.yaml", "recipe": None, "local_root": "artifacts", "resume": None} | given
    with pytest.raises(UnsafeName, match=next(iter(given))):
        check_paths(**paths)


def _published(store: LocalStore, files: dict[str, bytes], entries: list[dict] | None = None) -> None:
    for path, data in files.items():
        store.put_bytes(path, data)
    listed = entries or [{"path": p, "sha256": hashlib.sha256(d).hexdigest(), "size": len(d)} for p, d in files.items()]
    store.put_bytes("manifest.json", json.dumps({"files": listed}).encode())


@pytest.mark.parametrize("path", ["../../../outside/evil.txt", "/tmp/evil.txt", "trials/../../../evil.txt"])
def test_a_manifest_cannot_place_files_outside_the_download_folder(
    s3, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, path: str
) -> None:
    """``mobitune export s3://…`` and ``mobitune exp-import s3://…`` against a bucket a writer tampered with."""
    bucket = s3.bucket("tampered")
    client = s3.client()
    entry = {"path": path, "sha256": hashlib.sha256(b"evil").hexdigest(), "size": 4}
    client.put_object(Bucket=bucket, Key=f"sweeps/s1/{path}", Body=b"evil")
    client.put_object(Bucket=bucket, Key="sweeps/s1/manifest.json", Body=json.dumps({"files": [entry]}).encode())
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UnsafeName, match="a path from data must be relative"):
        export_trial(f"s3://{bucket}/sweeps/s1", None)
    with pytest.raises(UnsafeName), sweep_folder(f"s3://{bucket}/sweeps/s1"):
        pass
    assert not list(tmp_path.parent.rglob("evil.txt")) and not Path("/tmp/evil.txt").exists()


def test_a_file_changed_after_publishing_is_refused_before_it_is_kept(s3, tmp_path: Path, monkeypatch) -> None:
    bucket = s3.bucket("tampered")
    client = s3.client()
    entry = {"path": "results.csv", "sha256": hashlib.sha256(b"trial_id\n").hexdigest(), "size": 9}
    client.put_object(Bucket=bucket, Key="sweeps/s1/results.csv", Body=b"trial_id\nt000-evil\n")
    client.put_object(Bucket=bucket, Key="sweeps/s1/manifest.json", Body=json.dumps({"files": [entry]}).encode())
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ManifestError, match="results.csv does not have the SHA-256"):
        export_trial(f"s3://{bucket}/sweeps/s1", None)
    assert not (tmp_path / "artifacts" / "sweeps" / "s1" / "results.csv").exists()


def test_an_export_refuses_a_trial_name_that_leaves_the_sweep(tmp_path: Path) -> None:
    with pytest.raises(MobituneError):
        export_trial(str(tmp_path), "../../etc")


# --- secrets never written (issue 37 item 3) ---


def test_redaction_masks_url_credentials_query_tokens_and_configured_secrets(monkeypatch) -> None:
    monkeypatch.setenv("MOBITUNE_TEST_TOKEN", "token-planted-in-env")
    register_secret("https://hooks.example.invalid/T000/B000/planted-hook")
    text = (
        "fetch https://alice:planted-pass@data.example.invalid/c.tar.gz and "
        "https://bucket.example.invalid/c.tar.gz?X-Amz-Signature=planted-sig&X-Amz-Credential=x#frag, "
        "token-planted-in-env, hook https://hooks.example.invalid/T000/B000/planted-hook"
    )
    masked = redact(text)
    for planted in ("planted-pass", "alice", "planted-sig", "token-planted-in-env", "planted-hook"):
        assert planted not in masked, planted
    assert "https://***@data.example.invalid/c.tar.gz" in masked
    assert "https://bucket.example.invalid/c.tar.gz?***#***" in masked
    assert redact(masked) == masked, "redaction is stable: a record read back and written again is unchanged"


def test_records_and_errors_never_keep_a_url_credential(tmp_path: Path) -> None:
    url = "http://127.0.0.1:9/c.tar.gz?X-Amz-Signature=planted-sig"
    write_json(tmp_path / "params.json", {"data": {"source": url}})
    assert "planted-sig" not in (tmp_path / "params.json").read_text()
    with pytest.raises(FetchError) as raised:
        fetch(url, tmp_path, "data.source")
    assert "planted-sig" not in str(raised.value) and "127.0.0.1:9/c.tar.gz" in str(raised.value)


# --- the trial cache and --resume (issue 37 item 6) ---


def test_the_trial_cache_key_changes_with_the_computing_packages(monkeypatch: pytest.MonkeyPatch) -> None:
    from mobitune import provenance

    before = result_cache_key(Params(), None, "data")
    for package in provenance.COMPUTING:
        real = provenance._version
        monkeypatch.setattr(
            provenance, "_version", lambda name, p=package, real=real: "0.0" if name == p else real(name)
        )
        assert result_cache_key(Params(), None, "data") != before, package
        monkeypatch.setattr(provenance, "_version", real)


def test_a_second_resume_of_a_running_sweep_is_refused_and_says_who_runs_it(tmp_path: Path) -> None:
    params = Params().override(["sweep.lr=[0.01]", "sweep.batch_size=[100]", "sweep.trainable_layers=[0]"])
    run = SweepRun.start(params, tmp_path, None, [], "local")
    with pytest.raises(SweepLocked, match=rf"being run by process {os.getpid()} on "):
        SweepRun.resume(tmp_path, run.sweep_id, "local")
    held_by_child = subprocess.run(
        [
            str(VENV_BIN / "python"),
            "-c",
            f"from mobitune.sweep.run import hold_sweep_lock; hold_sweep_lock({str(tmp_path)!r}, {run.sweep_id!r})",
        ],
        capture_output=True,
        text=True,
    )
    assert "SweepLocked" in held_by_child.stderr, "another process is refused too"
    run.release()
    hold_sweep_lock(tmp_path, run.sweep_id).close()


BASIC_USER, BASIC_PASSWORD = "alice", "planted-password-c3a9"


@pytest.fixture
def basic_auth_archive(tmp_path: Path, cifar_archive: Path) -> Iterator[str]:
    """The tiny archive from a loopback server that answers 401 to a request without alice's Basic credential;
    its URL, without the credential."""
    expected = "Basic " + base64.b64encode(f"{BASIC_USER}:{BASIC_PASSWORD}".encode()).decode()
    body = cifar_archive.read_bytes()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            if self.headers.get("Authorization") != expected:
                self.send_response(401)
                self.end_headers()
                return
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/leak.tar.gz"
    server.shutdown()


def test_a_url_credential_is_sent_as_basic_auth_and_named_nowhere(tmp_path: Path, basic_auth_archive: str) -> None:
    with pytest.raises(FetchError, match="HTTP 401") as refused:
        fetch(basic_auth_archive.replace("//", f"//{BASIC_USER}:wrong-password-1234@"), tmp_path, "data.source")
    assert "wrong-password-1234" not in str(refused.value) and BASIC_USER not in str(refused.value)
    with_credential = basic_auth_archive.replace("//", f"//{BASIC_USER}:{BASIC_PASSWORD}@")
    assert fetch(with_credential, tmp_path, "data.source").read_bytes()[:2] == b"\x1f\x8b"


def test_no_planted_secret_reaches_a_file_an_object_a_log_an_artifact_or_a_flow_run(
    tmp_path: Path, cifar_archive: Path, basic_auth_archive: str, s3, shared_prefect
) -> None:
    """A sweep whose every channel carries a distinct secret: the S3 key (environment), a ``user:password@`` and a
    presigned-style query token in ``data.source``, the Prefect credential; none may appear in anything the sweep
    wrote or sent."""
    secrets = {
        "s3 key": "planted-s3-secret-4f1d2c",
        "url password": BASIC_PASSWORD,
        "query token": "planted-query-token-8e7a",
        "prefect credential": os.environ["PREFECT_API_AUTH_STRING"],
    }
    project = sweep_project(tmp_path, cifar_archive, {"lr": [0.005]}, **{"finetune.epochs": 1})
    bucket = s3.bucket("leaks")
    with_credential = basic_auth_archive.replace("//", f"//{BASIC_USER}:{BASIC_PASSWORD}@")
    source = f"{with_credential}?X-Amz-Signature={secrets['query token']}&X-Amz-Expires=60"
    env = {**os.environ, "PATH": f"{VENV_BIN}{os.pathsep}{os.environ['PATH']}", "PREFECT_LOGGING_LEVEL": "INFO"}
    env["AWS_SECRET_ACCESS_KEY"] = secrets["s3 key"]
    command = ["mobitune", "sweep", "--set", f"data.source={source}", "--set", f"storage.uri=s3://{bucket}/team"]
    done = subprocess.run(command, cwd=project, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]

    channels = {"stdout": done.stdout, "stderr": done.stderr}
    channels |= {str(p): p.read_bytes().decode(errors="replace") for p in project.rglob("*") if p.is_file()}
    client = s3.client()
    for item in client.list_objects_v2(Bucket=bucket).get("Contents", []):
        channels[f"s3://{bucket}/{item['Key']}"] = (
            client.get_object(Bucket=bucket, Key=item["Key"])["Body"].read().decode(errors="replace")
        )
    for kind in ("flow_runs", "task_runs", "artifacts", "logs"):
        channels[f"prefect {kind}"] = json.dumps(shared_prefect.api_post(f"{kind}/filter", {"limit": 200}))
    sweep_id = Path(done.stdout.strip().splitlines()[-1]).name
    assert sweep_id in channels["prefect flow_runs"], "the sweep's flow run is on the server searched"
    assert '"**********"' in channels["prefect flow_runs"], "the override that carries the token is recorded masked"
    assert any("params.json" in name for name in channels), "the trial's records are among the files searched"
    found = [(what, where) for what, secret in secrets.items() for where, text in channels.items() if secret in text]
    assert found == [], f"planted secrets found: {found}"
