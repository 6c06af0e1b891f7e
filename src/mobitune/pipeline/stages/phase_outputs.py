"""What the warmup and finetune stages write after training: the phase's history, its final metrics, and the
details DVC does not show as metrics."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mobitune.storage.records import HISTORY_COLUMNS, cost_metrics, final_metrics, write_csv, write_json
from mobitune.training.loop import FitResult


def write_phase_outputs(
    phase: str,
    result: FitResult,
    history_path: Path,
    metrics_path: Path,
    details_path: Path,
    provenance: dict[str, Any] | None,
) -> None:
    """The phase's history (the plots' CSV), its last epoch's metrics, and the run's cost and provenance beside
    them (a column each in `dvc exp show` if they were metrics). The metrics sit under the phase's name, so DVC
    names their columns ``warmup.test_loss``, not ``data/metrics/warmup.json:test_loss`` (which it must where
    two files hold the same key)."""
    write_csv(history_path, result.history, HISTORY_COLUMNS)
    metrics = {**final_metrics(result.history), "epochs": len(result.history), "status": result.status}
    if result.reason:
        metrics["reason"] = result.reason
    write_json(metrics_path, {phase: metrics})
    write_json(details_path, {"cost": cost_metrics(result.history), "provenance": provenance})
