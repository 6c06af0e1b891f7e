"""What a trial is and leaves: its request (validated params, where its files go), its keys in the artifact store,
its three result files.

Apart from :mod:`mobitune.sweep.trial` (which runs a trial, and imports torch to train one) so that the sweep
process, which only asks for trials and reads their results, starts without importing torch and torchvision.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict

from mobitune.params import Params
from mobitune.provenance import provenance
from mobitune.storage.names import Name
from mobitune.storage.records import HISTORY_COLUMNS, Status, final_metrics, write_csv, write_json
from mobitune.storage.stores import LOCAL_ROOT, ArtifactStore, open_store

TRIAL_FILES = ("params.json", "history.csv", "metrics.json")


class TrialRequest(BaseModel):
    """Everything a trial needs: its validated params and where its files go. A pydantic model, so it travels as
    JSON to a worker's slot run and is validated again there, and a Prefect flow takes it as one parameter."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    sweep_id: Name
    trial_id: Name
    params: Params
    varied: dict[str, Any] = {}
    store_uri: str | None = None
    local_root: str = LOCAL_ROOT
    warmup_only: bool = False
    until: int | None = None  # stop after this many finetune epochs (an early-stopping rung); None: all
    use_cache: bool = True  # reuse a stored result of the same config, data and code (False: train, refresh it)
    deadline: float | None = None  # the sweep's time budget ends then (time.time()): stop after the epoch running

    def store(self) -> ArtifactStore:
        """The store the trial's files go to, riding out an S3 endpoint that does not answer for
        ``storage.outage_s``."""
        return open_store(self.store_uri, Path(self.local_root).resolve(), self.params.storage.outage_s)


def trial_key(sweep_id: str, trial_id: str, name: str = "") -> str:
    return f"sweeps/{sweep_id}/trials/{trial_id}/{name}".rstrip("/")


def record_failure(request: TrialRequest, reason: str, seconds: float = 0.0) -> dict[str, Any]:
    """Store a ``failed`` result for the trial: its reason, no history."""
    local_root = Path(request.local_root).resolve()
    metrics = {**final_metrics([]), **epochs_trained([]), "status": Status.FAILED, "seconds": seconds, "error": reason}
    metrics["provenance"] = provenance(seed=request.params.seed)
    return store_results(request, request.store(), local_root, [], metrics)


def epochs_trained(history: list[dict[str, Any]]) -> dict[str, int]:
    return {f"{phase}_epochs": sum(row["phase"] == phase for row in history) for phase in ("warmup", "finetune")}


def store_results(
    request: TrialRequest,
    store: ArtifactStore,
    local_root: Path,
    history: list[dict[str, Any]],
    metrics: dict[str, Any],
) -> dict[str, Any]:
    """Write and store the trial's three files; returns the metrics as stored (``metrics`` carries the
    provenance of the run that computed them: this one's, or the cached trial's)."""
    folder = local_root / trial_key(request.sweep_id, request.trial_id)
    metrics = {"trial_id": request.trial_id, **request.varied, **metrics}
    write_json(
        folder / "params.json",
        {"trial_id": request.trial_id, "varied": request.varied, "params": request.params.to_dict()},
    )
    write_csv(folder / "history.csv", history, HISTORY_COLUMNS)
    write_json(folder / "metrics.json", metrics)  # last: its presence marks the trial complete
    for name in TRIAL_FILES:
        store.put_file(trial_key(request.sweep_id, request.trial_id, name), folder / name)
    return metrics
