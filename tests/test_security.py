"""Attacks from outside, each tried against the real component (issue 37): every one must be refused with a
clear error, and nothing written, deleted or leaked where it does not belong. One section per kind of attack."""

from __future__ import annotations

import base64
import hashlib
import http.server
import io
import json
import os
import re
import struct
import subprocess
import tarfile
import threading
import urllib.error
import uuid
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from datasets import tar_folder, write_image_folder
from helpers import COMPOSE_SECRETS, ROOT, VENV_BIN, MotoProcess, PrefectServer, run, sweep_project
from PIL import Image
from prefect.exceptions import ParameterTypeError
from prefect.utilities.callables import parameter_schema

from mobitune.errors import MobituneError
from mobitune.export.predict import read_image
from mobitune.orchestration.mailbox import Mailbox, remove_stale_mailboxes
from mobitune.orchestration.server_setup import open_api_message, status_without_credential
from mobitune.orchestration.sweep_flow import sweep
from mobitune.orchestration.sweep_start import check_paths
from mobitune.orchestration.trial_flow import job_request, slot_root, trial_slot
from mobitune.params import Params
from mobitune.pipeline.exp_import import sweep_folder
from mobitune.redaction import redact, register_secret
from mobitune.release.sweep_export import export_trial
from mobitune.storage import fetch as fetch_module
from mobitune.storage.fetch import DownloadTooLarge, FetchError, fetch
from mobitune.storage.names import UnsafeName
from mobitune.storage.records import write_json
from mobitune.storage.stores import LocalStore
from mobitune.sweep.publish import ManifestError
from mobitune.sweep.run import SweepLocked, SweepRun, hold_sweep_lock
from mobitune.sweep.trial_setup import result_cache_key
from mobitune.training import data as data_module
from mobitune.training import untrusted
from mobitune.training.data import DataError, prepare
from mobitune.training.untrusted import TooLargeError

# --- untrusted files (issue 37 item 4) ---
# Archives, image folders, downloads and the images a user predicts on are untrusted: each cap of
# mobitune/training/untrusted.py and mobitune/storage/fetch.py is lowered here (monkeypatched) so that a few KiB
# stand for the gigabytes of a real attack, and image decoding must reach no Pillow plugin but PNG and JPEG.

_MIB = 2**20


def _assert_nothing_prepared(out: Path) -> None:
    """The download stage's output is absent and no staging folder is left beside it."""
    assert not out.exists()
    assert [p.name for p in out.parent.iterdir()] == [], "staging files were left behind"


def _zero_member(name: str, size: int) -> tuple[tarfile.TarInfo, io.BytesIO]:
    """A member of ``size`` zero bytes: kilobytes once gzipped, ``size`` once unpacked."""
    info = tarfile.TarInfo(name)
    info.size = size
    return info, io.BytesIO(bytes(size))


def _archive_of_zeros(path: Path, members: dict[str, int]) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for name, size in members.items():
            tar.addfile(*_zero_member(name, size))
    return path


def _png_claiming(width: int, height: int) -> bytes:
    """A valid PNG header that declares ``width`` x ``height`` pixels, with almost no pixel data behind it."""

    def chunk(kind: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")


def _image_bytes(fmt: str) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (32, 32), (200, 30, 30)).save(out, fmt)
    return out.getvalue()


@pytest.fixture
def eps_reached(monkeypatch: pytest.MonkeyPatch) -> list[bytes]:
    """Every time Pillow asks its EPS plugin (which runs Ghostscript) whether it takes a file; must stay empty."""
    Image.init()  # every plugin registered now, so none registers again over the spy
    calls: list[bytes] = []

    def accept(prefix: bytes) -> bool:
        calls.append(prefix[:16])
        return False

    factory, _ = Image.OPEN["EPS"]
    monkeypatch.setitem(Image.OPEN, "EPS", (factory, accept))
    return calls


@pytest.mark.parametrize("where", ["official batch in an archive", "image in an archive", "image in a folder"])
def test_a_member_or_file_over_the_member_cap_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, where: str
) -> None:
    monkeypatch.setattr(data_module, "MAX_MEMBER_BYTES", _MIB)
    if where == "official batch in an archive":
        big = "cifar-10-batches-py/data_batch_1"
        source = _archive_of_zeros(tmp_path / "cifar.tar.gz", {big: 2 * _MIB})
    else:
        tree = write_image_folder(tmp_path / "images", 1, 1)
        (tree / "train" / "cat" / "big.png").write_bytes(bytes(2 * _MIB))
        big = "images/train/cat/big.png"
        source = tree if where == "image in a folder" else tar_folder(tree, tmp_path / "images.tar.gz")
    out = tmp_path / "work" / "cifar10"
    with pytest.raises(TooLargeError) as refused:
        prepare(str(source), None, out)
    message = str(refused.value)
    assert big in message and "is 2 MiB: over the 1 MiB cap (MAX_MEMBER_BYTES" in message
    assert "raise that cap" in message
    _assert_nothing_prepared(out)


def test_an_archive_unpacking_past_the_total_cap_is_refused_before_it_is_inflated(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Members never read count too: skipping one inflates it all the same. The cap is checked on each header,
    so the member that takes the archive past it is refused by its declared size, before it is inflated."""
    monkeypatch.setattr(data_module, "MAX_UNPACKED_BYTES", 3 * _MIB)
    archive = _archive_of_zeros(tmp_path / "bomb.tar.gz", {f"padding/{i}": _MIB for i in range(6)})
    assert archive.stat().st_size < 64 * 1024
    out = tmp_path / "work" / "cifar10"
    with pytest.raises(
        TooLargeError,
        match=r"bomb.tar.gz: unpacks to 4 MiB with member 'padding/3': over the "
        r"3 MiB cap \(MAX_UNPACKED_BYTES",
    ):
        prepare(str(archive), None, out)
    _assert_nothing_prepared(out)


def test_an_image_folder_reading_past_the_total_cap_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    tree = write_image_folder(tmp_path / "images", 2, 1)
    total = sum(f.stat().st_size for f in tree.rglob("*.png"))
    monkeypatch.setattr(data_module, "MAX_UNPACKED_BYTES", total - 1)
    out = tmp_path / "work" / "cifar10"
    with pytest.raises(
        TooLargeError,
        match=r"images: its image files come to .* MiB with .*\.png: over the "
        r".* cap \(MAX_UNPACKED_BYTES",
    ):
        prepare(str(tree), None, out)
    _assert_nothing_prepared(out)
    monkeypatch.setattr(data_module, "MAX_UNPACKED_BYTES", total)
    assert prepare(str(tree), None, out)["train_count"] == 20, "a folder just at the cap is read"


def test_decoded_images_past_the_pixel_total_cap_are_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    tree = write_image_folder(tmp_path / "images", 2, 1)  # 30 images of 32x32 RGB
    monkeypatch.setattr(data_module, "MAX_PIXEL_BYTES", 29 * 3 * 32 * 32)
    out = tmp_path / "work" / "cifar10"
    with pytest.raises(
        TooLargeError,
        match=r"images: its decoded images come to 0.087890\d* MiB with .*\.png: "
        r"over the .* MiB cap \(MAX_PIXEL_BYTES",
    ):
        prepare(str(tree), None, out)
    _assert_nothing_prepared(out)


@pytest.mark.parametrize("fmt", ["EPS", "GIF", "BMP"])
def test_an_image_of_another_format_named_png_is_refused_unread(
    tmp_path: Path, fmt: str, eps_reached: list[bytes]
) -> None:
    tree = write_image_folder(tmp_path / "images", 2, 1)
    disguised = tree / "train" / "cat" / "zzz.png"
    disguised.write_bytes(_image_bytes(fmt))
    out = tmp_path / "work" / "cifar10"
    with pytest.raises(DataError, match=r"zzz.png: not a readable image; only PNG and JPEG files are read"):
        prepare(str(tree), None, out)
    _assert_nothing_prepared(out)
    with pytest.raises(MobituneError, match=r"zzz.png: not an image mobitune reads \(JPEG or PNG"):
        read_image(disguised)
    assert eps_reached == [], "Pillow's EPS plugin was asked to open the file"


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_the_formats_accepted_still_decode(tmp_path: Path, fmt: str, eps_reached: list[bytes]) -> None:
    """The control of the test above: the refusal is of the format, not of every image."""
    path = tmp_path / "photo.png"
    path.write_bytes(_image_bytes(fmt))
    assert read_image(path).shape == (3, 32, 32)
    assert eps_reached == []


def test_a_png_declaring_more_pixels_than_pillow_allows_is_refused(tmp_path: Path) -> None:
    """Pillow's own DecompressionBombError (a header past twice Image.MAX_IMAGE_PIXELS) becomes our refusal."""
    assert 100_000 * 100_000 > 2 * Image.MAX_IMAGE_PIXELS
    tree = write_image_folder(tmp_path / "images", 2, 1)
    bomb = tree / "train" / "cat" / "zzz.png"
    bomb.write_bytes(_png_claiming(100_000, 100_000))
    out = tmp_path / "work" / "cifar10"
    expected = r"zzz.png declares more pixels than Pillow allows .*: over the 67,108,864-pixel cap \(MAX_IMAGE_PIXELS"
    with pytest.raises(TooLargeError, match=expected):
        prepare(str(tree), None, out)
    _assert_nothing_prepared(out)
    with pytest.raises(TooLargeError, match=expected):
        read_image(bomb)


def test_an_image_past_the_pixel_cap_is_refused_from_its_header(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Below Pillow's own limit, the project's cap refuses: checked on the header, before any pixel is decoded."""
    monkeypatch.setattr(untrusted, "MAX_IMAGE_PIXELS", 48 * 48)
    tree = write_image_folder(tmp_path / "images", 2, 1)
    (tree / "train" / "cat" / "zzz.png").write_bytes(_png_claiming(64, 64))  # no pixel data: decoding would fail
    out = tmp_path / "work" / "cifar10"
    expected = r"zzz.png is 64x64 pixels: over the 2,304-pixel cap \(MAX_IMAGE_PIXELS in mobitune/training/untrusted.py"
    with pytest.raises(TooLargeError, match=expected):
        prepare(str(tree), None, out)
    _assert_nothing_prepared(out)
    with pytest.raises(TooLargeError, match=expected):
        read_image(tree / "train" / "cat" / "zzz.png")
    assert read_image(next((tree / "test" / "cat").iterdir())).shape == (3, 32, 32), "an image under the cap"


def _download_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "download"
    folder.mkdir()
    return folder


@pytest.mark.e2e
def test_a_download_announcing_more_than_the_cap_is_refused_up_front(
    http_root: tuple[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    base, served = http_root
    monkeypatch.setattr(fetch_module, "MAX_DOWNLOAD_BYTES", 64 * 1024)
    (served / "security-big.tar.gz").write_bytes(bytes(_MIB))
    (served / "security-at-cap.tar.gz").write_bytes(bytes(64 * 1024))
    folder = _download_folder(tmp_path)
    with pytest.raises(DownloadTooLarge) as refused:
        fetch(f"{base}/security-big.tar.gz", folder, key="data.source")
    message = str(refused.value)
    assert message.startswith(f"data.source {base}/security-big.tar.gz: the server announces 1,048,576 bytes")
    assert "the download cap is 65,536 bytes (MAX_DOWNLOAD_BYTES in mobitune/storage/fetch.py)" in message
    assert list(folder.iterdir()) == [], "a partial or scratch file was left behind"
    got = fetch(f"{base}/security-at-cap.tar.gz", folder, key="data.source")
    assert got.stat().st_size == 64 * 1024 and list(folder.iterdir()) == [got], "a file just at the cap is kept"


class _UnannouncedBody(http.server.BaseHTTPRequestHandler):
    """Answers ``GET /<n>`` with n zero bytes and no Content-Length: the body ends when the connection closes,
    so only counting what arrives can bound it."""

    def do_GET(self) -> None:
        size = int(self.path.rsplit("/", 1)[-1])
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.end_headers()
        try:
            for start in range(0, size, 64 * 1024):
                self.wfile.write(bytes(min(64 * 1024, size - start)))
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client stopped reading: what a capped download does

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def unannounced_server() -> Iterator[str]:
    """A loopback HTTP/1.0 server that never says how large its answers are; returns its base URL."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _UnannouncedBody)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.mark.e2e
def test_a_download_sending_past_the_cap_without_a_size_is_cut_off(
    unannounced_server: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(fetch_module, "MAX_DOWNLOAD_BYTES", 64 * 1024)
    folder = _download_folder(tmp_path)
    with pytest.raises(DownloadTooLarge) as refused:
        fetch(f"{unannounced_server}/{4 * _MIB}", folder, key="model.pretrained")
    message = str(refused.value)
    assert f"model.pretrained {unannounced_server}/{4 * _MIB}: the server kept sending past the cap" in message
    assert "download it yourself and point model.pretrained at the copy, or raise that cap" in message
    assert list(folder.iterdir()) == [], "a partial or scratch file was left behind"
    out = tmp_path / "work" / "cifar10"
    with pytest.raises(DownloadTooLarge):
        prepare(f"{unannounced_server}/{4 * _MIB}", None, out)
    _assert_nothing_prepared(out)
    got = fetch(f"{unannounced_server}/{64 * 1024}", folder, key="model.pretrained")
    assert got.stat().st_size == 64 * 1024, "an answer just at the cap is kept whole"


# --- the orchestrator (issue 37 item 1) ---
# The Prefect API runs code on every worker (a deployment with a shell pull step is a shell there), so the servers
# the tests start require the session's credential (helpers.PrefectServer, conftest.py): every client the suite
# starts sends it, and here a request without it, or with another, is refused by the real server before it does
# anything. `mobitune setup` warns when the API it configures answers without one on an address other than loopback.


def _api_call(
    server: PrefectServer, method: str, path: str, body: dict | None = None, **headers: str
) -> httpx.Response:
    """One request to ``server``'s API with exactly ``headers`` (none: no credential), as an outsider sends it."""
    return httpx.request(method, f"{server.api}/{path}", json=body, headers=headers, timeout=30)


def _basic(credential: str) -> str:
    return "Basic " + base64.b64encode(credential.encode()).decode()


@pytest.mark.e2e
def test_the_api_answers_no_request_without_the_credential(prefect_server: PrefectServer) -> None:
    for path in ("admin/version", "flows/filter", "work_pools/filter", "deployments/filter"):
        method = "GET" if path == "admin/version" else "POST"
        assert _api_call(prefect_server, method, path).status_code == 401, path
        wrong = _basic(prefect_server.auth_string + "x")
        assert _api_call(prefect_server, method, path, Authorization=wrong).status_code == 401, path
        bearer = f"Bearer {prefect_server.auth_string}"
        assert _api_call(prefect_server, method, path, Authorization=bearer).status_code == 401, path
        assert _api_call(prefect_server, method, path, **prefect_server.authorization).status_code == 200, path
    # Prefect leaves its health probe open (Kubernetes' probes): which is why setup's probe asks /admin/version
    assert _api_call(prefect_server, "GET", "health").status_code == 200


@pytest.mark.e2e
def test_a_deployment_and_a_flow_run_are_refused_without_the_credential_and_made_with_it(
    prefect_server: PrefectServer,
) -> None:
    """A deployment with a shell pull step on a pool of its own (no worker polls it, so nothing runs): refused
    without the credential, and nothing made; the same request with it is accepted, so the body was valid."""
    auth = prefect_server.authorization
    pool, name = "security-probe", f"shell-{uuid.uuid4().hex[:8]}"
    assert _api_call(prefect_server, "POST", "work_pools/", {"name": pool, "type": "process"}, **auth).is_success
    flow_id = _api_call(prefect_server, "POST", "flows/", {"name": "security-probe"}, **auth).json()["id"]
    shell = {"prefect.deployments.steps.run_shell_script": {"script": "exit 1"}}
    deployment = {"name": name, "flow_id": flow_id, "work_pool_name": pool, "pull_steps": [shell]}
    made: dict[str, str] = {}
    try:
        assert _api_call(prefect_server, "POST", "deployments/", deployment).status_code == 401
        mine = {"deployments": {"name": {"any_": [name]}}}
        assert _api_call(prefect_server, "POST", "deployments/filter", mine, **auth).json() == [], "nothing made"
        answer = _api_call(prefect_server, "POST", "deployments/", deployment, **auth)
        assert answer.status_code == 201, answer.text
        made["deployments"] = answer.json()["id"]
        run_path = f"deployments/{made['deployments']}/create_flow_run"
        assert _api_call(prefect_server, "POST", run_path, {}).status_code == 401
        assert _api_call(prefect_server, "POST", "flow_runs/filter", mine, **auth).json() == [], "no flow run made"
        answer = _api_call(prefect_server, "POST", run_path, {}, **auth)
        assert answer.status_code == 201, answer.text
        made["flow_runs"] = answer.json()["id"]
    finally:  # the session's server is shared: no scheduled run or stray pool left for other tests to find
        for kind in ("flow_runs", "deployments"):
            if kind in made:
                _api_call(prefect_server, "DELETE", f"{kind}/{made[kind]}", **auth)
        _api_call(prefect_server, "DELETE", f"work_pools/{pool}", **auth)


@pytest.mark.e2e
def test_mobitune_setup_without_the_credential_is_refused_and_says_what_to_set(
    prefect_server: PrefectServer, tmp_path: Path
) -> None:
    before = prefect_server.api_post("work_pools/filter", {})
    for credential in ("", "mobitune-tests:guessed"):
        env = {"PREFECT_API_URL": prefect_server.api, "PREFECT_API_AUTH_STRING": credential}
        refused = run(["mobitune", "setup", "--pool-type", "process"], tmp_path, check=False, env_extra=env)
        assert refused.returncode == 2, refused.stdout + refused.stderr
        assert "refused the credential (401 Unauthorized): set PREFECT_API_AUTH_STRING" in refused.stderr
        assert "Traceback" not in refused.stderr
    assert prefect_server.api_post("work_pools/filter", {}) == before, "nothing changed on the server"


@pytest.mark.e2e
def test_setups_probe_sees_the_servers_auth(prefect_server: PrefectServer) -> None:
    """The probe sends no credential: the real server's answer to it is 401, so setup has nothing to warn of."""
    assert status_without_credential(prefect_server.api) == 401
    assert open_api_message(prefect_server.api.replace("127.0.0.1", "10.20.30.40"), 401) is None


@pytest.mark.parametrize(
    "api",
    [
        "http://10.20.30.40:4200/api",
        "https://prefect.example.org/api",
        "http://127.0.0.1.evil.example:4200/api",  # a name that starts like loopback is another machine
        "http://localhost.evil:4200/api",
        "http://127.0.0.1@evil.example:4200/api",  # userinfo before the host
        "http://0.0.0.0:4200/api",  # every address of the machine, not loopback alone
        "http://[fe80::1]:4200/api",
    ],
)
def test_setup_warns_of_an_api_that_answers_without_a_credential_off_loopback(api: str) -> None:
    message = open_api_message(api, 200)
    assert message is not None and api in message
    assert "PREFECT_SERVER_API_AUTH_STRING" in message and "PREFECT_API_AUTH_STRING" in message


@pytest.mark.parametrize(
    "api",
    ["http://127.0.0.1:4200/api", "http://127.8.9.10:4200/api", "http://localhost:4200/api", "http://[::1]:4200/api"],
)
def test_setup_does_not_warn_of_an_open_api_on_loopback(api: str) -> None:
    assert open_api_message(api, 200) is None


@pytest.mark.parametrize("status", [401, 403, None])
def test_setup_does_not_warn_of_an_api_that_asks_for_a_credential_or_does_not_answer(status: int | None) -> None:
    assert open_api_message("http://10.20.30.40:4200/api", status) is None


def _compose() -> tuple[str, dict]:
    text = (ROOT / "docker-compose.yml").read_text()
    return text, yaml.safe_load(text)


def test_the_compose_file_requires_every_secret_and_has_no_default_one() -> None:
    """Each secret is `${NAME:?...}` wherever it is used (never `${NAME:-default}`, never a literal), and
    .env.example lists each with a placeholder and the line that makes real ones. (`make test-containers` starts
    the stack with them and checks that it refuses to start without each.)"""
    text, compose = _compose()
    uses = re.findall(r"\$\{(\w+)(:?[-?])?", text)
    for name in COMPOSE_SECRETS:
        forms = {form for used, form in uses if used == name}
        assert forms == {":?"}, f"{name}: {forms or 'never used'}"
    assert "minioadmin" not in text
    assert compose["services"]["postgres"]["environment"]["POSTGRES_PASSWORD"].startswith("${POSTGRES_PASSWORD:?")
    example = dict(re.findall(r"^(\w+)=(.*)$", (ROOT / ".env.example").read_text(), re.MULTILINE))
    assert set(COMPOSE_SECRETS) <= set(example)
    assert all("replace" in example[name] for name in COMPOSE_SECRETS), "placeholders, not values to keep"
    assert "openssl rand -hex 24" in (ROOT / ".env.example").read_text()


def _clients(services: dict) -> list[str]:
    """The compose services that talk to Prefect and S3: a worker per GPU, the sweeps' worker, the deployment."""
    gpu_workers = [name for name in services if name.startswith("worker-gpu")]
    assert len(gpu_workers) >= 2, "a worker per GPU"
    return [*gpu_workers, "sweeps", "deploy"]


def test_the_compose_server_requires_auth_and_csrf_and_every_client_sends_the_credential() -> None:
    _, compose = _compose()
    services = compose["services"]
    server = services["prefect"]["environment"]
    assert server["PREFECT_SERVER_API_AUTH_STRING"].startswith("${PREFECT_API_AUTH_STRING:?")
    assert server["PREFECT_SERVER_CSRF_PROTECTION_ENABLED"] == "true"
    assert "*" not in server["PREFECT_SERVER_CORS_ALLOWED_ORIGINS"]
    assert server["PREFECT_UI_API_URL"] == server["PREFECT_SERVER_CORS_ALLOWED_ORIGINS"] + "/api", "the UI's origin"
    for name in _clients(services):
        client = services[name]["environment"]
        assert client["PREFECT_API_AUTH_STRING"].startswith("${PREFECT_API_AUTH_STRING:?"), name


def test_minios_root_account_makes_the_bucket_and_the_project_user_and_nothing_else_uses_it() -> None:
    _, compose = _compose()
    services = compose["services"]
    for name, service in services.items():
        if name not in ("minio", "create-bucket"):
            assert "MINIO_ROOT" not in json.dumps(service), f"{name} has MinIO's root account"
    for name in _clients(services):
        assert services[name]["environment"]["AWS_ACCESS_KEY_ID"].startswith("${AWS_ACCESS_KEY_ID:?"), name
    script = services["create-bucket"]["command"][0]
    for step in ("mc mb --ignore-existing root/mobitune", "mc admin policy create root mobitune-bucket"):
        assert step in script
    assert 'mc admin user add root "$$AWS_ACCESS_KEY_ID"' in script
    assert 'mc admin policy attach root mobitune-bucket --user "$$AWS_ACCESS_KEY_ID"' in script


@pytest.mark.e2e
def test_the_project_users_policy_admits_the_bucket_mobitune_alone(tmp_path: Path) -> None:
    """The compose file's policy for the project's MinIO user, enforced by moto's S3 server with IAM checks on
    (after the first 5 requests, which set it up with no key): MinIO takes the same policy language."""
    import boto3
    from botocore.exceptions import ClientError

    _, compose = _compose()
    policy = compose["services"]["create-bucket"]["environment"]["PROJECT_POLICY"]
    moto = MotoProcess(tmp_path, INITIAL_NO_AUTH_ACTION_COUNT="5").start()
    try:
        setup = {"endpoint_url": moto.endpoint, "aws_access_key_id": "setup", "aws_secret_access_key": "setup"}
        root_s3, iam = boto3.client("s3", **setup), boto3.client("iam", **setup)
        root_s3.create_bucket(Bucket="mobitune")
        root_s3.create_bucket(Bucket="another-team")
        iam.create_user(UserName="mobitune")
        iam.put_user_policy(UserName="mobitune", PolicyName="mobitune-bucket", PolicyDocument=policy)
        key = iam.create_access_key(UserName="mobitune")["AccessKey"]
        keys = {"aws_access_key_id": key["AccessKeyId"], "aws_secret_access_key": key["SecretAccessKey"]}
        project_s3 = boto3.client("s3", endpoint_url=moto.endpoint, **keys)
        project_s3.put_object(Bucket="mobitune", Key="results/a.json", Body=b"{}")
        assert project_s3.get_object(Bucket="mobitune", Key="results/a.json")["Body"].read() == b"{}"
        assert project_s3.list_objects_v2(Bucket="mobitune")["KeyCount"] == 1
        project_s3.delete_object(Bucket="mobitune", Key="results/a.json")
        refused = {
            "write another bucket": lambda: project_s3.put_object(Bucket="another-team", Key="x", Body=b"x"),
            "list another bucket": lambda: project_s3.list_objects_v2(Bucket="another-team"),
            "make a bucket": lambda: project_s3.create_bucket(Bucket="new-bucket"),
            "delete the bucket": lambda: project_s3.delete_bucket(Bucket="mobitune"),
            "make a user": lambda: boto3.client("iam", endpoint_url=moto.endpoint, **keys).create_user(UserName="x"),
        }
        for attack, call in refused.items():
            try:
                call()
            except ClientError as refusal:
                assert refusal.response["Error"]["Code"] == "AccessDenied", attack
            else:
                raise AssertionError(f"the project user could {attack}")
    finally:
        moto.stop()


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


def test_the_prefect_server_refuses_a_slot_run_whose_names_leave_the_slots_folder(prefect_server) -> None:
    """The attack as a caller of the API makes it, on a deployment of ``trial-slot`` with the flow's own parameter
    schema (as ``prefect deploy`` registers it, which enforces it): runs with ``..`` names are refused."""
    flow = prefect_server.api_post("flows/", {"name": "trial-slot"})
    deployment = prefect_server.api_post(
        "deployments/",
        {
            "name": f"security-{uuid.uuid4().hex[:8]}",
            "flow_id": flow["id"],
            "entrypoint": "flows/trial.py:trial_slot",
            "parameter_openapi_schema": parameter_schema(trial_slot).model_dump(),
            "enforce_parameter_schema": True,
        },
    )
    create_run = f"deployments/{deployment['id']}/create_flow_run"
    for parameters in ({"sweep_id": "..", "slot": ".."}, {"sweep_id": "s1", "slot": "../../x"}):
        with pytest.raises(urllib.error.HTTPError) as refused:
            prefect_server.api_post(create_run, {"parameters": parameters})
        assert refused.value.code in (409, 422), parameters
    accepted = prefect_server.api_post(create_run, {"parameters": {"sweep_id": "s1", "slot": "s1-slot-1"}})
    assert accepted["parameters"] == {"sweep_id": "s1", "slot": "s1-slot-1"}, "the same request with names passes"
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


@pytest.fixture
def own_bucket(s3_server, monkeypatch: pytest.MonkeyPatch) -> tuple[Any, str]:
    """The session's S3 server and a new bucket of its own on it. Not the ``s3`` fixture, which empties the
    server: the session's shared sweeps keep their buckets while these tests run."""
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_server.endpoint)
    return s3_server, s3_server.bucket(f"security-{uuid.uuid4().hex[:12]}")


@pytest.mark.parametrize("path", ["../../../outside/evil.txt", "/tmp/evil.txt", "trials/../../../evil.txt"])
def test_a_manifest_cannot_place_files_outside_the_download_folder(
    own_bucket: tuple[Any, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, path: str
) -> None:
    """``mobitune export s3://…`` and ``mobitune exp-import s3://…`` against a bucket a writer tampered with."""
    s3, bucket = own_bucket
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


def test_a_file_changed_after_publishing_is_refused_before_it_is_kept(
    own_bucket: tuple[Any, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    s3, bucket = own_bucket
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
    tmp_path: Path, cifar_archive: Path, basic_auth_archive: str, own_bucket: tuple[Any, str], shared_prefect
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
    s3, bucket = own_bucket
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
