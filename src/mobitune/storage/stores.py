"""All S3 access (boto3) and the artifact stores sweeps publish to.

The endpoint comes from ``AWS_ENDPOINT_URL`` and credentials from the
standard AWS chain; neither is ever written to params, logs or artifacts.
Transient faults are retried with back-off by botocore's standard retry mode; an upload is one
whole ``put_object`` whose SHA-256 is checked after it lands.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import urllib.parse
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from tqdm import tqdm

from mobitune.errors import EndpointUnreachable, StorageError
from mobitune.params import parse_s3_uri

T = TypeVar("T")

# botocore's "standard" retry mode: connection errors, 5xx and throttling again, with exponential back-off
RETRY_ATTEMPTS = 4


def endpoint_name() -> str:
    return os.environ.get("AWS_ENDPOINT_URL") or "the default AWS S3 endpoint"


def s3_client():  # noqa: ANN201 - boto3 clients are generated types
    import boto3
    from botocore.config import Config

    config = Config(
        connect_timeout=5, read_timeout=60, retries={"total_max_attempts": RETRY_ATTEMPTS, "mode": "standard"}
    )
    return boto3.client("s3", config=config)


def _explain(exc: Exception, uri: str) -> StorageError:
    from botocore.exceptions import (
        ClientError,
        EndpointConnectionError,
        NoCredentialsError,
        PartialCredentialsError,
    )

    if isinstance(exc, EndpointConnectionError | ConnectionError):
        return EndpointUnreachable(
            f"S3 endpoint {endpoint_name()} is unreachable while accessing {uri}; check "
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


def s3_call(action: Callable[[], T], uri: str) -> T:
    """Run an S3 call (botocore's client retries transient faults itself); a failure as what to do."""
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        return action()
    except (BotoCoreError, ClientError, ConnectionError) as exc:
        raise _explain(exc, uri) from None


def download_file(uri: str, target: Path) -> None:
    """Download one object with a progress bar; ``target`` appears only when complete."""
    location = parse_s3_uri(uri)
    if not location.key:
        raise StorageError(f"{uri!r} names a bucket, not an object; write s3://bucket/key")
    client = s3_client()
    size = s3_call(lambda: client.head_object(Bucket=location.bucket, Key=location.key), uri)["ContentLength"]
    partial = target.with_name(target.name + ".part")
    with tqdm(total=size, unit="B", unit_scale=True, desc=target.name, disable=None) as bar:
        s3_call(
            lambda: client.download_file(location.bucket, location.key, str(partial), Callback=bar.update),
            uri,
        )
    os.replace(partial, target)


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temp file and rename: never half-written."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def public_uri(uri: str) -> str:
    """``uri`` with any user:password stripped, safe to log."""
    parts = urllib.parse.urlsplit(uri)
    if parts.password or parts.username:
        return urllib.parse.urlunsplit(parts._replace(netloc=parts.hostname or ""))
    return uri


class ArtifactStore:
    """Where sweep artifacts live: a local folder or an S3 prefix, same relative keys."""

    def put_file(self, key: str, path: Path) -> None:
        raise NotImplementedError

    def get_file(self, key: str, path: Path) -> bool:
        """Copy ``key`` to ``path`` (atomically); False when the store has no such key."""
        raise NotImplementedError

    def check(self) -> None:
        """Raise :class:`StorageError` now if the store cannot be used at all."""


class LocalStore(ArtifactStore):
    def __init__(self, root: Path) -> None:
        self.root = Path(root).resolve()

    def put_file(self, key: str, path: Path) -> None:
        target = self.root / key
        if Path(path).resolve() != target:
            atomic_write_bytes(target, Path(path).read_bytes())

    def get_file(self, key: str, path: Path) -> bool:
        source = self.root / key
        if not source.exists():
            return False
        if source != Path(path).resolve():
            atomic_write_bytes(Path(path), source.read_bytes())
        return True


class S3Store(ArtifactStore):
    """Whole-object uploads, each verified by reading back its SHA-256."""

    def __init__(self, uri: str) -> None:
        location = parse_s3_uri(uri)
        self.bucket, self.prefix = location.bucket, location.key
        self.uri = location.uri
        self.client = s3_client()

    def _key(self, key: str) -> str:
        return f"{self.prefix}/{key}" if self.prefix else key

    def check(self) -> None:
        # a listing (not head_bucket) so errors come with their S3 code: NoSuchBucket, InvalidAccessKeyId
        s3_call(lambda: self.client.list_objects_v2(Bucket=self.bucket, Prefix=self.prefix, MaxKeys=1), self.uri)

    def put_file(self, key: str, path: Path) -> None:
        data = Path(path).read_bytes()
        digest = sha256_bytes(data)
        uri = f"s3://{self.bucket}/{self._key(key)}"

        def upload_and_verify() -> None:
            self.client.put_object(Bucket=self.bucket, Key=self._key(key), Body=data, Metadata={"sha256": digest})
            stored = self.client.get_object(Bucket=self.bucket, Key=self._key(key))["Body"].read()
            if sha256_bytes(stored) != digest:
                raise StorageError(f"{uri}: stored object does not match the local file's SHA-256")

        s3_call(upload_and_verify, uri)

    def get_file(self, key: str, path: Path) -> bool:
        from botocore.exceptions import ClientError

        uri = f"s3://{self.bucket}/{self._key(key)}"

        def download() -> bytes | None:
            try:
                return self.client.get_object(Bucket=self.bucket, Key=self._key(key))["Body"].read()
            except ClientError as exc:
                if exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
                    return None
                raise

        data = s3_call(download, uri)
        if data is None:
            return False
        atomic_write_bytes(Path(path), data)
        return True


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


def open_store(uri: str | None, local_root: Path) -> ArtifactStore:
    """``s3://bucket/prefix`` → :class:`S3Store`; None → :class:`LocalStore` at ``local_root``."""
    return S3Store(uri) if uri else LocalStore(local_root)
