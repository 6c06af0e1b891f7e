"""Sweeps as the tests build and read them: the 4-trial spec and recipe both backends run, and the checks of a
sweep published to S3."""

from __future__ import annotations

import hashlib
import io
import json

import pandas as pd
import pytest
from helpers import PrefectServer

# 4 distinct trials: the base (lr 0.005, batch 100) once, two more lrs, one more batch size
FOUR_TRIALS = {"lr": [0.005, 0.001, 0.0005], "batch_size": [50, 100]}
METRICS = ["train_loss", "test_loss", "train_accuracy", "test_accuracy"]
RECIPE = "finetune.schedule: cosine\nfinetune.label_smoothing: 0.1\nfinetune.epochs: 1\n"  # both backends apply it


def objects(s3, bucket: str, prefix: str) -> dict[str, bytes]:
    client = s3.client()
    keys = [o["Key"] for o in client.list_objects_v2(Bucket=bucket, Prefix=prefix).get("Contents", [])]
    return {k[len(prefix) :]: client.get_object(Bucket=bucket, Key=k)["Body"].read() for k in keys}


def published_sweep(s3, bucket: str, prefix: str, sweep_id: str | None = None) -> tuple[str, dict[str, bytes]]:
    """The objects of the one sweep under ``prefix`` (or of ``sweep_id``), keyed by their path in the sweep."""
    found = objects(s3, bucket, f"{prefix}/sweeps/")
    sweep_ids = {key.split("/")[0] for key in found}
    if sweep_id is None:
        assert len(sweep_ids) == 1, sweep_ids
        sweep_id = sweep_ids.pop()
    return sweep_id, {k[len(sweep_id) + 1 :]: v for k, v in found.items() if k.startswith(f"{sweep_id}/")}


def artifact_data(server: PrefectServer, key: str) -> object:
    """The latest data of the artifact ``key``, from the server's REST API."""
    [found] = server.api_post("artifacts/filter", {"artifacts": {"key": {"any_": [key]}}, "limit": 1})
    return found["data"]


def check_published(tree: dict[str, bytes], trials: int) -> pd.DataFrame:
    """The bucket holds a complete, consistent sweep; returns its results table."""
    results = pd.read_csv(io.BytesIO(tree["results.csv"]))
    assert len(results) == trials
    for row in results.itertuples():
        own = json.loads(tree[f"trials/{row.trial_id}/metrics.json"])
        for metric in METRICS:
            assert getattr(row, metric) == pytest.approx(own[metric]), (row.trial_id, metric)
        assert {"params.json", "history.csv"} <= {k.split("/")[-1] for k in tree if row.trial_id in k}
    assert {"figures/lr_curves.png", "figures/lr_summary.png", "figures/batch_size_curves.png"} <= set(tree)
    assert all(tree[k].startswith(b"\x89PNG") for k in tree if k.endswith(".png"))
    assert "Best config:" in tree["report.md"].decode() and "## lr" in tree["report.md"].decode()
    manifest = json.loads(tree["manifest.json"])
    assert {f["path"] for f in manifest["files"]} == set(tree) - {"manifest.json"}
    for entry in manifest["files"]:
        assert hashlib.sha256(tree[entry["path"]]).hexdigest() == entry["sha256"]
        assert len(tree[entry["path"]]) == entry["size"]
    return results
