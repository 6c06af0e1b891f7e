"""What a trial is on this machine before it runs: its params resolved, its data prepared, and the keys its cached
result, shared warmup and checkpoint have in the artifact store.

Below both :mod:`mobitune.sweep.trial` (which answers a trial from the store when it can) and
:mod:`mobitune.sweep.trial_training` (which trains it), so the trial path imports in one direction. No torch.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mobitune.params import DataParams, Params
from mobitune.provenance import code_fingerprint, computing_versions
from mobitune.storage.stores import ArtifactStore
from mobitune.sweep.plan import training_config, warmup_key
from mobitune.sweep.trial_files import TrialRequest
from mobitune.training.data import prepare

EpochHook = Callable[[dict[str, Any]], None]


TRAINING_MODULE = "mobitune.sweep.trial_training"  # its import closure is the code a cached result depends on


def data_digest(prepared: Path) -> str:
    """The content hash of the data behind prepared arrays: the archive's SHA-256, or the arrays' own."""
    meta = json.loads((prepared / "meta.json").read_text())
    if meta.get("sha256"):
        return meta["sha256"]
    digest = hashlib.sha256()
    for array in sorted(prepared.glob("*.npy")):
        digest.update(array.read_bytes())
    return digest.hexdigest()


def _content_key(*parts: Any) -> str:
    """The key of a stored result: ``parts``, the training code and the versions of the packages it computes
    with (an upgraded torch or Pillow trains again rather than reusing results it did not compute)."""
    identity = json.dumps([*parts, code_fingerprint(TRAINING_MODULE), computing_versions()], sort_keys=True)
    return hashlib.sha256(identity.encode()).hexdigest()[:24]


def warmup_cache_key(params_key: str, data: str) -> str:
    """Where a warmup checkpoint is kept: its params, the data's content and the training code."""
    return f"cache/warmup/{params_key}-{_content_key(data)}.pt"


def segment_end(params: Params, until: int | None) -> int:
    """The finetune epochs a trial has trained when a segment that runs ``until`` ends."""
    return params.finetune.epochs if until is None else min(until, params.finetune.epochs)


def result_cache_key(params: Params, until: int | None, data: str) -> str:
    """Where a trial's result is kept: every training param, the finetune epochs trained, data, code."""
    return f"cache/trials/{_content_key(training_config(params), segment_end(params, until), data)}"


def checkpoint_key(sweep_id: str, trial_id: str) -> str:
    return f"checkpoints/{sweep_id}/{trial_id}.pt"


@contextlib.contextmanager
def exclusive(path: Path) -> Iterator[None]:
    """A file lock: concurrent trials and sweeps on this machine build a shared input once."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(path.name + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def prepared_path(data: DataParams, local_root: Path) -> Path:
    """Where the prepared arrays of ``data.source`` are kept on this machine (a local source that changes gets
    another folder); :func:`ensure_data` fills it."""
    identity = f"{data.source}\n{data.md5}"
    local = Path(data.source.removeprefix("file://"))
    if local.exists():
        identity += f"\n{local.stat().st_size}\n{local.stat().st_mtime_ns}"
    digest = hashlib.sha256(identity.encode()).hexdigest()[:16]
    return local_root / "cache" / "data" / digest


def ensure_data(data: DataParams, local_root: Path) -> Path:
    """The prepared arrays of ``data.source``, decoded once per machine (again if a local source changes)."""
    out = prepared_path(data, local_root)
    with exclusive(out):
        if not (out / "meta.json").exists():
            prepare(data.source, data.md5, out)
    return out


@dataclass(frozen=True)
class TrialSetup:
    """A trial's request resolved on this machine: its params, its store, its prepared data and that data's
    content hash."""

    request: TrialRequest
    params: Params
    local_root: Path
    store: ArtifactStore
    prepared: Path
    data: str

    @classmethod
    def of(cls, request: TrialRequest) -> TrialSetup:
        params = request.params
        local_root = Path(request.local_root).resolve()
        prepared = ensure_data(params.data, local_root)
        return cls(request, params, local_root, request.store(), prepared, data_digest(prepared))

    @property
    def result_key(self) -> str:
        return result_cache_key(self.params, self.request.until, self.data)

    @property
    def warmup_key(self) -> str:
        return warmup_cache_key(warmup_key(self.params), self.data)
