"""One sweep trial, wherever it runs: what is already known of it, or its training, its results into the store.

Both backends call :func:`run_trial_recorded` from the ``trial`` Prefect task:
in the sweep's process (local), or in a ``trial-slot`` flow run on a worker.
Both read and write the same keys of the artifact store, so the sweep gathers
results the same way.

This module imports no torch: a trial whose result is already known (stored
by an identical trial, or by this sweep before it was resumed) and a warmup
already in the store are answered from the store, and only a trial that
trains imports :mod:`mobitune.sweep.trial_training` (torch and torchvision:
2-3 s of a cached sweep's start on a CPU).
"""

from __future__ import annotations

import csv
import json
import sys
import time
import traceback
from pathlib import Path
from typing import Any

from mobitune.errors import ServiceUnavailable
from mobitune.params import Params
from mobitune.storage.records import Status
from mobitune.storage.stores import ArtifactStore
from mobitune.sweep.trial_files import TrialRequest, record_failure, store_results, trial_key
from mobitune.sweep.trial_setup import EpochHook, TrialSetup, exclusive, segment_end


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
    if metrics["status"] in (Status.OK, Status.STOPPED) and trained < segment_end(params, request.until):
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


def known_result(setup: TrialSetup) -> dict[str, Any] | None:
    """What running the trial would return, when the store already holds it: this trial's own result (a
    resumed sweep replaying it), an identical trial's (unless the request says not to use the cache), or, for a
    warmup-only request, the stored warmup. None when it has to train."""
    request, store, local_root = setup.request, setup.store, setup.local_root
    if request.warmup_only:
        key = setup.warmup_key
        with exclusive(local_root / key):
            if request.use_cache and store.get_file(key, local_root / key):
                return {"warmup_key": key}
        return None
    if (own := _finished_segment(request, setup.params, store, local_root)) is not None:
        return own
    if request.use_cache:
        return _cached_result(request, setup.result_key, store, local_root)
    return None


def run_trial(request: TrialRequest, on_epoch: EpochHook | None = None) -> dict[str, Any]:
    """Train one trial (or only its warmup) and store params.json, history.csv, metrics.json, unless its result
    is already known (:func:`known_result`).

    ``on_epoch`` gets each finetune epoch's history row once its checkpoint is in the store.
    """
    started = time.perf_counter()
    setup = TrialSetup.of(request)
    known = known_result(setup)
    if known is not None:
        return known
    from mobitune.sweep.trial_training import train  # torch and torchvision: only for a trial that trains

    return train(setup, on_epoch, started)


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
    torch = sys.modules.get("torch")  # a trial that never imported torch ran out of no device's memory
    if (torch is not None and isinstance(exc, torch.OutOfMemoryError)) or "can't allocate memory" in text:
        if torch is not None:
            torch.cuda.empty_cache()  # the next trial on this device starts with its memory back
        params = request.params
        return (
            f"out of memory with batch_size={params.batch_size}, "
            f"model.image_size={params.model.image_size}: lower them for this device ({text})"
        )
    return f"{type(exc).__name__}: {text}"
