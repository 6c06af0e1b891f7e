"""What the warmup and finetune stages write after training: the phase's history and its final metrics."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mobitune.storage.records import HISTORY_COLUMNS, cost_metrics, final_metrics, write_csv, write_json
from mobitune.training.loop import FitResult


def write_phase_outputs(result: FitResult, history_path: Path, metrics_path: Path, provenance: dict[str, Any]) -> None:
    """The phase's history (the plots' CSV) and its last epoch's metrics with the run's provenance."""
    write_csv(history_path, result.history, HISTORY_COLUMNS)
    metrics = {**final_metrics(result.history), **cost_metrics(result.history)}
    metrics.update(epochs=len(result.history), status=result.status)
    if result.reason:
        metrics["reason"] = result.reason
    write_json(metrics_path, {**metrics, "provenance": provenance})
