"""The report's numbers as data, and every sweep report setting ours beside them."""

from __future__ import annotations

import math
import re
from pathlib import Path

import pandas as pd
import pytest
from helpers import write_sweep_folder
from matplotlib.figure import Figure

from mobitune import cli
from mobitune.report import lab_document, lab_report
from mobitune.report.figures import save_figure, summary_figure
from mobitune.report.results import SweepResults
from mobitune.report.sweep_report import report_markdown
from mobitune.sweep import study_run

# SEED-REPORT.md, Tables 1-3, as printed there (accuracies in %)
PRINTED = {
    "lr": "0.05 2.3041 2.3048 10 9.86 | 0.01 1.0341 1.0529 64.58 62.96 | 0.005 0.9189 0.9567 67.54 66.41 | "
    "0.0001 1.1441 1.2545 58.51 54.95",
    "batch_size": "32 1.5724 1.6524 57.07 52.202 | 64 1.5841 1.5994 57.06 57.748 | 128 1.572 1.6137 59.93 57.782 | "
    "192 0.9705 1.1226 66.62 60.964",
    "trainable_layers": "2 1.2052 1.222 74.09 72.308 | 5 1.0561 1.0866 76.45 75.996 | 10 1.1096 1.067 74.67 77.21",
}


@pytest.mark.parametrize("axis", sorted(PRINTED))
def test_tables_hold_the_reports_numbers(axis: str) -> None:
    for printed in PRINTED[axis].split(" | "):
        value, train_loss, test_loss, train_acc, test_acc = map(float, printed.split())
        row = lab_report.report_row(axis, value)
        expected = (train_loss, test_loss, train_acc / 100, test_acc / 100)
        assert row is not None and tuple(vars(row).values()) == pytest.approx(expected, abs=1e-9), printed
    assert len(lab_report.TABLES[axis]) == len(PRINTED[axis].split(" | "))


def _results(rows: list[dict]) -> SweepResults:
    table = pd.DataFrame(rows)
    table["trial_id"] = [f"t{i:03d}" for i in range(len(table))]
    table["error"] = None
    table["warmup_epochs"], table["finetune_epochs"], table["seconds"], table["cached"] = 5, 5, 1.0, False
    histories = {t: pd.DataFrame(columns=["step", "phase"]) for t in table["trial_id"]}
    base = {"lr": 0.005, "batch_size": 192}
    return SweepResults(table, histories, ["lr", "batch_size"], base, "one-at-a-time")


def test_sweep_report_sets_each_value_beside_the_report() -> None:
    ok = {"train_loss": 0.5, "test_loss": 0.6, "train_accuracy": 0.8, "test_accuracy": 0.75, "status": "ok"}
    diverged = {**ok, "train_loss": math.nan, "test_loss": math.nan, "test_accuracy": math.nan, "status": "diverged"}
    results = _results(
        [
            {"lr": 0.005, "batch_size": 192, "seed": 0, **ok},
            {"lr": 0.005, "batch_size": 192, "seed": 1, **ok, "test_accuracy": 0.77},
            {"lr": 0.05, "batch_size": 192, "seed": 0, **diverged},
            {"lr": 0.001, "batch_size": 192, "seed": 0, **ok},
            {"lr": 0.02, "batch_size": 192, "seed": 0, **ok},
            {"lr": 0.005, "batch_size": 48, "seed": 0, **ok},
        ]
    )
    report = report_markdown(results, "sweep-x", {})
    assert "reached **87.9%** test accuracy" in report and "0.3202/0.3602 after finetune" in report
    assert "Here: **76.00%** (mean of 2 trial(s), test loss 0.6000, 5 warmup + 5 finetune epochs)" in report
    lr_section = report[report.index("## lr") : report.index("## batch_size")]
    lines = {line.split(" | ")[0].strip("| "): line for line in lr_section.splitlines() if line.startswith("| 0.")}
    # lr 0.005: ours is the mean of two seeds (76%), the report's Table 1 row beside it, the difference
    assert re.search(
        r"\| 0.005 \| 76.00 \| 66.41 \| 1.41 \| \+9.59 \| 0.6000 \| 0.9567 \| 80.00 \| 67.54 \| 0.5000 \| 0.9189 \|",
        lines["0.005"],
    )
    assert "report: diverged (at chance)" in lines["0.05"] and "ours: diverged" in lines["0.05"]
    assert "| 9.86 |" in lines["0.05"]
    assert "report: named in the text, no numbers" in lines["0.001"]
    assert "not in the report" in lines["0.02"]
    assert "not swept here" in lines["0.01"] and "| 62.96 |" in lines["0.01"]
    assert "| 54.95 |" in lines["0.0001"]
    assert "std" in lr_section and "| 1.41 |" in lr_section  # two seeds, 75% and 77%
    batch_section = report[report.index("## batch_size") :]
    assert "Beside the report's Table 2" in batch_section
    assert "| 192 | 76.00 | 60.96 | 1.41 | +15.04 |" in batch_section
    for value in ("32", "64", "128"):
        assert f"| {value} |  |" in batch_section  # the report's rows we did not sweep: theirs only


def test_axes_the_report_lacks_get_no_comparison() -> None:
    dropout = pd.DataFrame({"model.dropout": [0.1], "status": ["ok"]})
    assert lab_report.comparison_table("model.dropout", dropout) is None
    assert lab_report.headline(dropout, {"model.dropout": 0.2}) is None
    other_lr = pd.DataFrame({"lr": [0.01], "status": ["ok"], "test_accuracy": [0.5]})
    assert lab_report.headline(other_lr, {"lr": 0.01}).endswith("This sweep has no finished trial of that config.")


def test_a_figure_of_the_same_results_is_copied_not_drawn_again(tmp_path: Path) -> None:
    """A sweep whose trials were all cached shows what the last one showed: its figures come from the cache."""
    ok = {"train_loss": 0.5, "test_loss": 0.6, "train_accuracy": 0.8, "test_accuracy": 0.75, "status": "ok"}
    results = _results([{"lr": lr, "batch_size": 192, "seed": 0, **ok} for lr in (0.001, 0.005)])
    drawn: list[str] = []

    def summary(results: SweepResults, axis: str) -> Figure:
        drawn.append(axis)
        return summary_figure(results, axis)

    cache = tmp_path / "cache"
    first, again = tmp_path / "first" / "lr_summary.png", tmp_path / "again" / "lr_summary.png"
    for path in (first, again):
        path.parent.mkdir()
    save_figure(summary, results, "lr", first, cache)
    results.table["seconds"], results.table["cached"] = 9.0, True  # a cached sweep: only these differ
    save_figure(summary, results, "lr", again, cache)
    assert drawn == ["lr"] and again.read_bytes() == first.read_bytes()
    save_figure(summary, results, "lr", tmp_path / "first" / "batch_size_summary.png", cache)
    results.table.loc[0, "test_accuracy"] = 0.5
    save_figure(summary, results, "lr", tmp_path / "again" / "lr_summary.png", cache)
    assert drawn == ["lr", "lr", "lr"], "another figure, and other results, are drawn"
    assert again.read_bytes() != first.read_bytes() and len(list(cache.iterdir())) == 3


# what `mobitune study` records of a run of today's training code: its folder is current
CURRENT_PROVENANCE = {"git_commit": None, "source_fingerprint": "", "training_fingerprint": "today"}


def test_the_lab_document_pools_seeds_and_sweeps_and_replaces_only_its_own_section(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(study_run, "code_fingerprint", lambda module: CURRENT_PROVENANCE["training_fingerprint"])
    (tmp_path / "recipes").mkdir()
    recipe = "lr: 0.001\naugment.flip: true\nseed: 0  # the protocol's\naugment.test_flip: true  # no config\n"
    (tmp_path / "recipes" / "mine.yaml").write_text(recipe)
    tuned = ["lr=0.001", "augment.flip=true"]
    subset = ["data.train_limit=5000", "data.test_limit=1000"]
    full_data = write_sweep_folder(
        tmp_path / "full",
        [([], 0, 0.74, "ok"), ([], 1, 0.76, "ok"), (tuned, 0, 0.86, "ok"), (tuned, 1, 0.88, "ok")],
        CURRENT_PROVENANCE,
    )
    more_seeds = write_sweep_folder(
        tmp_path / "more",
        [
            (tuned, 2, 0.87, "ok"),
            (tuned, 3, 0.10, "diverged"),
            ([*tuned, "batch_size=64"], 0, 0.80, "ok"),
            ([*tuned, "augment.test_flip=true"], 4, (0.85, 0.87), "ok"),  # both views: single 85, flips 87
            ([*tuned, "augment.test_flip=true"], 5, 0.89, "ok"),  # flips only, recorded before both views were
            (["lr=0.004"], 1, 0.755, "ok"),
        ],
        CURRENT_PROVENANCE,
    )
    study = write_sweep_folder(
        tmp_path / "study",
        [
            (subset, 0, 0.55, "ok"),
            (subset, 1, 0.59, "ok"),
            ([*subset, "lr=0.001"], 0, 0.65, "ok"),
            ([*subset, "lr=0.001", "batch_size=64"], 0, 0.99, "ok"),  # two changes: in no table
        ],
        CURRENT_PROVENANCE,
    )
    document = tmp_path / "fidelity.md"
    document.write_text("# Fidelity\n\nWritten by hand.\n")
    for _ in range(2):  # the second run replaces the section it wrote
        cli.main(["report", str(full_data), str(more_seeds), str(study), "--into", str(document)])
    text = document.read_text()
    assert text.startswith("# Fidelity\n\nWritten by hand.\n") and text.count(lab_document.BEGIN) == 1
    # single view on both sides; the gap to the protocol on the seeds both ran (0 and 1), beside the noise
    assert (
        "Here, 32 px, the stand-in weights: best config **86.50 ± 1.29%** (`mine`), -1.40 points against the "
        "report; the report's protocol 75.00 ± 1.41%, `mine` against it +12.00 ± 0.00 (2 seeds) (noise: the "
        "larger seed std, 1.41)." in text
    )
    assert "the config scores 88.00 ± 1.41% (the table's flips column)." in text  # one value: the table's
    rows = {line.split(" | ")[3]: line for line in text.splitlines() if line.startswith("| 50k/10k")}
    # the trial recorded before both views counts in the flips' column only; test_flip names no config
    assert rows["`mine`"].endswith(
        "| 86.50 ± 1.29 | 86.0, 88.0, 87.0, 85.0 | +12.00 ± 0.00 (2 seeds) | 1.41 | 88.00 ± 1.41 | 0.1350 | 4 "
        "| 1 of 6 |"
    )
    assert rows["`mine` + batch_size=64"].endswith(
        "| 80.00 (1 seed) | 80.0 | +6.00 (1 seed) | 1.41 |  | 0.2000 | 1 |  |"
    )
    assert rows["lr=0.004"].endswith(
        "| 75.50 (1 seed) | 75.5 | -0.50 (1 seed), inside the noise | 1.41 |  | 0.2450 | 1 |  |"
    )
    table_1 = text[text.index("### Table 1: lr (5k/1k images, 32 px, 5+5 epochs; current)") :]
    lines = {line.split(" | ")[0].strip("| "): line for line in table_1.splitlines() if line.startswith("| 0.")}
    assert lines["0.005"].startswith("| 0.005 | 57.00 | 66.41 | 2.83 | -9.41 |") and "| 2 |" in lines["0.005"]
    assert lines["0.001"].startswith("| 0.001 | 65.00 |  |  |")  # one seed; not 82% with batch 64's trial
    assert "Table 2" not in text  # batch 64 changed lr too: no table of its own
