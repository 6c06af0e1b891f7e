"""A trial that trains: its shared warmup (fetched or trained), its finetune resumed from its checkpoint in the
store, its results stored and kept for identical trials.

The only module of the sweep engine that imports torch; :func:`mobitune.sweep.trial.run_trial` imports it once
it knows the trial has to train.
"""

from __future__ import annotations

import functools
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mobitune.storage.records import Status, cost_metrics, final_metrics, write_json
from mobitune.storage.stores import ArtifactStore
from mobitune.sweep.trial_files import TrialRequest, epochs_trained, store_results, trial_key
from mobitune.sweep.trial_setup import EpochHook, TrialSetup, checkpoint_key, exclusive
from mobitune.training.batches import DeviceData, device_provenance, resolve_device
from mobitune.training.data import load_dataset
from mobitune.training.device_use import DeviceUse
from mobitune.training.loop import run_finetune, run_warmup
from mobitune.training.memory import check_trial_fits
from mobitune.training.model import load_checkpoint


def train(setup: TrialSetup, on_epoch: EpochHook | None, started: float) -> dict[str, Any]:
    """Train the trial (or only its warmup) and store params.json, history.csv, metrics.json; ``started``: when
    the trial began (its ``seconds`` count from there)."""
    request, params, store, local_root = setup.request, setup.params, setup.store, setup.local_root

    @functools.cache
    def device_data() -> DeviceData:
        """The data on the device, loaded only for training: a stored warmup needs none of it."""
        dataset = load_dataset(setup.prepared, params.data.train_limit, params.data.test_limit)
        device = resolve_device(params.device)
        check_trial_fits(params, device, dataset)  # beside the trials already on this GPU
        return DeviceData.create(params, dataset, device)

    refresh = request.warmup_only and not request.use_cache
    warm_path = _ensure_warmup(
        setup.warmup_key, store, local_root, lambda path: run_warmup(params, device_data(), path), refresh
    )
    if request.warmup_only:
        return {"warmup_key": setup.warmup_key}
    warm = load_checkpoint(warm_path)
    history = list(warm["history"])
    status, reason = warm["status"], warm.get("reason")
    earlier_seconds = 0.0
    use = None
    if status != Status.DIVERGED:
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

        data = device_data()
        with DeviceUse(params, data.device, data.dataset) as use:
            result = run_finetune(
                params,
                data,
                warm_path,
                local_checkpoint,
                resume=resumed,
                on_checkpoint=checkpoint_stored,
                until=request.until,
                deadline=request.deadline,
            )
        history += result.history
        status, reason = result.status, result.reason
    seconds = earlier_seconds + time.perf_counter() - started
    metrics = {
        **final_metrics(history),
        **cost_metrics([row for row in history if row["phase"] == "finetune"]),  # warmups are shared: apart
        **(use.metrics() if use is not None else {}),
        **epochs_trained(history),
        "error": reason,  # why it diverged (NaN/inf, a collapse to chance) or the time budget stopped it
        "status": status,
        "seconds": seconds,
        "cached": False,
        "provenance": device_provenance(resolve_device(params.device), params.seed),  # no data loaded for it
    }
    stored = store_results(request, store, local_root, history, metrics)
    if status != Status.STOPPED:  # a trial cut short by the time budget is no result of its config
        _keep_result(request, setup.result_key, store, local_root, metrics)
    return stored


def _ensure_warmup(
    key: str, store: ArtifactStore, local_root: Path, train_warmup: Callable[[Path], Any], refresh: bool
) -> Path:
    """The shared warmup checkpoint: from the store if any trial made it (unless ``refresh``), else trained now."""
    local = local_root / key
    with exclusive(local):
        if not refresh and store.get_file(key, local):
            return local
        scratch = local.with_name(f".{local.name}.training")
        train_warmup(scratch)
        scratch.replace(local)
        store.put_file(key, local)
    return local


def _keep_result(request: TrialRequest, key: str, store: ArtifactStore, local_root: Path, metrics: dict) -> None:
    """The trial's result kept for identical trials, with the sweep and trial that computed it: a trial answered
    from it has no checkpoint of its own, and ``mobitune export`` finds the model there."""
    folder = local_root / trial_key(request.sweep_id, request.trial_id)
    computed_by = {"sweep_id": request.sweep_id, "trial_id": request.trial_id}
    write_json(local_root / key / "metrics.json", {**metrics, "computed_by": computed_by})
    store.put_file(f"{key}/metrics.json", local_root / key / "metrics.json")
    store.put_file(f"{key}/history.csv", folder / "history.csv")


def _earlier_seconds(request: TrialRequest, store: ArtifactStore, local_root: Path) -> float:
    """Seconds the trial's earlier segments took (their stored metrics), so a promoted trial reports its total."""
    key = trial_key(request.sweep_id, request.trial_id, "metrics.json")
    local = local_root / key
    if not store.get_file(key, local):
        return 0.0
    return float(json.loads(local.read_text()).get("seconds") or 0.0)
