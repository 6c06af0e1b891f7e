"""A sweep's results as one tidy table: every trial's params, final metrics, epochs and status, read from its
folder; the per-axis tables (the report's Tables 1-3) and the best trial."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from mobitune.errors import MobituneError
from mobitune.params import get_dotted
from mobitune.storage.records import FLIP_METRICS, Status
from mobitune.storage.stores import LOCAL_ROOT

METRIC_COLUMNS = ["train_loss", "test_loss", "train_accuracy", "test_accuracy"]
FLIP_COLUMNS = list(FLIP_METRICS)  # with augment.test_flip: each test image and its mirror
# what a trial cost: its finetune epochs on the device, throughput; on a GPU its memory and NVML's utilisation
COST_COLUMNS = [
    "device_seconds",
    "train_images_per_s",
    "eval_images_per_s",
    "peak_memory_bytes",
    "memory_estimate_bytes",
    "gpu_utilization_percent",
    "gpu_memory_used_bytes",
]
# of the run that computed a result
PROVENANCE_COLUMNS = ["git_commit", "source_fingerprint", "device", "device_index", "threads"]
# results.csv: trial_id, a column per swept key, then these (docs/reference/files.md is generated from them)
RESULTS_COLUMNS = [
    "seed",
    *METRIC_COLUMNS,
    *FLIP_COLUMNS,
    "warmup_epochs",
    "finetune_epochs",
    "seconds",
    "status",
    "error",
    *COST_COLUMNS,
    "cached",
    *PROVENANCE_COLUMNS,
]
SWEEP_RECORD = "sweep.json"  # a sweep's spec, params, trials and backend, in its folder
SEARCH_RECORD = "search.json"  # a searched or early-stopped sweep's rungs, decisions and epochs (search.summary)


@dataclass
class SweepResults:
    table: pd.DataFrame  # one row per trial
    histories: dict[str, pd.DataFrame]  # trial_id -> per-epoch history (both phases)
    axes: list[str]  # the swept keys, in the spec's order
    base: dict[str, Any]  # the base value of every axis
    mode: str
    search: dict[str, Any] | None = None  # search.json, if the sweep searched or stopped trials early

    @property
    def sampled(self) -> bool:
        return self.mode in ("random", "tpe")


def read_sweep_record(sweep_dir: Path) -> dict[str, Any]:
    """A sweep folder's ``sweep.json``, or an error that says the folder is not one."""
    path = sweep_dir / SWEEP_RECORD
    if not path.exists():
        raise MobituneError(f"{sweep_dir}: not a sweep folder (no {SWEEP_RECORD}); give {LOCAL_ROOT}/sweeps/<sweep_id>")
    return json.loads(path.read_text())


def load_results(sweep_dir: Path, record: Mapping[str, Any]) -> SweepResults:
    """Read every trial's params.json, metrics.json and history.csv from a sweep folder.

    ``record`` is the sweep's ``sweep.json``: its trials, axes, base values and mode.
    """
    axes, base, mode = record["axes"], record["base"], record["mode"]
    rows, histories = [], {}
    for trial_id in [trial["trial_id"] for trial in record["trials"]]:
        folder = sweep_dir / "trials" / trial_id
        params = json.loads((folder / "params.json").read_text())["params"]
        metrics = json.loads((folder / "metrics.json").read_text())
        row = {"trial_id": trial_id, **{axis: get_dotted(params, axis) for axis in axes}, "seed": params["seed"]}
        history = pd.read_csv(folder / "history.csv")
        if params.get("augment", {}).get("test_flip") and "test_accuracy_flips" not in metrics:
            metrics, history = _flips_recorded_as_test(metrics, history)
        histories[trial_id] = history
        row.update({key: metrics.get(key) for key in METRIC_COLUMNS + FLIP_COLUMNS})
        row.update({f"{phase}_epochs": int((history["phase"] == phase).sum()) for phase in ("warmup", "finetune")})
        row.update({key: metrics.get(key) for key in ("seconds", "status", "error", *COST_COLUMNS)})
        row["cached"] = bool(metrics.get("cached", False))
        row.update({key: (metrics.get("provenance") or {}).get(key) for key in PROVENANCE_COLUMNS})
        rows.append(row)
    # the columns named even without a row: a sweep whose time budget ended before its first trial has none
    table = pd.DataFrame(rows, columns=["trial_id", *axes, *RESULTS_COLUMNS])
    for column in METRIC_COLUMNS + FLIP_COLUMNS + ["seconds", *COST_COLUMNS]:
        table[column] = pd.to_numeric(table[column], errors="coerce")
    # absent, not zero: a column nobody recorded (flips off, a CPU's GPU figures, runs older than it) is left out
    optional = FLIP_COLUMNS + COST_COLUMNS + PROVENANCE_COLUMNS
    table = table.drop(columns=[column for column in optional if table[column].isna().all()])
    search_path = sweep_dir / SEARCH_RECORD
    search = json.loads(search_path.read_text()) if search_path.exists() else None
    return SweepResults(table, histories, axes, base, mode, search)


def _flips_recorded_as_test(metrics: dict[str, Any], history: pd.DataFrame) -> tuple[dict[str, Any], pd.DataFrame]:
    """A trial with test-time flips recorded before both views were: its ``test_*`` figures are the flipped
    view's. They move to the flip columns, and its single-view figures are unknown (NaN), never mistaken."""
    flipped = {f"{key}_flips": metrics.get(key) for key in ("test_loss", "test_accuracy")}
    history = history.rename(columns={"test_loss": "test_loss_flips", "test_accuracy": "test_accuracy_flips"})
    history[["test_loss", "test_accuracy"]] = math.nan
    return {**metrics, **flipped, "test_loss": None, "test_accuracy": None}, history


def axis_rows(results: SweepResults, axis: str) -> pd.DataFrame:
    """Trials that show the effect of ``axis``: the others at base (one-at-a-time) or all (grid)."""
    table = results.table
    if results.mode == "one-at-a-time":
        for other in results.axes:
            if other != axis:
                table = table[table[other] == results.base[other]]
    return table


def axis_table(results: SweepResults, axis: str) -> pd.DataFrame:
    """The report's Tables 1-3: final losses and accuracies (%) per value, mean over seeds/others."""
    rows = axis_rows(results, axis)
    grouped = rows.groupby(axis, sort=True)
    table = grouped[METRIC_COLUMNS].mean()
    table["train_accuracy"] *= 100
    table["test_accuracy"] *= 100
    if grouped.size().max() > 1:
        table["test_accuracy_std"] = grouped["test_accuracy"].std() * 100
    table["status"] = grouped["status"].agg(lambda s: ", ".join(sorted(set(s))))
    table["trials"] = grouped.size()
    return table.reset_index()


def best_trial(results: SweepResults) -> pd.Series | None:
    ok = results.table[results.table["status"] == Status.OK].dropna(subset=["test_accuracy"])
    return None if ok.empty else ok.loc[ok["test_accuracy"].idxmax()]
