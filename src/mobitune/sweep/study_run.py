"""Run one entry of the study manifest (:mod:`mobitune.report.study`) and commit-ready copy its sweep folder.

Each sweep runs through :class:`~mobitune.sweep.run.SweepRun`, the code the ``sweep`` flow drives, with its trials
run in this process one at a time (no Prefect: a GPU machine's image has none), on the same trial cache as
``mobitune sweep``. What the study keeps of a sweep folder is what the committed ones hold: the record, results,
report, figures and every trial's three files; no checkpoint.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any

from mobitune.params import load_params
from mobitune.provenance import code_fingerprint
from mobitune.report.lab_document import recipes_in
from mobitune.report.staleness import FolderState, folder_states, git_fingerprints
from mobitune.report.study import Entry, Study, load_study, plan_lines, regenerate, to_run
from mobitune.storage.records import write_json
from mobitune.sweep.publish import write_manifest
from mobitune.sweep.run import SweepRun
from mobitune.sweep.trial import run_trial_recorded
from mobitune.sweep.trial_files import TRIAL_FILES, TrialRequest
from mobitune.sweep.trial_setup import TRAINING_MODULE

KEPT = ("sweep.json", "results.csv", "report.md", "search.json")  # besides figures/, trials/ and its manifest


class InlineRunner:
    """Runs each trial segment to completion inside :meth:`start` (one device, one segment at a time)."""

    poll_seconds = 0.0

    def start(self, request: TrialRequest) -> dict[str, Any]:
        return run_trial_recorded(request)

    def outcome(self, handle: dict[str, Any]) -> str:
        return ""


def run_sweep(recipe: str | None, overrides: list[str], local_root: Path, logger: logging.Logger) -> Path:
    """One sweep of ``params.yaml`` with ``recipe`` and ``overrides``, run to its end; its folder."""
    params = load_params("params.yaml", overrides, recipe)
    run = SweepRun.start(params, local_root, recipe, overrides, "local")
    try:
        run.drive(InlineRunner(), 1, logger)
        run.finish()
    finally:
        run.release()
    return run.sweep_dir


def keep(sweep_dir: Path, folder: Path) -> None:
    """Replace ``folder`` with the committed part of ``sweep_dir``."""
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    for name in KEPT:
        if (sweep_dir / name).exists():
            shutil.copy2(sweep_dir / name, folder / name)
    if (sweep_dir / "figures").is_dir():
        shutil.copytree(sweep_dir / "figures", folder / "figures")
    for trial in sorted((sweep_dir / "trials").iterdir()):
        (folder / "trials" / trial.name).mkdir(parents=True)
        for name in TRIAL_FILES:
            if (trial / name).exists():
                shutil.copy2(trial / name, folder / "trials" / trial.name / name)
        _record_code(folder / "trials" / trial.name / "metrics.json", code_fingerprint(TRAINING_MODULE))
    write_manifest(folder)  # of the files kept


def _record_code(metrics_file: Path, training: str) -> None:
    """Record in a kept trial's provenance the fingerprint of the training closure that computed it (the trial
    cache's key holds it, so a trial answered from the cache was computed by it too): what
    :func:`mobitune.report.staleness.folder_state` compares with today's. A GPU machine's tree travels without
    ``.git``, so its runs name no commit; ``GIT_REV`` (which ``benchmarks/gpu_check.sh`` sets) names it."""
    metrics = json.loads(metrics_file.read_text()) if metrics_file.exists() else {}
    if not metrics.get("provenance"):
        return
    metrics["provenance"]["training_fingerprint"] = training
    if not metrics["provenance"].get("git_commit") and os.environ.get("GIT_REV"):
        metrics["provenance"]["git_commit"] = os.environ["GIT_REV"]
    write_json(metrics_file, metrics)


def run_entry(
    entry: Entry,
    study: Study,
    states: dict[Path, FolderState],
    last: list[str],
    local_root: Path,
    logger: logging.Logger,
) -> list[Path]:
    """Every sweep of ``entry`` whose folder is missing or not current (``last``: overrides after all others), each
    kept in its folder; the folders written. A current seed's folder is kept as it is: the trial cache that would
    make it free lives in one checkout's artifacts, not in the folder."""
    written = []
    for folder, overrides in entry.sweeps(study.common, last):
        if states[folder].current:
            logger.info("study %s: %s is current, kept as it is", entry.name, folder)
            continue
        logger.info("study %s: sweep into %s", entry.name, folder)
        keep(run_sweep(entry.recipe, overrides, local_root, logger), folder)
        written.append(folder)
    return written


def states_now(folders: list[Path]) -> dict[Path, FolderState]:
    """Each folder against today's training closure."""
    return folder_states(folders, TRAINING_MODULE, code_fingerprint(TRAINING_MODULE))


def study_states(study: Study) -> dict[Path, FolderState]:
    return states_now([folder for entry in study.entries for folder in entry.folders()])


def run_study(manifest: Path, where: str | None, only: list[str], extra: list[str], local_root: Path) -> list[str]:
    """``mobitune study``: the folders' states; with ``where`` (cpu or gpu), that kind's entries that are missing
    or not current run first (``only``: these entries; ``extra``: overrides after the common ones, e.g. where
    the data lies here); then the documents regenerate from the folders. What it did, a line each."""
    study = load_study(manifest)
    lines = []
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    logger = logging.getLogger("mobitune.study")
    if where:
        committed = git_fingerprints(TRAINING_MODULE, "HEAD")
        if committed is None or committed[0] != code_fingerprint(TRAINING_MODULE):
            logger.warning("the training code is not the commit's: what runs is current while that code stays")
        states = study_states(study)
        for entry in to_run(study, states, where, only):
            written = run_entry(entry, study, states, extra, local_root, logger)
            lines += [f"ran {entry.name}: {', '.join(str(folder) for folder in written)}"]
    states = study_states(study)
    lines += plan_lines(study, states)
    lines += [f"wrote {page}" for page in regenerate(study, states, recipes_in(Path("recipes")))]
    return lines
