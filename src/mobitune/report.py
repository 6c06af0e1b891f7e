"""Sweep aggregation: one tidy results table, the report's tables and figures, a markdown report.

Figure builders return a matplotlib ``Figure`` (object API, no pyplot state);
the caller saves it.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from mobitune import reference
from mobitune.sweep import lookup

METRIC_COLUMNS = ["train_loss", "test_loss", "train_accuracy", "test_accuracy"]
CURVES = [
    ("train_loss", "train loss"),
    ("test_loss", "test loss"),
    ("train_accuracy", "train accuracy"),
    ("test_accuracy", "test accuracy"),
]


@dataclass
class SweepResults:
    table: pd.DataFrame  # one row per trial
    histories: dict[str, pd.DataFrame]  # trial_id -> per-epoch history (both phases)
    axes: list[str]  # the swept keys, in the spec's order
    base: dict[str, Any]  # the base value of every axis
    mode: str


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
        row = {"trial_id": trial_id, **{axis: lookup(params, axis) for axis in axes}, "seed": params["seed"]}
        row.update({key: metrics.get(key) for key in [*METRIC_COLUMNS, "epochs", "seconds", "status", "error"]})
        rows.append(row)
        history = pd.read_csv(folder / "history.csv")
        histories[trial_id] = history
    table = pd.DataFrame(rows)
    for column in METRIC_COLUMNS + ["seconds"]:
        table[column] = pd.to_numeric(table[column], errors="coerce")
    return SweepResults(table, histories, axes, base, mode)


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


def curves_figure(results: SweepResults, axis: str) -> Figure:
    """The report's Figures 3-8: train/test loss and accuracy per epoch, one line per value."""
    figure = Figure(figsize=(11, 8), layout="constrained")
    panels = figure.subplots(2, 2)
    rows = axis_rows(results, axis).sort_values(axis)
    for (column, label), ax in zip(CURVES, panels.flat, strict=True):
        for _, row in rows.iterrows():
            history = results.histories[row["trial_id"]]
            name = f"{axis}={row[axis]}" + (f" (seed {row['seed']})" if rows["seed"].nunique() > 1 else "")
            if row["status"] != "ok":
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


def markdown_table(frame: pd.DataFrame) -> str:
    """Losses to 4 decimals, accuracies (%) to 2, differences signed; other numbers to 4 digits."""

    def cell(value: Any, column: str) -> str:
        if isinstance(value, float):
            if math.isnan(value):
                return ""
            if column.startswith("Δ"):
                return f"{value:+.2f}"
            if "loss" in column:
                return f"{value:.4f}"
            if "acc" in column:
                return f"{value:.2f}"
            return f"{value:.4g}"
        return "" if value is None else str(value)

    columns = [str(c) for c in frame.columns]
    lines = ["| " + " | ".join(columns) + " |", "|" + " --- |" * len(columns)]
    lines += [
        "| " + " | ".join(cell(v, c) for v, c in zip(row, columns, strict=True)) + " |"
        for row in frame.itertuples(index=False)
    ]
    return "\n".join(lines)


def best_trial(results: SweepResults) -> pd.Series | None:
    ok = results.table[results.table["status"] == "ok"].dropna(subset=["test_accuracy"])
    return None if ok.empty else ok.loc[ok["test_accuracy"].idxmax()]


def report_markdown(results: SweepResults, sweep_id: str, figures: dict[str, list[str]]) -> str:
    """The markdown report: best config, results table, per-axis tables and figures."""
    table = results.table
    counts = table["status"].value_counts().to_dict()
    lines = [
        f"# Sweep {sweep_id}",
        "",
        f"{len(table)} trials ({results.mode}): "
        + ", ".join(f"{n} {status}" for status, n in sorted(counts.items()))
        + ".",
        "",
    ]
    best = best_trial(results)
    if best is not None:
        config = ", ".join(f"{axis}={best[axis]}" for axis in results.axes)
        lines += [
            f"**Best config:** {config} (trial `{best['trial_id']}`, seed {best['seed']}): "
            f"test accuracy {best['test_accuracy'] * 100:.2f}%, test loss {best['test_loss']:.4f}.",
            "",
        ]
    else:
        lines += ["**No trial finished successfully.**", ""]
    seed_report = reference.headline(table, results.base)
    if seed_report:
        lines += [seed_report, ""]
    shown = table.drop(columns=["error"])
    shown[["train_accuracy", "test_accuracy"]] *= 100
    lines += ["## All trials", "", "Accuracies in %; final epoch.", "", markdown_table(shown), ""]
    failed = table[table["error"].notna()]
    if len(failed):
        lines += ["Failures:", ""] + [f"- `{r.trial_id}`: {r.error}" for r in failed.itertuples()] + [""]
    for axis in results.axes:
        ours = axis_table(results, axis)
        lines += [f"## {axis}", "", "Accuracies in %; final epoch; mean over seeds (std: their spread).", ""]
        lines += [markdown_table(ours), ""]
        beside = reference.comparison_table(axis, ours)
        if beside is not None:
            lines += [
                f"Beside the report's {reference.TABLE_NAMES[axis]} (Δ: ours minus the report's, in points; "
                "the report does not say how long its sweep trials trained or on what resolution):",
                "",
                markdown_table(beside),
                "",
            ]
        lines += [f"![{axis}]({path})" for path in figures.get(axis, [])] + [""]
    return "\n".join(lines)


def write_report(results: SweepResults, sweep_dir: Path, sweep_id: str) -> list[Path]:
    """results.csv, figures/*.png and report.md in ``sweep_dir``; returns the files written."""
    written = [sweep_dir / "results.csv"]
    results.table.to_csv(written[0], index=False)
    figures: dict[str, list[str]] = {}
    (sweep_dir / "figures").mkdir(exist_ok=True)
    for axis in results.axes:
        slug = axis.replace(".", "_")
        for kind, build in (("curves", curves_figure), ("summary", summary_figure)):
            relative = f"figures/{slug}_{kind}.png"
            build(results, axis).savefig(sweep_dir / relative, dpi=110)
            figures.setdefault(axis, []).append(relative)
            written.append(sweep_dir / relative)
    (sweep_dir / "report.md").write_text(report_markdown(results, sweep_id, figures))
    written.append(sweep_dir / "report.md")
    return written
