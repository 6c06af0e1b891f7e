"""Bring a file named by a param (path, file://, http(s)://, s3://) to local disk."""

from __future__ import annotations

import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path, PurePosixPath

from tqdm import tqdm

from mobitune.errors import MobituneError
from mobitune.storage import stores as storage


class FetchError(MobituneError):
    """The source cannot be reached or does not exist."""


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
            storage.download_file(source, workdir / name)
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
    public = storage.public_uri(url)
    try:
        with urllib.request.urlopen(url, timeout=60) as response, open(target, "wb") as out:
            total = int(response.headers.get("Content-Length") or 0) or None
            received = 0
            with tqdm(total=total, unit="B", unit_scale=True, desc=target.name, disable=None) as bar:
                while chunk := response.read(1 << 20):
                    out.write(chunk)
                    received += len(chunk)
                    bar.update(len(chunk))
    except urllib.error.HTTPError as exc:
        raise FetchError(f"{key} {public}: the server answered HTTP {exc.code} {exc.reason}") from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise FetchError(
            f"{key} {public} is unreachable ({reason}). If this machine is offline, copy the "
            f"file here and point {key} at it, e.g. dvc exp run -S {key}=/path/to/file"
        ) from None
    if total is not None and received != total:
        raise FetchError(f"{key} {public}: download truncated ({received} of {total} bytes); try again")
    return target
