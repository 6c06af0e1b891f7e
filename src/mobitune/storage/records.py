"""Result files (JSON metrics, CSV histories), written atomically and strictly valid."""

from __future__ import annotations

import csv
import functools
import io
import json
import math
import os
import subprocess
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from mobitune.storage.stores import atomic_write_text

STOPPED = "stopped"  # the status of a trial that early stopping ended at a rung (beside train's ok/diverged)
HISTORY_COLUMNS = (  # one row per epoch of history.csv
    "step",
    "phase",
    "epoch",
    "train_loss",
    "train_accuracy",
    "test_loss",
    "test_accuracy",
    "seconds",
)


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
    return json.dumps(json_safe(obj), indent=2, allow_nan=False) + "\n"


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


def git_revision() -> str | None:
    """The commit the code ran from (with ``-dirty`` for local changes), if in a git checkout."""
    return _git_revision(os.getcwd())


@functools.cache
def _git_revision(folder: str) -> str | None:
    """Asked once per process and folder: ``git describe --dirty`` reads the whole work tree."""
    try:
        result = subprocess.run(
            ["git", "describe", "--always", "--dirty", "--abbrev=12"],
            cwd=folder,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return result.stdout.strip() or None
