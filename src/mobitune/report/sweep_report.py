"""A sweep's markdown report beside the lab report's numbers, and writing it with results.csv and the figures."""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from mobitune.redaction import redact
from mobitune.report import lab_report
from mobitune.report.figures import curves_figure, save_figure, search_figure, summary_figure
from mobitune.report.results import COST_COLUMNS, PROVENANCE_COLUMNS, SweepResults, axis_table, best_trial


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
    if search.get("ended_by_time_budget"):
        lines += [
            "",
            f"**The time budget ({search['time_budget_s']:g} s) ended the sweep**: {search['not_started']} planned "
            "trials did not start, and the trials running then stopped after their epoch (status `stopped`, "
            "resumable with `mobitune sweep --resume`).",
        ]
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


def cost_markdown(results: SweepResults) -> list[str]:
    """The "Cost" section: device-hours per config and for the study, the share of the trials' wall time their
    device was busy, throughput, and on a GPU memory (peak beside the estimate) and utilisation. Trials answered
    from the cache cost this sweep nothing and are left out."""
    table = results.table
    if "device_seconds" not in table:
        return []
    trained = table[~table["cached"]].dropna(subset=["device_seconds"])
    if trained.empty:
        return ["## Cost", "", "Every trial was answered from the cache: this sweep trained nothing.", ""]
    device_hours = trained["device_seconds"].sum() / 3600
    busy = trained["device_seconds"].sum() / trained["seconds"].sum()
    lines = [
        "## Cost",
        "",
        f"The finetune epochs of the {len(trained)} trial(s) trained here took **{device_hours:.3f} device-hours** "
        f"(training and evaluation; the shared warmups apart), {busy:.0%} of the trials' wall time"
        f"{'' if len(trained) == len(table) else f'; {len(table) - len(trained)} answered from the cache'}.",
        "",
    ]
    columns = {
        "device_seconds": ("device-hours", lambda s: s.sum() / 3600),
        "train_images_per_s": ("train img/s", "mean"),
        "eval_images_per_s": ("eval img/s", "mean"),
        "peak_memory_bytes": ("peak memory GiB", lambda s: s.max() / 2**30),
        "memory_estimate_bytes": ("estimate GiB", lambda s: s.max() / 2**30),
        "gpu_utilization_percent": ("GPU busy %", "mean"),
    }
    aggregations = {name: (column, how) for column, (name, how) in columns.items() if column in trained}
    configs = trained.assign(config="base")  # with no swept axis every trial is of one config
    per_config = configs.groupby(results.axes or ["config"], sort=True).agg(**aggregations)
    return [*lines, markdown_table(per_config.reset_index()), ""]


def _distinct(table: pd.DataFrame, column: str) -> str:
    """``git_commit 96824f3c…`` or ``threads 1, 2``: the values a column takes, for the report's provenance line."""
    values = sorted({str(value) for value in table[column].dropna()})
    return f"{column} " + ", ".join(value[:12] if column == "git_commit" else value for value in values)


def status_counts(table: pd.DataFrame) -> str:
    """``1 diverged, 3 ok``: trials by status."""
    return ", ".join(f"{n} {status}" for status, n in sorted(table["status"].value_counts().items()))


def no_trial_started(results: SweepResults) -> str:
    """Why a sweep has no trial: its time budget ended before the first could start (the shared warmup, which
    comes first, took it all)."""
    search = results.search or {}
    if not search.get("ended_by_time_budget"):
        return "no trial started"
    return f"no trial started: the time budget ({search['time_budget_s']:g} s) ended the sweep"


def outcome(results: SweepResults, sweep_id: str) -> str:
    """One line for a sweep's end: its trials by status and its best trial (a notification's text)."""
    table = results.table
    if table.empty:
        return f"sweep {sweep_id}: {no_trial_started(results)}"
    best = best_trial(results)
    found = (
        f"best test accuracy {best['test_accuracy'] * 100:.2f}% (trial {best['trial_id']})"
        if best is not None
        else "no trial finished ok"
    )
    return f"sweep {sweep_id}: {len(table)} trials ({status_counts(table)}); {found}"


def report_markdown(results: SweepResults, sweep_id: str, figures: dict[str, list[str]]) -> str:
    """The markdown report: best config, results table, per-axis tables and figures."""
    table = results.table
    if table.empty:
        return empty_report(results, sweep_id)
    lines = [
        f"# Sweep {sweep_id}",
        "",
        f"{len(table)} trials ({results.mode}): "
        + status_counts(table)
        + "."
        + (f" {int(table['cached'].sum())} reused from the trial cache (`cached`)." if table["cached"].any() else ""),
        "",
    ]
    best = best_trial(results)
    if best is not None:
        config = ", ".join(f"{axis}={_short(best[axis])}" for axis in results.axes) or "the base params"
        lines += [
            f"**Best config:** {config} (trial `{best['trial_id']}`, seed {best['seed']}): "
            f"test accuracy {best['test_accuracy'] * 100:.2f}%, test loss {best['test_loss']:.4f}.",
            "",
        ]
    else:
        lines += ["**No trial finished successfully.**", ""]
    seed_report = lab_report.headline(table, results.base)
    if seed_report:
        lines += [seed_report, ""]
    recorded_by = [column for column in PROVENANCE_COLUMNS if column in table]
    shown = table.drop(columns=["error", *recorded_by, *[column for column in COST_COLUMNS if column in table]])
    percent = [column for column in ("train_accuracy", "test_accuracy", "test_accuracy_flips") if column in shown]
    shown[percent] *= 100
    lines += ["## All trials", "", "Accuracies in %; final epoch; test accuracy of single images"]
    lines[-1] += " (flips: the mean of each test image and its mirror)." if "test_accuracy_flips" in shown else "."
    lines += ["", markdown_table(shown), ""]
    if recorded_by:
        lines += ["Computed by: " + "; ".join(_distinct(table, column) for column in recorded_by) + ".", ""]
    failed = table[table["error"].notna()]
    if len(failed):
        lines += (
            ["Failed or diverged, and why:", ""] + [f"- `{r.trial_id}`: {r.error}" for r in failed.itertuples()] + [""]
        )
    lines += cost_markdown(results)
    if results.search is not None:
        lines += search_markdown(results, figures.get("search", []))
    for axis in [] if results.sampled else results.axes:
        ours = axis_table(results, axis)
        lines += [f"## {axis}", "", "Accuracies in %; final epoch; mean over seeds (std: their spread).", ""]
        lines += [markdown_table(ours), ""]
        beside = lab_report.comparison_table(axis, ours)
        if beside is not None:
            lines += [
                f"Beside the report's {lab_report.TABLE_NAMES[axis]} (Δ: ours minus the report's, in points; "
                "the report does not say how long its sweep trials trained or on what resolution):",
                "",
                markdown_table(beside),
                "",
            ]
        lines += [f"![{axis}]({path})" for path in figures.get(axis, [])] + [""]
    return "\n".join(lines)


def empty_report(results: SweepResults, sweep_id: str) -> str:
    """The report of a sweep that started no trial: why, and how to run its trials now."""
    search = results.search or {}
    why = no_trial_started(results)
    lines = [f"# Sweep {sweep_id}", "", f"**{why[0].upper()}{why[1:]}**"]
    if search.get("ended_by_time_budget"):
        lines[-1] += (
            f" before the first trial, during the shared warmup that every trial waits for: its "
            f"{search['not_started']} planned trials did not start. Give `sweep.time_budget_s` more than the "
            f"warmup takes, or run them now that the warmup is stored: `mobitune sweep --resume {sweep_id}`."
        )
    return "\n".join([*lines, ""])


def write_report(results: SweepResults, sweep_dir: Path, sweep_id: str, figure_cache: Path | None = None) -> list[Path]:
    """results.csv, figures/*.png and report.md in ``sweep_dir``; returns the files written. ``figure_cache``:
    a folder of figures drawn before, by what they show (see :func:`~mobitune.report.figures.save_figure`)."""
    written = [sweep_dir / "results.csv"]
    results.table.to_csv(written[0], index=False)
    figures: dict[str, list[str]] = {}
    (sweep_dir / "figures").mkdir(exist_ok=True)
    if results.search is not None and not results.table.empty:
        relative = "figures/search.png"
        save_figure(search_figure, results, None, sweep_dir / relative, figure_cache)
        figures["search"] = [relative]
        written.append(sweep_dir / relative)
    for axis in [] if results.sampled or results.table.empty else results.axes:
        slug = axis.replace(".", "_")
        for kind, build in (("curves", curves_figure), ("summary", summary_figure)):
            relative = f"figures/{slug}_{kind}.png"
            save_figure(build, results, axis, sweep_dir / relative, figure_cache)
            figures.setdefault(axis, []).append(relative)
            written.append(sweep_dir / relative)
    (sweep_dir / "report.md").write_text(redact(report_markdown(results, sweep_id, figures)))
    written.append(sweep_dir / "report.md")
    return written
