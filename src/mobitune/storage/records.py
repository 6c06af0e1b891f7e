"""Result files (JSON metrics, CSV histories), written atomically and strictly valid."""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Iterable, Mapping
from enum import StrEnum
from pathlib import Path
from typing import Any

from mobitune.redaction import redact_data
from mobitune.storage.stores import atomic_write_text


class Status(StrEnum):
    """A phase's or a trial's status, in checkpoints, metrics files and ``results.csv`` (plain strings there)."""

    OK = "ok"  # trained every epoch asked of it
    DIVERGED = "diverged"  # loss NaN/inf, or a collapse to chance: stopped at once, history kept; a result
    STOPPED = "stopped"  # early stopping ended the trial at a rung, or the sweep's time budget ran out (resumable)
    FAILED = "failed"  # an exception (a bad config, out of memory), recorded with its reason


HISTORY_COLUMNS = (  # one row per epoch of history.csv
    "step",
    "phase",
    "epoch",
    "train_loss",
    "train_accuracy",
    "test_loss",
    "test_accuracy",
    "test_loss_flips",  # with augment.test_flip: the mean logits of each test image and its mirror
    "test_accuracy_flips",
    "seconds",  # the epoch on the device: training and evaluation
    "train_images_per_s",
    "eval_images_per_s",
)
FINAL_METRICS = ("train_loss", "train_accuracy", "test_loss", "test_accuracy")  # of a run's last epoch
FLIP_METRICS = ("test_loss_flips", "test_accuracy_flips")  # beside them, in a run with test-time flips


def json_safe(value: Any) -> Any:
    """JSON has no NaN: a diverged run's non-finite numbers become null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Mapping):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    return value


def to_json(obj: Any) -> str:
    """``obj`` as strict JSON, every string redacted (:mod:`mobitune.redaction`): a record never keeps a secret."""
    return json.dumps(json_safe(redact_data(obj)), indent=2, allow_nan=False) + "\n"


def write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, to_json(obj))


def to_csv(rows: Iterable[Mapping[str, Any]], columns: Iterable[str]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(columns), extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def write_csv(path: Path, rows: Iterable[Mapping[str, Any]], columns: Iterable[str]) -> None:
    atomic_write_text(path, to_csv(rows, columns))


def cost_metrics(history: list[Mapping[str, Any]]) -> dict[str, float]:
    """What these epochs cost: ``device_seconds`` (their training and evaluation, nothing around them) and the
    mean ``train_images_per_s`` and ``eval_images_per_s``; empty for rows that recorded none (older runs)."""
    timed = [row for row in history if row.get("train_images_per_s") not in (None, "")]
    if not timed:
        return {}
    evaluated = [float(row["eval_images_per_s"]) for row in timed if row.get("eval_images_per_s") not in (None, "")]
    cost = {
        "device_seconds": sum(float(row["seconds"]) for row in timed),
        "train_images_per_s": sum(float(row["train_images_per_s"]) for row in timed) / len(timed),
    }
    if evaluated:
        cost["eval_images_per_s"] = sum(evaluated) / len(evaluated)
    return cost


def final_metrics(history: list[Mapping[str, Any]]) -> dict[str, Any]:
    """The last epoch's losses and accuracies (None before any epoch), and the flipped view's where it has one."""
    last = history[-1] if history else {}
    flips = {key: last[key] for key in FLIP_METRICS if last.get(key) not in (None, "")}
    return {**{key: last.get(key) for key in FINAL_METRICS}, **flips}
