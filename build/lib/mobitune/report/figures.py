"""The report's figures: curves per swept value, summaries, a search's picture.

Figure builders return a matplotlib ``Figure`` (object API, no pyplot state); the caller saves it.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import matplotlib
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from mobitune.report.results import SweepResults, axis_rows, axis_table, best_trial
from mobitune.storage.records import Status

DPI = 110
CURVES = [
    ("train_loss", "train loss"),
    ("test_loss", "test loss"),
    ("train_accuracy", "train accuracy"),
    ("test_accuracy", "test accuracy"),
]


def curves_figure(results: SweepResults, axis: str) -> Figure:
    """The report's Figures 3-8: train/test loss and accuracy per epoch, one line per value."""
    figure = Figure(figsize=(11, 8), layout="constrained")
    panels = figure.subplots(2, 2)
    rows = axis_rows(results, axis).sort_values(axis)
    for (column, label), ax in zip(CURVES, panels.flat, strict=True):
        for _, row in rows.iterrows():
            history = results.histories[row["trial_id"]]
            name = f"{axis}={row[axis]}" + (f" (seed {row['seed']})" if rows["seed"].nunique() > 1 else "")
            if row["status"] != Status.OK:
                name += f" [{row['status']}]"
            scale = 100 if column.endswith("accuracy") else 1
            ax.plot(history["step"], history[column] * scale, marker="o", markersize=3, label=name)
        warmup_epochs = _warmup_epochs(results, rows)
        if warmup_epochs:
            ax.axvline(warmup_epochs + 0.5, color="grey", linestyle=":", linewidth=1)
        ax.set_title(label + (" (%)" if column.endswith("accuracy") else ""))
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("epoch (warmup, then finetune)")
        ax.grid(alpha=0.3)
    panels.flat[0].legend(fontsize=8)
    figure.suptitle(f"Train and test curves per {axis}")
    return figure


def _warmup_epochs(results: SweepResults, rows: pd.DataFrame) -> int:
    for trial_id in rows["trial_id"]:
        history = results.histories[trial_id]
        if len(history):
            return int((history["phase"] == "warmup").sum())
    return 0


def summary_figure(results: SweepResults, axis: str) -> Figure:
    """Final train/test accuracy and loss against the swept value."""
    table = axis_table(results, axis)
    figure = Figure(figsize=(10, 4), layout="constrained")
    acc_ax, loss_ax = figure.subplots(1, 2)
    numeric = pd.api.types.is_numeric_dtype(table[axis])
    x = table[axis] if numeric else range(len(table))
    for column, ax in (
        ("train_accuracy", acc_ax),
        ("test_accuracy", acc_ax),
        ("train_loss", loss_ax),
        ("test_loss", loss_ax),
    ):
        ax.plot(x, table[column], marker="o", label=column.replace("_", " "))
    for ax, label in ((acc_ax, "final accuracy (%)"), (loss_ax, "final loss")):
        ax.set_xlabel(axis)
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        if numeric and axis.endswith("lr") and (table[axis] > 0).all() and len(table) > 1:
            ax.set_xscale("log")
        if not numeric:
            ax.set_xticks(list(x), table[axis].astype(str))
    figure.suptitle(f"Final metrics per {axis}")
    return figure


def search_figure(results: SweepResults) -> Figure:
    """Test accuracy per finetune epoch of every trial; a cross where a trial was stopped, rungs dotted."""
    figure = Figure(figsize=(9, 5), layout="constrained")
    ax = figure.subplots()
    best = best_trial(results)
    for row in results.table.itertuples():
        history = results.histories[row.trial_id]
        finetune = history[history["phase"] == "finetune"]
        if finetune.empty:
            continue
        is_best = best is not None and row.trial_id == best["trial_id"]
        line = ax.plot(
            finetune["epoch"],
            finetune["test_accuracy"] * 100,
            marker="o",
            markersize=3,
            linewidth=2.5 if is_best else 1,
            alpha=1 if is_best else 0.6,
            label=f"{row.trial_id} (best)" if is_best else None,
        )[0]
        if row.status == Status.STOPPED:
            last = finetune.iloc[-1]
            ax.plot(last["epoch"], last["test_accuracy"] * 100, "x", color=line.get_color(), markersize=9)
    for rung in (results.search or {}).get("rungs", []):
        ax.axvline(rung, color="grey", linestyle=":", linewidth=1)
    ax.plot([], [], "x", color="black", label="stopped early")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("finetune epoch (dotted: rungs)")
    ax.set_ylabel("test accuracy (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    figure.suptitle(f"Test accuracy of all {len(results.table)} trials ({results.mode})")
    return figure


def save_figure(
    build: Callable[[SweepResults, str], Figure] | Callable[[SweepResults], Figure],
    results: SweepResults,
    axis: str | None,
    path: Path,
    cache: Path | None = None,
) -> None:
    """``build``'s figure of ``results`` (for ``axis``, if given) as a PNG at ``path``.

    With a ``cache`` folder, a figure drawn before from the same results (a sweep whose trials were all cached)
    is copied instead of drawn again: drawing and encoding is most of such a sweep's report time.
    """
    if cache is None:
        _draw(build, results, axis).savefig(path, dpi=DPI)
        return
    kept = cache / f"{_figure_key(path.name, results)}.png"
    if not kept.exists():
        cache.mkdir(parents=True, exist_ok=True)
        scratch = kept.with_name(f".{kept.name}.{os.getpid()}")
        _draw(build, results, axis).savefig(scratch, dpi=DPI, format="png")
        scratch.replace(kept)
    shutil.copyfile(kept, path)


def _draw(build: Callable[..., Figure], results: SweepResults, axis: str | None) -> Figure:
    return build(results) if axis is None else build(results, axis)


def _figure_key(name: str, results: SweepResults) -> str:
    """What a figure shows, and what draws it: its file name (which figure of which axis), the results but for
    their timings and cache marks, this module's code and matplotlib's version."""
    digest = hashlib.sha256()
    shown = results.table.drop(columns=["seconds", "cached"], errors="ignore")
    sorted_histories = sorted(results.histories.items())
    curves = [trial + curve.drop(columns="seconds", errors="ignore").to_json() for trial, curve in sorted_histories]
    for part in (
        name,
        results.mode,
        repr(sorted(results.base.items())),
        repr(results.search),
        shown.to_json(),
        *curves,
        Path(__file__).read_text(),
        matplotlib.__version__,
    ):
        digest.update(part.encode() + b"\0")
    return digest.hexdigest()[:24]
