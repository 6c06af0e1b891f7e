"""``mobitune exp-import SWEEP``: a sweep's trials as DVC experiments, so ``dvc exp show`` and ``dvc plots diff``
compare them like ``dvc exp run`` results.

Each trial with a history (ok, stopped early or diverged; failed trials have
none) is written into the workspace at the pipeline's paths (its params in
``params.yaml``, per-phase metrics and epoch CSVs) and saved with ``dvc exp
save -f -n <trial_id> download``. The ``download`` target limits DVC's commit
to the data stage, whose output is the same for every trial; the trials'
models stay in the artifact store, and ``predictions.csv`` is absent from the
experiments (a sweep trial makes none). A project that has not run the
pipeline (a fresh clone, right after a sweep) has no data stage output: the
sweep's own prepared data (``artifacts/cache/data/``, decoded again from the
trial's ``data.source`` only if this machine has no copy) stands in for it
during the saves. The workspace is restored afterwards, byte for byte.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml

from mobitune.errors import MobituneError
from mobitune.params import PARAMS_FILE, params_from_dict
from mobitune.pipeline import paths
from mobitune.pipeline.stages.phase_outputs import write_phase_outputs
from mobitune.storage.names import check_name
from mobitune.storage.records import FINAL_METRICS, FLIP_METRICS, write_json
from mobitune.storage.stores import LOCAL_ROOT, S3Store
from mobitune.sweep.publish import download_published
from mobitune.sweep.trial_setup import ensure_data
from mobitune.training.loop import FitResult

WRITTEN = (
    PARAMS_FILE,
    paths.WARMUP_METRICS,
    paths.FINETUNE_METRICS,
    paths.EVALUATE_METRICS,
    paths.WARMUP_DETAILS,
    paths.FINETUNE_DETAILS,
    paths.EVALUATE_DETAILS,
    paths.WARMUP_HISTORY,
    paths.FINETUNE_HISTORY,
    paths.PREDICTIONS,
    paths.DATA / ".gitignore",  # dvc exp save lists the data stage's output there if nothing did yet
    Path("dvc.lock"),  # and records the stage in it: a project that never ran the pipeline has none
)
WORKSPACE_KEYS = ("device", "sweep", "storage")  # how this machine runs sweeps, not what a trial trained


class ExpImportError(MobituneError):
    pass


@contextmanager
def sweep_folder(source: str) -> Iterator[Path]:
    """``source`` as a local folder: itself, or an ``s3://…/sweeps/<id>`` prefix downloaded by its manifest."""
    if not source.startswith("s3://"):
        folder = Path(source)
        if not (folder / "results.csv").exists():
            raise ExpImportError(f"{source}: no results.csv; give a finished sweep folder (artifacts/sweeps/<id>)")
        yield folder
        return
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch)
        download_published(
            S3Store(source), source, folder, wanted=lambda path: path == "results.csv" or path.startswith("trials/")
        )
        yield folder


def _trials(folder: Path) -> list[tuple[str, dict[str, Any], list[dict[str, Any]], dict[str, Any]]]:
    """(trial_id, params, history rows with numeric metrics, metrics) of each trial that has a history, in
    results.csv order."""
    found = []
    with open(folder / "results.csv", newline="") as handle:
        for row in csv.DictReader(handle):
            trial = folder / "trials" / check_name(row["trial_id"], "results.csv: trial")
            if not (trial / "history.csv").exists():
                continue
            with open(trial / "history.csv", newline="") as rows:
                history = [
                    {k: float(v) if k in (*FINAL_METRICS, *FLIP_METRICS) and v else v for k, v in r.items()}
                    for r in csv.DictReader(rows)
                ]
            if history:
                params = json.loads((trial / "params.json").read_text())["params"]
                found.append((row["trial_id"], params, history, json.loads((trial / "metrics.json").read_text())))
    return found


def _write_trial(
    workspace_params: dict[str, Any], params: dict[str, Any], history: list[dict[str, Any]], metrics: dict[str, Any]
) -> None:
    trial_params = {**params, **{k: workspace_params[k] for k in WORKSPACE_KEYS if k in workspace_params}}
    PARAMS_FILE.write_text(yaml.safe_dump(trial_params, sort_keys=False))
    provenance = metrics.get("provenance")
    for phase, history_path, metrics_path, details_path in (
        ("warmup", paths.WARMUP_HISTORY, paths.WARMUP_METRICS, paths.WARMUP_DETAILS),
        ("finetune", paths.FINETUNE_HISTORY, paths.FINETUNE_METRICS, paths.FINETUNE_DETAILS),
    ):
        # the phase's history, stage metrics and details, as `dvc repro` writes them, with the trial's provenance
        rows = [r for r in history if r["phase"] == phase]
        result = FitResult(rows, metrics["status"])
        write_phase_outputs(phase, result, history_path, metrics_path, details_path, provenance)
    keys = ("test_loss", "test_accuracy", *FLIP_METRICS, "status")
    write_json(paths.EVALUATE_METRICS, {k: metrics[k] for k in keys if k in metrics})
    write_json(paths.EVALUATE_DETAILS, {"provenance": provenance})
    paths.PREDICTIONS.unlink(missing_ok=True)


def _check_workspace() -> None:
    if not Path(".dvc").is_dir():
        raise ExpImportError("run mobitune exp-import in the root of the DVC project (no .dvc folder here)")
    changed = subprocess.run(
        ["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True, check=True
    ).stdout
    if changed.strip():
        raise ExpImportError(
            "the workspace has uncommitted changes, which every imported experiment would include; commit or "
            f"stash them first:\n{changed.rstrip()}"
        )


def import_sweep(source: str) -> list[str]:
    """Save each trial of the sweep at ``source`` as a DVC experiment of the project in the current directory;
    returns the experiment names. The workspace is left as it was, also when a save fails."""
    _check_workspace()
    workspace_params = yaml.safe_load(PARAMS_FILE.read_text())
    kept = {path: path.read_bytes() if path.exists() else None for path in WRITTEN}
    stand_in = None if paths.PREPARED.exists() else _SweepData()
    saved = []
    try:
        with sweep_folder(source) as folder:
            for trial_id, params, history, metrics in _trials(folder):
                if stand_in is not None:
                    stand_in.link(params)
                _write_trial(workspace_params, params, history, metrics)
                written = [arg for path in WRITTEN if path.exists() for arg in ("-I", str(path))]  # also untracked
                save = [sys.executable, "-m", "dvc", "exp", "save", "-q", "-f", "-n", trial_id, *written, "download"]
                result = subprocess.run(save, capture_output=True, text=True)
                if result.returncode != 0:
                    raise ExpImportError(f"{trial_id}: dvc exp save failed: {result.stderr.strip()}")
                saved.append(trial_id)
    finally:
        if stand_in is not None:
            shutil.rmtree(paths.PREPARED, ignore_errors=True)
        for path, content in kept.items():
            if content is None:
                path.unlink(missing_ok=True)
            else:
                path.write_bytes(content)
    return saved


class _SweepData:
    """The data stage's output for a project that has none: the prepared data of the trial being saved,
    hard-linked (or copied) at ``data/cifar10`` and replaced when a trial's data differs."""

    def __init__(self) -> None:
        self.linked: Path | None = None

    def link(self, params: dict[str, Any]) -> None:
        prepared = ensure_data(params_from_dict(params).data, Path(LOCAL_ROOT).resolve())
        if prepared == self.linked:
            return
        shutil.rmtree(paths.PREPARED, ignore_errors=True)
        shutil.copytree(prepared, paths.PREPARED, copy_function=_link_or_copy)
        self.linked = prepared


def _link_or_copy(source: str, target: str) -> None:
    try:
        os.link(source, target)
    except OSError:  # another file system
        shutil.copy2(source, target)
