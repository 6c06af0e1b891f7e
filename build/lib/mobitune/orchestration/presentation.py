"""What the Prefect UI shows of a sweep: its results rounded for a table artifact, its report with the figures
inside (the UI loads no image by a path on some disk)."""

from __future__ import annotations

import base64
import re
from pathlib import Path

import pandas as pd

from mobitune.report.results import SweepResults


def display_table(results: SweepResults) -> pd.DataFrame:
    """The results as people read them (the Prefect table artifact): the columns that matter first,
    accuracies in %, losses to 4 decimals, seconds to 1."""
    table = results.table
    shown = pd.DataFrame({"trial_id": table["trial_id"], "status": table["status"]})
    for axis in results.axes:
        shown[axis] = table[axis]
    for column in ("test_accuracy", "test_accuracy_flips", "train_accuracy"):
        if column in table:
            shown[f"{column} %"] = (table[column] * 100).round(2)
    for column in ("test_loss", "train_loss"):
        shown[column] = table[column].round(4)
    shown["warmup_epochs"], shown["finetune_epochs"] = table["warmup_epochs"], table["finetune_epochs"]
    shown["seconds"] = table["seconds"].round(1)
    for column, digits in (("device_seconds", 1), ("train_images_per_s", 0), ("gpu_utilization_percent", 1)):
        if column in table:  # what the trial cost; GPU figures only where a GPU ran it
            shown[column] = table[column].round(digits)
    shown["cached"] = table["cached"]
    shown["error"] = table["error"]
    return shown


def inline_figures(markdown: str, folder: Path) -> str:
    """``markdown`` with its ``![alt](figures/x.png)`` links replaced by the images themselves (data URIs):
    the Prefect UI shows an artifact's images only if they travel inside it, not by a path on some disk."""

    def embed(match: re.Match[str]) -> str:
        data = base64.b64encode((folder / match["path"]).read_bytes()).decode()
        return f"![{match['alt']}](data:image/png;base64,{data})"

    return re.sub(r"!\[(?P<alt>[^\]]*)\]\((?P<path>figures/[^)]+\.png)\)", embed, markdown)
