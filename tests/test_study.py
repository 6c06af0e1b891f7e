"""The study manifest, its one command, stale results labelled, and the statistics over seeds (issue 40)."""

from __future__ import annotations

import json
import math
import re
import shutil
import subprocess
from pathlib import Path

import pandas as pd
import pytest
from helpers import tiny_params, write_params, write_sweep_folder

from mobitune import cli
from mobitune.report import lab_document
from mobitune.report.seed_stats import Delta, delta_text, inside_noise, noise_floor, paired_delta, per_seed, spread_text
from mobitune.report.staleness import FolderState, folder_state
from mobitune.report.study import Study, load_study
from mobitune.sweep.study_run import states_now

ROOT = Path(__file__).resolve().parents[1]
TODAY = "today-fingerprint"
COMMIT = "96824f3c8168d003a7dd242990f9ec7a15537fc4"


# --- statistics over seeds ---------------------------------------------------------------------------------------


def test_a_seed_run_twice_counts_once_and_the_spread_is_over_seeds() -> None:
    runs = pd.DataFrame({"seed": [0, 0, 1, 2], "test_accuracy": [0.60, 0.70, 0.66, 0.68]})
    seeds = per_seed(runs)
    assert seeds.round(6).to_dict() == {0: 65.0, 1: 66.0, 2: 68.0}  # seed 0's two runs averaged first
    assert spread_text(seeds) == "66.33 ± 1.53"  # sample std over 3 seeds, not over 4 runs (2.98)
    assert spread_text(seeds.iloc[:1]) == "65.00 (1 seed)" and spread_text(pd.Series(dtype=float)) == ""


def test_a_delta_is_paired_by_seed_with_its_spread_and_inside_the_noise_when_under_the_floor() -> None:
    protocol = pd.Series({0: 60.9, 1: 55.2, 2: 56.6})
    config = pd.Series({0: 65.9, 1: 65.0, 3: 99.0})  # seed 3 has no partner: left out
    delta = paired_delta(config, protocol)
    assert delta.pairs == 2 and math.isclose(delta.mean, 7.40) and math.isclose(delta.std, 3.394, abs_tol=1e-3)
    noise = noise_floor(config.drop(3), protocol)
    assert math.isclose(noise, protocol.std())  # the larger seed std of the two
    assert delta_text(delta, noise) == "+7.40 ± 3.39 (2 seeds)"
    small = Delta(2.45, 4.03, 2)
    assert inside_noise(small, noise) and delta_text(small, noise) == "+2.45 ± 4.03 (2 seeds), inside the noise"
    assert not inside_noise(Delta(noise, 0.0, 3), noise)  # under the floor, not at it
    assert delta_text(Delta(1.0, math.nan, 1), math.nan) == "+1.00 (1 seed), noise unknown"
    assert delta_text(paired_delta(config, pd.Series({5: 1.0})), noise) == "no seed in common"


# --- hand-made sweep folders -------------------------------------------------------------------------------------


def _folder(path: Path, trials: list, training: str | None = TODAY) -> Path:
    """A sweep folder whose trials' provenance records the training closure ``training`` (None: no provenance
    block, as before issue 27)."""
    provenance = {"git_commit": COMMIT, "source_fingerprint": "s", "training_fingerprint": training}
    return write_sweep_folder(path, trials, None if training is None else provenance)


def _never(commit: str) -> tuple[str, str] | None:
    raise AssertionError("a folder that records its training closure needs no git")


def test_a_folder_is_current_only_when_its_training_code_is_todays(tmp_path: Path) -> None:
    now = _folder(tmp_path / "now", [([], 0, 0.5, "ok")])
    assert folder_state(now, TODAY, _never) == FolderState(now, True, "96824f3")
    drifted = folder_state(now, "changed", _never)
    assert not drifted.current and drifted.label == "historical (commit 96824f3)"
    old = folder_state(_folder(tmp_path / "old", [([], 0, 0.5, "ok")], training=None), TODAY, _never)
    assert old.label == "historical (commit a3da2d4)" and old.why == "no provenance block with local changes"
    missing = folder_state(tmp_path / "nothing", TODAY, _never)
    assert missing.missing and missing.label == "not run yet"


def test_a_folder_without_its_training_closure_is_checked_through_its_commit(tmp_path: Path) -> None:
    folder = _folder(tmp_path / "f", [([], 0, 0.5, "ok")], training=TODAY)
    metrics = folder / "trials" / "t000-s0" / "metrics.json"
    recorded = json.loads(metrics.read_text())
    del recorded["provenance"]["training_fingerprint"]
    metrics.write_text(json.dumps(recorded))
    assert folder_state(folder, TODAY, lambda commit: (TODAY, "s")).current
    assert folder_state(folder, TODAY, lambda commit: ("older", "s")).why == "the training code changed since"
    assert folder_state(folder, TODAY, lambda commit: (TODAY, "other")).why == "run with local changes to 96824f3"
    assert folder_state(folder, TODAY, lambda commit: None).why == "commit 96824f3 is not in this repository"


def test_the_tables_keep_current_and_historical_apart_with_one_value_per_quantity(tmp_path: Path) -> None:
    tuned = ["lr=0.001", "augment.test_flip=true"]
    new = _folder(tmp_path / "new", [([], 0, 0.60, "ok"), ([], 1, 0.56, "ok"), (tuned, 0, (0.70, 0.71), "ok")])
    again_trials = [
        (tuned, 0, (0.72, 0.73), "ok"),
        (tuned, 1, (0.69, 0.70), "ok"),
        (tuned, 2, (0.10, 0.10), "diverged"),
    ]
    again = _folder(tmp_path / "again", again_trials)
    old = _folder(tmp_path / "old", [([], 0, 0.50, "ok"), (tuned, 0, (0.80, 0.81), "ok")], training=None)
    states = {folder: folder_state(folder, TODAY, _never) for folder in (new, again, old)}
    trials = lab_document.trial_table([new, again, old], {}, states)
    table = lab_document.config_table(trials).set_index(["era", "config"])
    mine = table.loc[("current", "lr=0.001")]
    # seed 0 ran in two folders: averaged first (71), then over seeds 0 and 1; the diverged seed counted beside
    assert mine[lab_document.ACCURACY] == "70.00 ± 1.41" and mine["per seed"] == "71.0, 69.0"
    assert mine["diverged"] == "1 of 4" and mine["test acc, flips %"] == "71.00 ± 1.41"
    # paired with the current protocol only (seeds 0, 1: +11, +13), never with the historical one's 50%
    assert mine[lab_document.DELTA] == "+12.00 ± 1.41 (2 seeds)"
    old_delta = table.loc[("historical (commit a3da2d4)", "lr=0.001")][lab_document.DELTA]
    assert old_delta == "+30.00 (1 seed), noise unknown"
    section = lab_document.lab_document([new, again, old], states, document_dir=tmp_path)
    current = section[section.index("#### Current") : section.index("#### Historical")]
    assert "80.00" not in current and "| historical (commit a3da2d4) |" in section
    assert "[`" + (tmp_path / "old").as_posix() + "`](old/report.md) | historical (commit a3da2d4) |" in section


def test_frozen_batchnorm_rows_that_diverged_show_it() -> None:
    trials = pd.DataFrame(
        {
            "era": "current",
            "data": "5k/1k",
            "px": 64,
            "epochs": "5+1",
            "config": "finetune.batchnorm=frozen",
            "seed": [0, 1, 2],
            "status": "diverged",
            "test_loss": 2.3,
            "test_accuracy": 0.1,
            "test_accuracy_flips": math.nan,
        }
    )
    row = lab_document.config_table(trials).iloc[0]
    assert row["diverged"] == "3 of 3" and row[lab_document.ACCURACY] == "" and row["seeds"] == 0
    assert row["per seed"] == "10.0, 10.0, 10.0 (diverged)" and row[lab_document.DELTA] == "every run diverged"


def test_a_document_of_folders_whose_every_trial_diverged_says_so(tmp_path: Path) -> None:
    folder = _folder(tmp_path / "collapsed", [([], 0, 0.1, "diverged"), (["lr=0.05"], 0, 0.1, "diverged")])
    section = lab_document.lab_document([folder], {folder: folder_state(folder, TODAY, _never)}, document_dir=tmp_path)
    assert "every run diverged" in section


# --- the manifest and the documents ------------------------------------------------------------------------------


def test_the_projects_manifest_loads_and_names_each_folder_once() -> None:
    study = load_study(ROOT / "docs/fidelity/study.yaml")
    protocol = study.entry("full-data-protocol")
    assert [folder.name for folder in protocol.folders()] == [f"full-data-protocol-s{seed}" for seed in (0, 1, 2)]
    folder, overrides = study.entry("ablation-together").sweeps(study.common, ["device=cpu"])[0]
    assert folder == Path("docs/fidelity/ablation-together") and overrides[-2:] == [
        "sweep.seeds=[0, 1, 2]",
        "device=cpu",
    ]
    assert overrides[: len(study.common)] == study.common and "data.train_limit=5000" in overrides
    with pytest.raises(ValueError, match="extra"):
        Study.model_validate({"common": [], "entries": [], "unknown": 1})


def _generated(page: Path) -> str:
    text = page.read_text()
    return text[text.index(lab_document.BEGIN) : text.index(lab_document.END)]


@pytest.mark.parametrize("page", ["docs/fidelity.md", "docs/search.md"])
def test_every_folder_the_docs_cite_is_labelled_as_it_is_today(page: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A folder the page calls current must be current today (its training closure unchanged), and every folder it
    names must be in its folders table: regenerate with ``mobitune study`` when this fails."""
    monkeypatch.chdir(ROOT)
    study = load_study()
    document = "fidelity" if "fidelity" in page else "search"
    states = states_now(study.folders(document))
    generated = _generated(ROOT / page)
    labels = dict(re.findall(r"^\| \[?`([^`]+)`(?:\]\([^)]+\))? \| ([^|]+?) \|", generated, flags=re.MULTILINE))
    for folder, state in states.items():
        assert labels.get(folder.as_posix()) == state.label, f"{page}: {folder} is {state.label} today"
    text = (ROOT / page).read_text()
    for name in set(re.findall(r"(?<![\w/])(?:docs/)?((?:fidelity|search)/[\w.=-]+(?:/[\w.=-]+)?)", text)):
        path = ROOT / "docs" / name
        if labels.get(f"docs/{name}") == "not run yet":
            continue
        assert path.exists(), f"{page} cites {name}, which is not there (retired?)"
        folder = path if path.is_dir() else path.parent
        if (folder / "sweep.json").exists():
            assert folder.relative_to(ROOT).as_posix() in labels, f"{page} cites {name}, not in its folders table"
        elif path.is_file() and path.suffix == ".json":
            assert path.relative_to(ROOT).as_posix() in labels, f"{page} cites {name}, not in its folders table"


# --- the one command, end to end on tiny data --------------------------------------------------------------------


def test_the_study_runs_what_is_missing_then_nothing(
    tmp_path: Path, cifar_archive: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    write_params(tmp_path, tiny_params(str(cifar_archive)))
    (tmp_path / "docs" / "fidelity").mkdir(parents=True)
    manifest = {
        "common": ["device=cpu"],
        "entries": [
            {
                "name": "tiny",
                "folder": "docs/fidelity/tiny",
                "folder_per_seed": True,
                "documents": ["fidelity"],
                "run": "cpu",
                "seeds": [0, 1],
                "test_limit": 100,
                "overrides": [
                    "sweep.mode=grid",
                    "sweep.lr=[0.001]",
                    "sweep.batch_size=[100]",
                    "sweep.trainable_layers=[9]",
                ],
                "why": "a test",
            }
        ],
    }
    (tmp_path / "docs/fidelity/study.yaml").write_text(json.dumps(manifest))
    cli.main(["study", "--run", "cpu", "--set", "data.train_limit=300"])
    first, second = tmp_path / "docs/fidelity/tiny-s0", tmp_path / "docs/fidelity/tiny-s1"
    kept = sorted(path.relative_to(first).as_posix() for path in first.rglob("*") if path.is_file())
    assert "sweep.json" in kept and "report.md" in kept and not [name for name in kept if name.endswith(".pt")]
    metrics = [json.loads(path.read_text()) for path in sorted(first.glob("trials/*/metrics.json"))]
    assert len(metrics) == 1 and metrics[0]["provenance"]["training_fingerprint"]
    params = json.loads(next(first.glob("trials/*/params.json")).read_text())["params"]
    assert params["data"]["train_limit"] == 300 and params["seed"] == 0  # --set follows the common overrides
    written = (tmp_path / "docs/fidelity.md").read_text()
    assert "docs/fidelity/tiny-s1`](fidelity/tiny-s1/report.md) | current |" in written
    sweeps = len(list((tmp_path / "artifacts" / "sweeps").iterdir()))
    cli.main(["study", "--run", "cpu"])  # current: nothing runs again
    assert len(list((tmp_path / "artifacts" / "sweeps").iterdir())) == sweeps
    shutil.rmtree(second)
    untouched = {path: path.read_bytes() for path in first.rglob("*") if path.is_file()}
    cli.main(["study", "--run", "cpu", "--set", "data.train_limit=300"])
    assert len(list((tmp_path / "artifacts" / "sweeps").iterdir())) == sweeps + 1, "the missing seed alone runs"
    assert {path: path.read_bytes() for path in first.rglob("*") if path.is_file()} == untouched
    assert len(list(second.glob("trials/*/metrics.json"))) == 1


def test_every_benchmark_table_names_the_commit_it_was_measured_at() -> None:
    """benchmarks/RESULTS.md: a section with a table names its commit in its heading (or its parent's), and that
    commit is in this repository's history."""
    text = (ROOT / "benchmarks" / "RESULTS.md").read_text()
    sections = re.split(r"^(#{2,3} .*)$", text, flags=re.MULTILINE)
    parent = ""
    for heading, body in zip(sections[1::2], sections[2::2], strict=True):
        parent = heading if heading.startswith("## ") else parent
        if not re.search(r"^\| ", body, flags=re.MULTILINE):
            continue
        named = re.search(r"commit ([0-9a-f]{7,40})", heading) or re.search(r"commit ([0-9a-f]{7,40})", parent)
        assert named, f"benchmarks/RESULTS.md: {heading!r} has a table and names no commit"
        known = subprocess.run(["git", "cat-file", "-e", f"{named[1]}^{{commit}}"], cwd=ROOT, check=False)
        assert known.returncode == 0, f"{heading!r}: commit {named[1]} is not in this repository"
