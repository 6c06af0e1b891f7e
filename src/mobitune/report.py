"""Sweep aggregation: one tidy results table, the report's tables and figures, a markdown report.

Figure builders return a matplotlib ``Figure`` (object API, no pyplot state);
the caller saves it.
"""

from __future__ import annotations

import base64
import json
import math
import re
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
SEARCH_RECORD = "search.json"  # a searched or early-stopped sweep's rungs, decisions and epochs (search.summary)
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
    search: dict[str, Any] | None = None  # search.json, if the sweep searched or stopped trials early

    @property
    def sampled(self) -> bool:
        return self.mode in ("random", "tpe")


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
        history = pd.read_csv(folder / "history.csv")
        histories[trial_id] = history
        row.update({key: metrics.get(key) for key in METRIC_COLUMNS})
        row.update({f"{phase}_epochs": int((history["phase"] == phase).sum()) for phase in ("warmup", "finetune")})
        row.update({key: metrics.get(key) for key in ("seconds", "status", "error")})
        row["cached"] = bool(metrics.get("cached", False))
        rows.append(row)
    table = pd.DataFrame(rows)
    for column in METRIC_COLUMNS + ["seconds"]:
        table[column] = pd.to_numeric(table[column], errors="coerce")
    search_path = sweep_dir / SEARCH_RECORD
    search = json.loads(search_path.read_text()) if search_path.exists() else None
    return SweepResults(table, histories, axes, base, mode, search)


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
        if row.status == "stopped":
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


def rung_table(search: Mapping[str, Any]) -> pd.DataFrame:
    """Per rung: how many trials reached it, continued and stopped, and the accuracies that decided."""
    decisions = pd.DataFrame(search["decisions"], columns=["rung", "trial_id", "test_accuracy", "promoted"])
    rows = []
    for rung, group in decisions.groupby("rung", sort=True):
        kept = group[group["promoted"]]
        rows.append(
            {
                "rung (finetune epochs)": int(rung),
                "reached": len(group),
                "continued": len(kept),
                "stopped": len(group) - len(kept),
                "best test acc": group["test_accuracy"].max() * 100,
                "lowest continued test acc": kept["test_accuracy"].min() * 100 if len(kept) else math.nan,
            }
        )
    return pd.DataFrame(rows)


def search_markdown(results: SweepResults, figures: list[str]) -> list[str]:
    """The section of a searched or early-stopped sweep: spend, rungs, the accuracy picture, axis importance."""
    search = results.search or {}
    spent, full = search["finetune_epochs_spent"], search["finetune_epochs_full"]
    early = search["early_stop"]
    lines = ["## Search", ""]
    if early["method"] != "none":
        lines += [
            f"Early stopping: {early['method']}, rungs at finetune epochs {search['rungs']} "
            f"(min_epochs {early['min_epochs']}, reduction {early['reduction']}) of {search['full_epochs']}.",
            "",
        ]
    share = f" ({spent / full:.0%})" if full else ""
    lines += [f"Finetune epochs spent: **{spent}** of the {full} that {len(results.table)} full trials take{share}."]
    if search["budget_epochs"] is not None:
        lines[-1] += f" Budget: {search['budget_epochs']} epochs."
    lines += [""]
    if search["decisions"]:
        lines += [markdown_table(rung_table(search)), ""]
    if search["importance"]:
        importance = pd.DataFrame(
            {"axis": list(search["importance"]), "importance": list(search["importance"].values())}
        )
        lines += [
            f"Importance of each axis (Optuna, PED-ANOVA) for the test accuracy after finetune epoch "
            f"{search['importance_at_epoch']}, which every trial reached:",
            "",
            markdown_table(importance),
            "",
        ]
    lines += [f"![search]({path})" for path in figures] + [""]
    return lines


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


def _short(value: Any) -> str:
    """A sampled float as people read it (0.003029); other values as they are."""
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def display_table(results: SweepResults) -> pd.DataFrame:
    """The results as people read them (the Prefect table artifact): the columns that matter first,
    accuracies in %, losses to 4 decimals, seconds to 1."""
    table = results.table
    shown = pd.DataFrame({"trial_id": table["trial_id"], "status": table["status"]})
    for axis in results.axes:
        shown[axis] = table[axis]
    for column in ("test_accuracy", "train_accuracy"):
        shown[f"{column} %"] = (table[column] * 100).round(2)
    for column in ("test_loss", "train_loss"):
        shown[column] = table[column].round(4)
    shown["warmup_epochs"], shown["finetune_epochs"] = table["warmup_epochs"], table["finetune_epochs"]
    shown["seconds"] = table["seconds"].round(1)
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
        + "."
        + (f" {int(table['cached'].sum())} reused from the trial cache (`cached`)." if table["cached"].any() else ""),
        "",
    ]
    best = best_trial(results)
    if best is not None:
        config = ", ".join(f"{axis}={_short(best[axis])}" for axis in results.axes)
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
    if results.search is not None:
        lines += search_markdown(results, figures.get("search", []))
    for axis in [] if results.sampled else results.axes:
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
    if results.search is not None:
        relative = "figures/search.png"
        search_figure(results).savefig(sweep_dir / relative, dpi=110)
        figures["search"] = [relative]
        written.append(sweep_dir / relative)
    for axis in [] if results.sampled else results.axes:
        slug = axis.replace(".", "_")
        for kind, build in (("curves", curves_figure), ("summary", summary_figure)):
            relative = f"figures/{slug}_{kind}.png"
            build(results, axis).savefig(sweep_dir / relative, dpi=110)
            figures.setdefault(axis, []).append(relative)
            written.append(sweep_dir / relative)
    (sweep_dir / "report.md").write_text(report_markdown(results, sweep_id, figures))
    written.append(sweep_dir / "report.md")
    return written
