"""One sweep trial, wherever it runs: shared warmup, finetune, results into the artifact store.

Both backends call :func:`run_trial` from the ``trial`` Prefect task: in the
sweep's process (local), or in a ``trial-slot`` flow run on a worker. Both
read and write the same keys of the artifact store, so the sweep gathers
results the same way.
"""

from __future__ import annotations

import contextlib
import csv
import fcntl
import functools
import hashlib
import json
import time
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch

from mobitune.errors import ServiceUnavailable
from mobitune.params import DataParams, Params, params_from_dict
from mobitune.storage.records import STOPPED, git_revision, write_json
from mobitune.storage.stores import ArtifactStore
from mobitune.sweep.plan import training_config, warmup_key
from mobitune.sweep.trial_files import TrialRequest, final_metrics, record_failure, store_results, trial_key
from mobitune.training.batches import resolve_device
from mobitune.training.checkpoints import DIVERGED
from mobitune.training.data import load_dataset, prepare
from mobitune.training.loop import DeviceData, run_finetune, run_warmup
from mobitune.training.model import load_checkpoint

EpochHook = Callable[[dict[str, Any]], None]


PACKAGE = Path(__file__).resolve().parents[1]


@functools.cache
def code_fingerprint() -> str:
    """A hash of the code that decides what a trial computes (the training core, the params, this module): a
    change to any of it invalidates cached results."""
    digest = hashlib.sha256()
    for path in [
        *sorted(PACKAGE.glob("training/*.py")),
        *sorted(PACKAGE.glob("params/*.py")),
        Path(__file__).resolve(),
    ]:
        digest.update(path.relative_to(PACKAGE).as_posix().encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:16]


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
    return hashlib.sha256(json.dumps([*parts, code_fingerprint()], sort_keys=True).encode()).hexdigest()[:24]


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
def _exclusive(path: Path) -> Iterator[None]:
    """A file lock: concurrent trials and sweeps on this machine build a shared input once."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(path.name + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def ensure_data(data: DataParams, local_root: Path) -> Path:
    """The prepared arrays of ``data.source``, decoded once per machine (again if a local source changes)."""
    identity = f"{data.source}\n{data.md5}"
    local = Path(data.source.removeprefix("file://"))
    if local.exists():
        identity += f"\n{local.stat().st_size}\n{local.stat().st_mtime_ns}"
    digest = hashlib.sha256(identity.encode()).hexdigest()[:16]
    out = local_root / "cache" / "data" / digest
    with _exclusive(out):
        if not (out / "meta.json").exists():
            prepare(data.source, data.md5, out)
    return out


def _ensure_warmup(key: str, store: ArtifactStore, local_root: Path, train: Any, refresh: bool) -> Path:
    """The shared warmup checkpoint: from the store if any trial made it (unless ``refresh``), else trained now."""
    local = local_root / key
    with _exclusive(local):
        if not refresh and store.get_file(key, local):
            return local
        scratch = local.with_name(f".{local.name}.training")
        train(scratch)
        scratch.replace(local)
        store.put_file(key, local)
    return local


def _finished_segment(
    request: TrialRequest, params: Params, store: ArtifactStore, local_root: Path
) -> dict[str, Any] | None:
    """This trial's own stored result if it already covers the segment (a resumed sweep replaying it); its files
    stay as they are."""
    key = trial_key(request.sweep_id, request.trial_id, "metrics.json")
    if not store.get_file(key, local_root / key):
        return None
    metrics = json.loads((local_root / key).read_text())
    trained = metrics.get("finetune_epochs") or 0
    if metrics["status"] in ("ok", STOPPED) and trained < segment_end(params, request.until):
        return None  # an earlier segment's result: this one trains on from the checkpoint
    print(f"{request.trial_id}: already finished in this sweep ({metrics['status']}), kept as it is")
    return metrics


def _cached_result(request: TrialRequest, key: str, store: ArtifactStore, local_root: Path) -> dict[str, Any] | None:
    """The stored result of an identical trial, as this trial's, marked ``cached``; None if there is none."""
    folder = local_root / key
    if not all(store.get_file(f"{key}/{name}", folder / name) for name in ("history.csv", "metrics.json")):
        return None
    with open(folder / "history.csv", newline="") as f:
        history = list(csv.DictReader(f))
    metrics = {**json.loads((folder / "metrics.json").read_text()), "cached": True}
    print(f"{request.trial_id}: reusing the result of an identical trial ({key})")
    return store_results(request, store, local_root, history, metrics)


def _keep_result(request: TrialRequest, key: str, store: ArtifactStore, local_root: Path, metrics: dict) -> None:
    folder = local_root / trial_key(request.sweep_id, request.trial_id)
    write_json(local_root / key / "metrics.json", metrics)
    store.put_file(f"{key}/metrics.json", local_root / key / "metrics.json")
    store.put_file(f"{key}/history.csv", folder / "history.csv")


def run_trial(request: TrialRequest, on_epoch: EpochHook | None = None) -> dict[str, Any]:
    """Train one trial (or only its warmup) and store params.json, history.csv, metrics.json.

    ``on_epoch`` gets each finetune epoch's history row once its checkpoint is in the store.
    """
    started = time.perf_counter()
    params = params_from_dict(request.params)
    local_root = Path(request.local_root).resolve()
    store = request.store()
    prepared = ensure_data(params.data, local_root)
    data = data_digest(prepared)
    result_key = result_cache_key(params, request.until, data)
    if not request.warmup_only and (own := _finished_segment(request, params, store, local_root)) is not None:
        return own
    if request.use_cache and not request.warmup_only:
        cached = _cached_result(request, result_key, store, local_root)
        if cached is not None:
            return cached

    @functools.cache
    def device_data() -> DeviceData:
        """The data on the device, loaded only for training: a stored warmup needs none of it."""
        dataset = load_dataset(prepared, params.data.train_limit, params.data.test_limit)
        return DeviceData.create(params, dataset, resolve_device(params.device))

    key = warmup_cache_key(warmup_key(params), data)
    refresh = request.warmup_only and not request.use_cache
    warm_path = _ensure_warmup(key, store, local_root, lambda path: run_warmup(params, device_data(), path), refresh)
    if request.warmup_only:
        return {"warmup_key": key}
    warm = load_checkpoint(warm_path)
    history = list(warm["history"])
    status = warm["status"]
    earlier_seconds = 0.0
    if status != DIVERGED:
        stored_checkpoint = checkpoint_key(request.sweep_id, request.trial_id)
        local_checkpoint = local_root / stored_checkpoint
        resumed = store.get_file(stored_checkpoint, local_checkpoint)
        if resumed:
            done = len(load_checkpoint(local_checkpoint)["history"])
            print(f"{request.trial_id}: resuming from its checkpoint after finetune epoch {done}")
            earlier_seconds = _earlier_seconds(request, store, local_root)

        def checkpoint_stored(row: dict[str, Any]) -> None:
            store.put_file(stored_checkpoint, local_checkpoint)
            if on_epoch is not None:
                on_epoch(row)

        result = run_finetune(
            params,
            device_data(),
            warm_path,
            local_checkpoint,
            resume=resumed,
            on_checkpoint=checkpoint_stored,
            until=request.until,
        )
        history += result.history
        status = result.status
    seconds = earlier_seconds + time.perf_counter() - started
    metrics = {
        **final_metrics(history),
        "status": status,
        "seconds": seconds,
        "cached": False,
        "git_rev": git_revision(),
    }
    stored = store_results(request, store, local_root, history, metrics)
    _keep_result(request, result_key, store, local_root, metrics)
    return stored


def _earlier_seconds(request: TrialRequest, store: ArtifactStore, local_root: Path) -> float:
    """Seconds the trial's earlier segments took (their stored metrics), so a promoted trial reports its total."""
    key = trial_key(request.sweep_id, request.trial_id, "metrics.json")
    local = local_root / key
    if not store.get_file(key, local):
        return 0.0
    return float(json.loads(local.read_text()).get("seconds") or 0.0)


def run_trial_recorded(request: TrialRequest, on_epoch: EpochHook | None = None) -> dict[str, Any]:
    """:func:`run_trial`, with any failure recorded as the trial's result instead of raised.

    The orchestration edge: one failed trial (a bad config, out of memory)
    must not cost the sweep its other trials or its report. A service that
    did not answer (:class:`~mobitune.errors.ServiceUnavailable`) is the
    fleet's failure, not the trial's: raised, so the trial runs again from its
    checkpoint once the service is back.
    """
    started = time.perf_counter()
    try:
        return run_trial(request, on_epoch)
    except Exception as exc:  # recorded, not swallowed: status "failed" with the reason
        if request.warmup_only or isinstance(exc, ServiceUnavailable):
            raise
        traceback.print_exc()
        return record_failure(request, _failure_reason(exc, request), time.perf_counter() - started)


def _failure_reason(exc: Exception, request: TrialRequest) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    if isinstance(exc, torch.OutOfMemoryError) or "can't allocate memory" in text:
        torch.cuda.empty_cache()  # the next trial on this device starts with its memory back
        params = request.params
        return (
            f"out of memory with batch_size={params['batch_size']}, "
            f"model.image_size={params['model']['image_size']}: lower them for this device ({text})"
        )
    return f"{type(exc).__name__}: {text}"
