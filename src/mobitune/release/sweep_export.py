"""``mobitune export SWEEP``: a sweep trial's model as the export stage writes it (``model.onnx``,
``model.int8.onnx``, ``export.json``), in ``export/<trial_id>/`` of the sweep's folder, published beside its
report when the sweep has a ``storage.uri``; with ``--register NAME``, registered in the project's model registry
(:mod:`mobitune.release.registry`).

The trial's model is its finetune checkpoint (``checkpoints/<sweep_id>/<trial_id>.pt``), on this disk (local
backend) or in the sweep's store (workers backend). A trial that reused an identical trial's cached result
has no checkpoint of its own: the model is that trial's, whose sweep and id its metrics name (``computed_by``).
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

from mobitune.errors import MobituneError
from mobitune.export.onnx_model import CALIBRATION_IMAGES, export_model
from mobitune.params import params_from_dict
from mobitune.release.registry import Registered, register_model
from mobitune.report.results import SWEEP_RECORD, read_sweep_record
from mobitune.storage.names import check_name
from mobitune.storage.records import Status, write_json
from mobitune.storage.stores import LOCAL_ROOT, LocalStore, S3Store
from mobitune.sweep.publish import download_published, publish, write_manifest
from mobitune.sweep.trial_setup import checkpoint_key, ensure_data
from mobitune.training.checkpoints import load_trained_model
from mobitune.training.data import load_dataset


class SweepExportError(MobituneError):
    pass


def export_trial(source: str, trial_id: str | None) -> tuple[Path, dict[str, Any]]:
    """Export ``trial_id`` (None: the best trial, by test accuracy, of those that finished ``ok``) of the sweep
    at ``source`` (a folder, or ``s3://…/sweeps/<id>``); returns the export folder and its report."""
    sweep_dir = _sweep_folder(source)
    record = read_sweep_record(sweep_dir)
    trial_id = check_name(trial_id or _best_trial(sweep_dir), "trial")
    trial = sweep_dir / "trials" / trial_id
    if not (trial / "params.json").exists():
        known = ", ".join(sorted(p.name for p in (sweep_dir / "trials").iterdir()))
        raise SweepExportError(f"{source}: no trial {trial_id!r}; its trials: {known}")
    params = params_from_dict(json.loads((trial / "params.json").read_text())["params"])
    root = sweep_dir.parents[1]
    checkpoint = _checkpoint(record, trial_id, root, json.loads((trial / "metrics.json").read_text()))
    dataset = load_dataset(ensure_data(params.data, root), CALIBRATION_IMAGES, params.data.test_limit)
    model, _ = load_trained_model(checkpoint, params, len(dataset.classes))
    out = sweep_dir / "export" / trial_id
    report = export_model(
        model, params.model.image_size, dataset, out / "model.onnx", out / "model.int8.onnx", params.augment.test_flip
    )
    write_json(out / "export.json", {"trial_id": trial_id, **report})
    write_manifest(sweep_dir)
    if record.get("storage_uri"):
        print(f"published to {publish(sweep_dir, record['storage_uri'])}")
    return out, report


def register_export(out: Path, name: str, project: Path) -> Registered:
    """Register the model that :func:`export_trial` wrote to ``out`` as the next version of ``name``, its trial
    and scores as the artifact's metadata."""
    sweep_dir = out.parents[1]
    report = json.loads((out / "export.json").read_text())
    trial = sweep_dir / "trials" / report["trial_id"]
    metrics = json.loads((trial / "metrics.json").read_text())
    meta = {
        "sweep_id": sweep_dir.name,
        "trial_id": report["trial_id"],
        "varied": json.loads((trial / "params.json").read_text())["varied"],
        "test_accuracy": metrics["test_accuracy"],
        "onnx_test_accuracy": report["fp32"]["test_accuracy"],
        "int8_test_accuracy": report["int8"]["test_accuracy"],
    }
    return register_model(out / "model.onnx", name, meta, project)


def _sweep_folder(source: str) -> Path:
    """The sweep as a local folder: ``source`` itself, or a published sweep downloaded whole (by its manifest)
    into ``artifacts/sweeps/<id>``, so that its manifest is complete when it is published again."""
    if not source.startswith("s3://"):
        folder = Path(source)
        if not (folder / SWEEP_RECORD).exists() or not (folder / "results.csv").exists():
            raise SweepExportError(f"{source}: not a finished sweep folder; give artifacts/sweeps/<sweep_id>")
        return folder
    sweep_id = check_name(source.rstrip("/").rsplit("/", 1)[-1], f"{source}: the sweep id")
    folder = Path(LOCAL_ROOT).resolve() / "sweeps" / sweep_id
    download_published(S3Store(source), source, folder, wanted=lambda path: True)
    return folder


def _best_trial(sweep_dir: Path) -> str:
    with open(sweep_dir / "results.csv", newline="") as handle:
        finished = [row for row in csv.DictReader(handle) if row["status"] == Status.OK and row["test_accuracy"]]
    if not finished:
        raise SweepExportError(f"{sweep_dir}: no trial finished ok; nothing to export")
    return max(finished, key=lambda row: float(row["test_accuracy"]))["trial_id"]


def _checkpoint(record: dict[str, Any], trial_id: str, root: Path, metrics: dict[str, Any]) -> Path:
    """The trial's finetune checkpoint on this disk, fetched from the sweep's store if it is only there. A trial
    answered from the cache has none of its own: the trial that computed its result (``computed_by``) holds it."""
    sweep_id = check_name(record["sweep_id"], f"{SWEEP_RECORD}: sweep_id")
    if (found := _fetch_checkpoint(checkpoint_key(sweep_id, trial_id), record, root)) is not None:
        return found
    origin = metrics.get("computed_by") if metrics.get("cached") else None
    if origin is None:
        why = " (it reused an identical trial's cached result)" if metrics.get("cached") else ""
        raise SweepExportError(
            f"trial {trial_id}: no checkpoint {checkpoint_key(sweep_id, trial_id)} here or in the sweep's store"
            f"{why}; run the sweep again with --no-cache to keep its model"
        )
    origin_sweep = check_name(origin["sweep_id"], f"trial {trial_id}: computed_by.sweep_id")
    origin_trial = check_name(origin["trial_id"], f"trial {trial_id}: computed_by.trial_id")
    key = checkpoint_key(origin_sweep, origin_trial)
    if (found := _fetch_checkpoint(key, record, root)) is not None:
        print(f"trial {trial_id} reused the result of trial {origin_trial} of sweep {origin_sweep}: its model is {key}")
        return found
    raise SweepExportError(
        f"trial {trial_id} reused the result of trial {origin_trial} of sweep {origin_sweep}, whose checkpoint "
        f"{key} is not here or in the sweep's store either: export it where that sweep ran "
        f"(mobitune export {Path(LOCAL_ROOT) / 'sweeps' / origin_sweep} --trial {origin_trial}), "
        "or run this sweep again with --no-cache to keep its own model"
    )


def _fetch_checkpoint(key: str, record: dict[str, Any], root: Path) -> Path | None:
    """``key`` on this disk, fetched from the sweep's store if it is only there; None if neither has it."""
    if LocalStore(root).get_file(key, root / key):
        return root / key
    if record.get("storage_uri") and S3Store(record["storage_uri"]).get_file(key, root / key):
        return root / key
    return None
