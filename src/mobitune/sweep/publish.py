"""A sweep folder's manifest, and publishing it to S3 (now, or later with ``mobitune push``)."""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mobitune.errors import MobituneError
from mobitune.storage.names import check_relative, path_inside
from mobitune.storage.records import write_json
from mobitune.storage.stores import ArtifactStore, EndpointUnreachable, S3Store, StorageError, atomic_write_bytes

MANIFEST = "manifest.json"


class PublishError(MobituneError):
    """Some objects could not be uploaded; they are safe on local disk."""

    exit_code = 3


def build_manifest(sweep_dir: Path) -> dict[str, Any]:
    """Every file of the sweep folder (but the manifest) with its SHA-256 and size."""
    files = []
    for path in sorted(p for p in sweep_dir.rglob("*") if p.is_file() and p.name != MANIFEST):
        data = path.read_bytes()
        files.append(
            {
                "path": path.relative_to(sweep_dir).as_posix(),
                "sha256": hashlib.sha256(data).hexdigest(),
                "size": len(data),
            }
        )
    return {"sweep_id": sweep_dir.name, "files": files}


def write_manifest(sweep_dir: Path) -> dict[str, Any]:
    manifest = build_manifest(sweep_dir)
    write_json(sweep_dir / MANIFEST, manifest)
    return manifest


class ManifestError(MobituneError):
    """A published sweep's manifest or one of its files cannot be trusted; nothing of it was kept."""


def download_published(store: ArtifactStore, source: str, folder: Path, wanted: Callable[[str], bool]) -> None:
    """The files of the published sweep in ``store`` (at ``source``) that ``wanted`` selects, then its manifest,
    into ``folder``. Whoever can write to the bucket writes the manifest, so each entry is checked before it is
    used: its path must stay inside ``folder`` (:func:`~mobitune.storage.names.path_inside`) and its bytes must
    have the manifest's SHA-256 before they are written."""
    data = store.get_bytes(MANIFEST)
    if data is None:
        raise ManifestError(f"{source}: no {MANIFEST}; give a published sweep (<storage.uri>/sweeps/<id>)")
    for entry in _manifest_entries(data, source):
        if not wanted(entry["path"]):
            continue
        target = path_inside(folder, entry["path"], f"{source}/{MANIFEST}: path")
        content = store.get_bytes(entry["path"])
        if content is None:
            raise ManifestError(f"{source}: {entry['path']} is in its {MANIFEST} but not in the store")
        if hashlib.sha256(content).hexdigest() != entry["sha256"]:
            raise ManifestError(
                f"{source}: {entry['path']} does not have the SHA-256 its {MANIFEST} gives; it was changed after "
                "publishing (publish the sweep again: mobitune push)"
            )
        atomic_write_bytes(target, content)
    atomic_write_bytes(folder / MANIFEST, data)


def _manifest_entries(data: bytes, source: str) -> list[dict[str, Any]]:
    """The manifest's file entries, each a relative ``path`` and a hex ``sha256``; anything else is refused."""
    try:
        manifest = json.loads(data)
        entries = manifest["files"]
        if not isinstance(entries, list) or not all(
            isinstance(e, dict)
            and isinstance(e.get("path"), str)
            and re.fullmatch(r"[0-9a-f]{64}", e.get("sha256", ""))
            for e in entries
        ):
            raise ValueError
    except (ValueError, TypeError, KeyError):
        raise ManifestError(f"{source}/{MANIFEST}: not a mobitune manifest (files with path and sha256)") from None
    for entry in entries:
        check_relative(entry["path"], f"{source}/{MANIFEST}: path")
    return entries


def sweep_uri(storage_uri: str, sweep_id: str) -> str:
    return f"{storage_uri.rstrip('/')}/sweeps/{sweep_id}"


def publish(sweep_dir: Path, storage_uri: str) -> str:
    """Upload the sweep folder under ``<storage_uri>/sweeps/<sweep_id>/``, manifest last.

    Each object is retried with back-off; what still fails is listed in the
    :class:`PublishError`, with the command that publishes it later.
    """
    sweep_dir = Path(sweep_dir)
    manifest = json.loads((sweep_dir / MANIFEST).read_text())
    target = sweep_uri(storage_uri, sweep_dir.name)
    store = S3Store(target)
    paths = [entry["path"] for entry in manifest["files"]] + [MANIFEST]
    unpublished: list[str] = []
    reason = ""
    for index, path in enumerate(paths):
        if unpublished and path == MANIFEST:
            unpublished.append(MANIFEST)  # a manifest is only published over a complete tree
            break
        try:
            store.put_file(path, sweep_dir / path)
        except EndpointUnreachable as exc:
            unpublished += paths[index:]  # already retried with back-off: do not wait again per object
            reason = str(exc)
            break
        except StorageError as exc:
            unpublished.append(path)
            reason = str(exc)
    if unpublished:
        listed = ", ".join(unpublished[:8]) + (f" and {len(unpublished) - 8} more" if len(unpublished) > 8 else "")
        raise PublishError(
            f"{len(unpublished)} object(s) not published to {target} ({reason}). Unpublished: {listed}. "
            f"All results are kept in {sweep_dir}; publish them later with: mobitune push {sweep_dir}"
        )
    return target
