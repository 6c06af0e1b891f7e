"""Bring a file named by a param (path, file://, http(s)://, s3://) to local disk.

An http(s) or S3 download is capped (``MAX_DOWNLOAD_BYTES``): refused up front by its Content-Length, and cut off
by counting the bytes as they arrive where the server announces no size (one that announces less than it
sends is read no further than it announced); what was written of a refused download is removed.
"""

from __future__ import annotations

import base64
import urllib.error
import urllib.parse
import urllib.request
from http.client import HTTPResponse
from pathlib import Path, PurePosixPath
from typing import BinaryIO

from tqdm import tqdm

from mobitune.errors import MobituneError
from mobitune.storage import stores as storage

# The largest http(s) download: the official CIFAR-10 archive is 170 MB and a MobileNetV2 state dict 14 MB;
# 4 GiB leaves room for image-folder archives of larger images (the decoder's MAX_UNPACKED_BYTES is 4 GiB too)
# and stops a server whose answer never ends from filling the disk.
MAX_DOWNLOAD_BYTES = 4 * 2**30
_CHUNK_BYTES = 1 << 20


class FetchError(MobituneError):
    """The source cannot be reached or does not exist."""


class DownloadTooLarge(FetchError):
    """An http(s) source is larger than ``MAX_DOWNLOAD_BYTES``."""


def fetch(source: str, workdir: Path, key: str) -> Path:
    """Return a local path for ``source``, downloading into ``workdir`` when remote.

    ``key`` is the param that named the source, so messages can point at it.
    """
    parts = urllib.parse.urlsplit(source)
    scheme = parts.scheme.lower()
    name = PurePosixPath(parts.path).name or "download"
    if scheme in ("http", "https"):
        return _fetch_http(source, workdir / name, key)
    if scheme == "s3":
        try:
            storage.download_file(source, workdir / name, MAX_DOWNLOAD_BYTES)
        except storage.StorageError as exc:
            raise FetchError(f"{key} {source}: {exc}") from None
        return workdir / name
    path = Path(urllib.parse.unquote(parts.path)) if scheme == "file" else Path(source)
    if not path.exists():
        raise FetchError(
            f"{key} {source}: no such file or folder; give an existing path, "
            "a file:// or http(s):// URL, or an s3://bucket/key object"
        )
    return path


def _fetch_http(url: str, target: Path, key: str) -> Path:
    """Download ``url`` to ``target`` through a scratch file, which is removed when anything goes wrong."""
    public = storage.public_uri(url)
    try:
        with urllib.request.urlopen(_request(url), timeout=60) as response, storage.atomic_path(target) as scratch:
            total = _declared_length(response)
            if total is not None and total > MAX_DOWNLOAD_BYTES:
                raise _too_large(key, public, f"the server announces {total:,} bytes")
            with open(scratch, "wb") as out:
                received = _copy_capped(response, out, total, target.name)
            if received > MAX_DOWNLOAD_BYTES:
                raise _too_large(key, public, "the server kept sending past the cap, without announcing a size")
            if total is not None and received != total:
                raise FetchError(f"{key} {public}: download truncated ({received} of {total} bytes); try again")
    except urllib.error.HTTPError as exc:
        raise FetchError(f"{key} {public}: the server answered HTTP {exc.code} {exc.reason}") from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise FetchError(
            f"{key} {public} is unreachable ({reason}). If this machine is offline, copy the "
            f"file here and point {key} at it, e.g. dvc exp run -S {key}=/path/to/file"
        ) from None
    return target


def _request(url: str) -> urllib.request.Request:
    """A GET of ``url``; a ``user:password@`` in it is sent as HTTP Basic authentication (urllib would take it for
    part of the host name), never kept in the URL that is logged or recorded."""
    parts = urllib.parse.urlsplit(url)
    if parts.username is None:
        return urllib.request.Request(url)
    host = parts.hostname or ""
    netloc = f"[{host}]" if ":" in host else host
    netloc += f":{parts.port}" if parts.port else ""
    credential = f"{urllib.parse.unquote(parts.username)}:{urllib.parse.unquote(parts.password or '')}"
    token = base64.b64encode(credential.encode()).decode()
    return urllib.request.Request(parts._replace(netloc=netloc).geturl(), headers={"Authorization": f"Basic {token}"})


def _declared_length(response: HTTPResponse) -> int | None:
    try:
        return int(response.headers.get("Content-Length") or 0) or None
    except ValueError:  # a Content-Length that is no number announces nothing: the bytes are counted all the same
        return None


def _copy_capped(response: HTTPResponse, out: BinaryIO, total: int | None, name: str) -> int:
    """Copy the body to ``out``, reading at most one byte past ``MAX_DOWNLOAD_BYTES`` whatever the server sends;
    returns the bytes read (past the cap: the body was longer)."""
    received = 0
    with tqdm(total=total, unit="B", unit_scale=True, desc=name, disable=None) as bar:
        while chunk := response.read(min(_CHUNK_BYTES, MAX_DOWNLOAD_BYTES + 1 - received)):
            out.write(chunk)
            received += len(chunk)
            bar.update(len(chunk))
    return received


def _too_large(key: str, public: str, what: str) -> DownloadTooLarge:
    return DownloadTooLarge(
        f"{key} {public}: {what}; the download cap is {MAX_DOWNLOAD_BYTES:,} bytes (MAX_DOWNLOAD_BYTES in "
        "mobitune/storage/fetch.py). Refused, and nothing of it was kept. Check the URL; if it is the file you "
        f"mean, download it yourself and point {key} at the copy, or raise that cap"
    )
