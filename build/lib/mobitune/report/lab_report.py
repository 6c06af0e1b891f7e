"""The lab report's numbers (``SEED-REPORT.md``) as data, and our results set beside them.

Accuracies are fractions (the report prints percent); losses are cross-entropy.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import pandas as pd

from mobitune.storage.records import Status


@dataclass(frozen=True)
class ReportRow:
    train_loss: float
    test_loss: float
    train_accuracy: float
    test_accuracy: float


# The protocol's headline run: 5 warmup + 5 finetune epochs, lr 0.005, batch 192, first 10 blocks.
HEADLINE_TEST_ACCURACY = 0.879
PHASE_END_LOSSES = {"warmup": (0.978, 1.27), "finetune": (0.3202, 0.3602)}  # (train, test)

# Tables 1-3, one hyperparameter at a time.
TABLES: dict[str, dict[Any, ReportRow]] = {
    "lr": {
        0.05: ReportRow(2.3041, 2.3048, 0.10, 0.0986),
        0.01: ReportRow(1.0341, 1.0529, 0.6458, 0.6296),
        0.005: ReportRow(0.9189, 0.9567, 0.6754, 0.6641),
        0.0001: ReportRow(1.1441, 1.2545, 0.5851, 0.5495),
    },
    "batch_size": {
        32: ReportRow(1.5724, 1.6524, 0.5707, 0.52202),
        64: ReportRow(1.5841, 1.5994, 0.5706, 0.57748),
        128: ReportRow(1.572, 1.6137, 0.5993, 0.57782),
        192: ReportRow(0.9705, 1.1226, 0.6662, 0.60964),
    },
    "trainable_layers": {
        2: ReportRow(1.2052, 1.222, 0.7409, 0.72308),
        5: ReportRow(1.0561, 1.0866, 0.7645, 0.75996),
        10: ReportRow(1.1096, 1.067, 0.7467, 0.7721),
    },
}
NAMED_WITHOUT_NUMBERS = {"lr": (0.001, 0.0005)}  # the text names them; Table 1 omits them
DIVERGED = {"lr": (0.05,)}  # at chance (loss ln 10 = 2.30): a diverged run, not a result
FINAL_CHOICE = {"lr": 0.005, "batch_size": 192, "trainable_layers": 10}
TABLE_NAMES = {"lr": "Table 1", "batch_size": "Table 2", "trainable_layers": "Table 3"}

ORDER = ("test_accuracy", "test_loss", "train_accuracy", "train_loss")  # what matters first
LABELS = {
    "test_accuracy": "test acc %",
    "test_loss": "test loss",
    "train_accuracy": "train acc %",
    "train_loss": "train loss",
}


def _matches(value: Any, candidate: Any) -> bool:
    return math.isclose(float(value), float(candidate), rel_tol=1e-9)


def report_row(axis: str, value: Any) -> ReportRow | None:
    for candidate, row in TABLES.get(axis, {}).items():
        if _matches(value, candidate):
            return row
    return None


def _note(axis: str, value: Any, status: str) -> str:
    notes = []
    if any(_matches(value, v) for v in DIVERGED.get(axis, ())):
        notes.append("report: diverged (at chance)")
    elif any(_matches(value, v) for v in NAMED_WITHOUT_NUMBERS.get(axis, ())):
        notes.append("report: named in the text, no numbers")
    elif report_row(axis, value) is None:
        notes.append("not in the report")
    if status != Status.OK:
        notes.append(f"ours: {status}")
    return "; ".join(notes)


def comparison_table(axis: str, ours: pd.DataFrame) -> pd.DataFrame | None:
    """Our per-value results of ``axis`` beside the report's table; None if the report has no such table.

    ``ours`` has one row per value with the columns of :data:`ORDER`
    (accuracies in %) and ``status``, and may have ``test_accuracy_std`` and
    ``seeds`` (shown beside); the report's values we did not sweep get
    a row of their own. Differences are ours minus the report's, in points.
    """
    if axis not in TABLES:
        return None
    swept = list(ours[axis])
    missing = [v for v in TABLES[axis] if not any(_matches(v, s) for s in swept)]
    rows = []
    for value in sorted([*swept, *missing], key=float):
        own = ours[ours[axis] == value].iloc[0] if value in swept else None
        theirs = report_row(axis, value)
        row: dict[str, Any] = {axis: value}
        for metric in ORDER:
            scale = 100 if metric.endswith("accuracy") else 1
            row[f"{LABELS[metric]} ours"] = own[metric] if own is not None else math.nan
            row[f"{LABELS[metric]} report"] = getattr(theirs, metric) * scale if theirs else math.nan
            if metric == "test_accuracy":
                if "test_accuracy_std" in ours.columns:
                    row["test acc std ours"] = own["test_accuracy_std"] if own is not None else math.nan
                row["Δ test acc"] = row["test acc % ours"] - row["test acc % report"]
        if "seeds" in ours.columns:
            row["seeds"] = int(own["seeds"]) if own is not None else 0
        row["note"] = _note(axis, value, str(own["status"])) if own is not None else "not swept here"
        rows.append(row)
    return pd.DataFrame(rows)


def headline(table: pd.DataFrame, base: dict[str, Any]) -> str | None:
    """A line setting the report's headline run beside the trials of the same config, if the sweep has them.

    ``table`` is a sweep's results (accuracies as fractions); the config is
    matched on the swept keys of :data:`FINAL_CHOICE`, every other swept key
    at its ``base`` value.
    """
    keys = [key for key in FINAL_CHOICE if key in table.columns]
    if not keys:
        return None
    same = table
    for key in table.columns.intersection(list(base)):
        same = same[same[key] == FINAL_CHOICE.get(key, base[key])]
    warmup, finetune = PHASE_END_LOSSES["warmup"], PHASE_END_LOSSES["finetune"]
    line = (
        f"The report's final choice ({', '.join(f'{k} {v}' for k, v in FINAL_CHOICE.items())}) reached "
        f"**{HEADLINE_TEST_ACCURACY * 100:.1f}%** test accuracy after 5 warmup + 5 finetune epochs (train/test "
        f"loss {warmup[0]}/{warmup[1]} after warmup, {finetune[0]}/{finetune[1]} after finetune)."
    )
    ok = same[same["status"] == Status.OK]
    if ok.empty:
        return line + " This sweep has no finished trial of that config."
    phases = sorted(set(zip(ok["warmup_epochs"], ok["finetune_epochs"], strict=True)))
    epochs = ", ".join(f"{warmup} warmup + {finetune} finetune" for warmup, finetune in phases)
    return line + (
        f" Here: **{ok['test_accuracy'].mean() * 100:.2f}%** (mean of {len(ok)} trial(s), test loss "
        f"{ok['test_loss'].mean():.4f}, {epochs} epochs)."
    )
