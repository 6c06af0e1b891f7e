"""All S3 access (boto3) and the artifact stores sweeps publish to.

The endpoint comes from ``AWS_ENDPOINT_URL`` and credentials from the
standard AWS chain; neither is ever written to params, logs or artifacts.
Transient faults are retried with back-off by botocore's standard retry mode; an endpoint that does not
answer at all (restarted, unreachable) is tried again with back-off for ``storage.outage_s`` where a sweep's
trials and mailboxes use the store. An upload is one whole ``put_object`` whose SHA-256 is checked after it
lands.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import secrets
import shutil
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from tqdm import tqdm

from mobitune.errors import EndpointUnreachable, StorageError
from mobitune.params import S3_URI, S3_URI_RULE
from mobitune.redaction import public_url
from mobitune.storage.names import check_relative, path_inside

T = TypeVar("T")

# botocore's "standard" retry mode: connection errors, 5xx and throttling again, with exponential back-off
RETRY_ATTEMPTS = 4
OUTAGE_BACKOFF_MAX_S = 5.0  # while an endpoint does not answer: tries 1, 2, 4, 5, 5, ... s apart


@dataclass(frozen=True)
class S3Location:
    bucket: str
    key: str

    @property
    def uri(self) -> str:
        return f"s3://{self.bucket}/{self.key}" if self.key else f"s3://{self.bucket}"


def parse_s3_uri(uri: str) -> S3Location:
    match = S3_URI.match(uri)
    if not match:
        raise StorageError(f"{uri!r} {S3_URI_RULE}")
    return S3Location(match["bucket"], (match["key"] or "").strip("/"))


def endpoint_name() -> str:
    return os.environ.get("AWS_ENDPOINT_URL") or "the default AWS S3 endpoint"


def s3_client():  # noqa: ANN201 - boto3 clients are generated types
    import boto3
    from botocore.config import Config

    config = Config(
        connect_timeout=5, read_timeout=60, retries={"total_max_attempts": RETRY_ATTEMPTS, "mode": "standard"}
    )
    return boto3.client("s3", config=config)


def _explain(exc: Exception, uri: str, outage_s: float = 0) -> StorageError:
    from botocore.exceptions import (
        ClientError,
        EndpointConnectionError,
        NoCredentialsError,
        PartialCredentialsError,
    )

    if isinstance(exc, EndpointConnectionError | ConnectionError):
        tried = f" for {outage_s:g} s (storage.outage_s)" if outage_s else ""
        return EndpointUnreachable(
            f"S3 endpoint {endpoint_name()} is unreachable{tried} while accessing {uri}; check "
            "AWS_ENDPOINT_URL and that the server is up"
        )
    if isinstance(exc, NoCredentialsError | PartialCredentialsError):
        return StorageError(
            f"no AWS credentials for {uri}; set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY "
            "(or an AWS profile) in the environment"
        )
    if isinstance(exc, ClientError):
        code = exc.response.get("Error", {}).get("Code", "")
        if code in ("NoSuchBucket",):
            return StorageError(f"bucket of {uri} does not exist on {endpoint_name()}; create it first")
        if code in ("NoSuchKey", "404", "NotFound"):
            return StorageError(f"{uri} not found on {endpoint_name()}")
        if code in ("InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied", "403"):
            return StorageError(
                f"S3 refused the credentials for {uri} ({code}); check AWS_ACCESS_KEY_ID / "
                "AWS_SECRET_ACCESS_KEY or the AWS profile"
            )
        return StorageError(f"S3 error {code or exc} for {uri} on {endpoint_name()}")
    return StorageError(f"S3 error for {uri} on {endpoint_name()}: {type(exc).__name__}")


def s3_call(action: Callable[[], T], uri: str, outage_s: float = 0) -> T:
    """Run an S3 call (botocore's client retries transient faults itself); a failure as what to do.

    An endpoint that does not answer (connection refused, reset or timed out) is tried again with back-off
    until ``outage_s`` seconds have passed since the first failure: a restarted S3 server costs the caller a
    wait, not its work.
    """
    from botocore.exceptions import BotoCoreError, ClientError, HTTPClientError
    from botocore.exceptions import ConnectionError as BotoConnectionError

    unanswered_since: float | None = None
    delay = 1.0
    while True:
        try:
            result = action()
        except (BotoConnectionError, HTTPClientError, ConnectionError) as exc:
            now = time.monotonic()
            if unanswered_since is None:
                unanswered_since = now
                if outage_s:
                    print(
                        f"S3 endpoint {endpoint_name()} does not answer ({type(exc).__name__}); "
                        f"trying {uri} again for up to {outage_s:g} s (storage.outage_s)",
                        file=sys.stderr,
                        flush=True,
                    )
            if now - unanswered_since + delay > outage_s:
                raise _explain(exc, uri, outage_s) from None
            time.sleep(delay)
            delay = min(2 * delay, OUTAGE_BACKOFF_MAX_S)
        except (BotoCoreError, ClientError) as exc:
            raise _explain(exc, uri) from None
        else:
            if unanswered_since is not None:
                waited = time.monotonic() - unanswered_since
                print(f"S3 endpoint {endpoint_name()} answers again after {waited:.0f} s", file=sys.stderr, flush=True)
            return result


def download_file(uri: str, target: Path, max_bytes: int | None = None) -> None:
    """Download one object with a progress bar; ``target`` appears only when complete. An object larger than
    ``max_bytes`` is refused before any of it is read."""
    location = parse_s3_uri(uri)
    if not location.key:
        raise StorageError(f"{uri!r} names a bucket, not an object; write s3://bucket/key")
    client = s3_client()
    size = s3_call(lambda: client.head_object(Bucket=location.bucket, Key=location.key), uri)["ContentLength"]
    if max_bytes is not None and size > max_bytes:
        raise StorageError(f"{uri} is {size:,} bytes, over the download cap of {max_bytes:,}; refused, nothing kept")
    partial = target.with_name(target.name + ".part")
    with tqdm(total=size, unit="B", unit_scale=True, desc=target.name, disable=None) as bar:
        s3_call(
            lambda: client.download_file(location.bucket, location.key, str(partial), Callback=bar.update),
            uri,
        )
    os.replace(partial, target)


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """A scratch file beside ``path`` to write to: renamed to ``path`` when the block ends, removed when it raises,
    so ``path`` is whole or as it was, never half-written (an interrupted stage, checkpoint or export)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    scratch = _new_scratch(path)
    try:
        yield scratch
        os.replace(scratch, path)
    except BaseException:
        scratch.unlink(missing_ok=True)
        raise


def _new_scratch(path: Path) -> Path:
    """An empty file of a new name beside ``path``, created with the umask's mode like any file (0644 under the
    usual 022), so a results folder a team shares stays readable; ``tempfile.mkstemp`` would make it 0600."""
    while True:
        scratch = path.with_name(f".{path.name}.{secrets.token_hex(4)}")
        try:
            os.close(os.open(scratch, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
            return scratch
        except FileExistsError:
            continue


def atomic_write_bytes(path: Path, data: bytes) -> None:
    with atomic_path(path) as scratch:
        scratch.write_bytes(data)


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


LOCAL_ROOT = "artifacts"  # the local artifact folder (mobitune sweep's --local-root): sweeps, caches, checkpoints


def public_uri(uri: str) -> str:
    """``uri`` without its credentials (user:password, query string), safe to log and to record."""
    return public_url(uri)


class ArtifactStore:
    """Where sweep artifacts live: a local folder or an S3 prefix, same relative keys."""

    def put_bytes(self, key: str, data: bytes) -> None:
        raise NotImplementedError

    def get_bytes(self, key: str) -> bytes | None:
        """The object at ``key``; None when the store has no such key."""
        raise NotImplementedError

    def put_file(self, key: str, path: Path) -> None:
        self.put_bytes(key, Path(path).read_bytes())

    def get_file(self, key: str, path: Path) -> bool:
        """Copy ``key`` to ``path`` (atomically); False when the store has no such key."""
        data = self.get_bytes(key)
        if data is None:
            return False
        atomic_write_bytes(Path(path), data)
        return True

    def check(self) -> None:
        """Raise :class:`StorageError` now if the store cannot be used at all."""

    def modified_times(self, prefix: str) -> dict[str, float]:
        """Every key under ``prefix/`` and when it was last written (seconds since the epoch)."""
        raise NotImplementedError

    def delete_prefix(self, prefix: str) -> None:
        """Remove every key under ``prefix/``."""
        raise NotImplementedError


class LocalStore(ArtifactStore):
    """Keys are paths under ``root``; one that would lead outside it (``..``, absolute, a link out) is refused
    before anything is read, written or removed."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root).resolve()

    def _path(self, key: str) -> Path:
        return path_inside(self.root, key, "store key")

    def put_bytes(self, key: str, data: bytes) -> None:
        atomic_write_bytes(self._path(key), data)

    def get_bytes(self, key: str) -> bytes | None:
        try:
            return self._path(key).read_bytes()
        except FileNotFoundError:
            return None

    def put_file(self, key: str, path: Path) -> None:
        if Path(path).resolve() != self._path(key):
            super().put_file(key, path)

    def get_file(self, key: str, path: Path) -> bool:
        if Path(path).resolve() == self._path(key):
            return self._path(key).exists()
        return super().get_file(key, path)

    def modified_times(self, prefix: str) -> dict[str, float]:
        files = (path for path in self._path(prefix).rglob("*") if path.is_file())
        return {path.relative_to(self.root).as_posix(): path.stat().st_mtime for path in files}

    def delete_prefix(self, prefix: str) -> None:
        shutil.rmtree(self._path(prefix), ignore_errors=True)


class S3Store(ArtifactStore):
    """Whole-object uploads, each verified by reading back its SHA-256."""

    def __init__(self, uri: str, outage_s: float = 0) -> None:
        """``outage_s``: how long each call rides out an endpoint that does not answer (0: fail at once)."""
        location = parse_s3_uri(uri)
        self.bucket, self.prefix = location.bucket, location.key
        self.uri = location.uri
        self.client = s3_client()
        self.outage_s = outage_s

    def _key(self, key: str) -> str:
        """The object key of ``key`` under the store's prefix; a key with ``..`` or a leading ``/`` is refused,
        since the same keys name files on local disk."""
        if key:
            check_relative(key, "store key")
        return f"{self.prefix}/{key}" if self.prefix else key

    def check(self) -> None:
        # a listing (not head_bucket) so errors come with their S3 code: NoSuchBucket, InvalidAccessKeyId
        s3_call(lambda: self.client.list_objects_v2(Bucket=self.bucket, Prefix=self.prefix, MaxKeys=1), self.uri)

    def put_bytes(self, key: str, data: bytes) -> None:
        digest = sha256_bytes(data)
        uri = f"s3://{self.bucket}/{self._key(key)}"

        def upload_and_verify() -> None:
            self.client.put_object(Bucket=self.bucket, Key=self._key(key), Body=data, Metadata={"sha256": digest})
            stored = self.client.get_object(Bucket=self.bucket, Key=self._key(key))["Body"].read()
            if sha256_bytes(stored) != digest:
                raise StorageError(f"{uri}: stored object does not match the local file's SHA-256")

        s3_call(upload_and_verify, uri, self.outage_s)

    def get_bytes(self, key: str) -> bytes | None:
        from botocore.exceptions import ClientError

        def download() -> bytes | None:
            try:
                return self.client.get_object(Bucket=self.bucket, Key=self._key(key))["Body"].read()
            except ClientError as exc:
                if exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
                    return None
                raise

        return s3_call(download, f"s3://{self.bucket}/{self._key(key)}", self.outage_s)

    def _listing(self, prefix: str) -> list[dict]:
        paginator = self.client.get_paginator("list_objects_v2")
        pages = paginator.paginate(Bucket=self.bucket, Prefix=self._key(prefix) + "/")
        return [item for page in pages for item in page.get("Contents", [])]

    def modified_times(self, prefix: str) -> dict[str, float]:
        listing = s3_call(lambda: self._listing(prefix), f"s3://{self.bucket}/{self._key(prefix)}/", self.outage_s)
        start = len(self._key(""))
        return {item["Key"][start:]: item["LastModified"].timestamp() for item in listing}

    def delete_prefix(self, prefix: str) -> None:
        uri = f"s3://{self.bucket}/{self._key(prefix)}/"

        def delete_all() -> None:
            keys = [{"Key": item["Key"]} for item in self._listing(prefix)]
            for start in range(0, len(keys), 1000):  # the most one DeleteObjects takes
                self.client.delete_objects(Bucket=self.bucket, Delete={"Objects": keys[start : start + 1000]})

        s3_call(delete_all, uri, self.outage_s)


def check_storage(uri: str | None, allow_unreachable: bool) -> str | None:
    """Fail now on a store that cannot work (missing bucket, refused credentials).

    An unreachable endpoint is tolerated when ``allow_unreachable`` (trials
    keep results on local disk; publishing retries at the end): the warning
    to show is returned instead.
    """
    if uri is None:
        return None
    try:
        S3Store(uri).check()
    except EndpointUnreachable as exc:
        if not allow_unreachable:
            raise
        return f"{exc}; results stay on local disk until published"
    return None


def open_store(uri: str | None, local_root: Path, outage_s: float = 0) -> ArtifactStore:
    """``s3://bucket/prefix`` → :class:`S3Store` (riding out ``outage_s`` of an endpoint that does not answer);
    None → :class:`LocalStore` at ``local_root``."""
    return S3Store(uri, outage_s) if uri else LocalStore(local_root)
