"""The study manifest (``docs/fidelity/study.yaml``): every sweep the lab documents cite, how it is run, and the
folder it writes; and which of them are missing or stale today.

``mobitune study docs/fidelity/study.yaml --run cpu`` runs the CPU entries that are missing or not current
(:mod:`mobitune.report.staleness`), keeping the current folders as they are, and regenerates the documents from
the folders; within a sweep, the trial cache makes a trial already computed by today's code free. Entries
marked ``run: gpu`` are run by ``bash benchmarks/gpu_check.sh study-gpu`` when a device is lent.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import pandas as pd
import yaml
from pydantic import BaseModel, ConfigDict, Field, model_validator

from mobitune.errors import MobituneError
from mobitune.report.lab_document import BEGIN, END, folders_table, lab_document, link, write_into
from mobitune.report.results import best_trial, load_results, read_sweep_record
from mobitune.report.staleness import FolderState
from mobitune.report.sweep_report import markdown_table

STUDY_FILE = Path("docs/fidelity/study.yaml")
FIDELITY_PAGE, SEARCH_PAGE = Path("docs/fidelity.md"), Path("docs/search.md")


class Entry(BaseModel):
    """One sweep of the study: recipe, overrides, seeds and data size, the folder(s) it writes."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    folder: Path  # where its sweep folder is committed (``<folder>-s<seed>`` with ``folder_per_seed``)
    documents: list[Literal["fidelity", "search"]] = Field(min_length=1)  # the pages that cite it
    # gpu: too slow for a CPU session (benchmarks/gpu_check.sh study-gpu runs it); none: a historical folder kept
    # for what it shows until an entry that runs replaces it, never run again
    run: Literal["cpu", "gpu", "none"]
    recipe: str | None = None  # recipes/<name>.yaml, applied before the overrides
    seeds: list[int] = Field(min_length=1)
    train_limit: int | None = None  # first N training images; None: all 50k
    test_limit: int | None = None
    overrides: list[str] = []  # after the study's common ones
    folder_per_seed: bool = False  # one sweep, and one folder, per seed
    why: str  # what the document uses it for

    def sweeps(self, common: list[str], last: Sequence[str] = ()) -> list[tuple[Path, list[str]]]:
        """Each sweep this entry is: its folder and the overrides it runs with (the recipe aside): ``common``,
        the data size, the entry's own, the seeds, then ``last`` (``mobitune study --set``)."""
        limits = [f"data.train_limit={_null(self.train_limit)}", f"data.test_limit={_null(self.test_limit)}"]
        shared = [*common, *limits, *self.overrides]
        if not self.folder_per_seed:
            return [(self.folder, [*shared, f"sweep.seeds={self.seeds}", *last])]
        return [(Path(f"{self.folder}-s{seed}"), [*shared, f"sweep.seeds=[{seed}]", *last]) for seed in self.seeds]

    def folders(self) -> list[Path]:
        return [folder for folder, _ in self.sweeps([])]


class Record(BaseModel):
    """A cited folder that is no sweep (a GPU script's JSON, search summaries): always historical, since it
    carries no provenance; ``commit`` is the one it was committed at."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    path: Path
    documents: list[Literal["fidelity", "search"]] = Field(min_length=1)
    commit: str
    why: str


class Study(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    common: list[str]  # every entry's first overrides: the data and weights, the input size
    entries: list[Entry]
    records: list[Record] = []

    @model_validator(mode="after")
    def _unique(self) -> Study:
        names = [entry.name for entry in self.entries]
        folders = [folder for entry in self.entries for folder in entry.folders()]
        if len(set(names)) < len(names) or len(set(folders)) < len(folders):
            raise ValueError("every entry needs a name and folder(s) of its own")
        return self

    def entry(self, name: str) -> Entry:
        for entry in self.entries:
            if entry.name == name:
                return entry
        raise MobituneError(f"the study has no entry {name!r}; it has: {', '.join(e.name for e in self.entries)}")

    def folders(self, document: str) -> list[Path]:
        """The sweep folders ``document`` cites, in the manifest's order."""
        return [folder for entry in self.entries if document in entry.documents for folder in entry.folders()]


def _null(limit: int | None) -> str:
    return "null" if limit is None else str(limit)


def load_study(path: Path = STUDY_FILE) -> Study:
    """The manifest, validated (unknown keys and wrong types fail naming the key)."""
    if not path.exists():
        raise MobituneError(f"{path}: no study manifest there (the project's is {STUDY_FILE})")
    try:
        return Study.model_validate(yaml.safe_load(path.read_text()))
    except ValueError as exc:
        raise MobituneError(f"{path}: {exc}") from exc


def to_run(study: Study, states: dict[Path, FolderState], where: str, only: list[str] | None = None) -> list[Entry]:
    """The entries ``where`` (cpu or gpu) runs: those with a folder that is missing or not current; ``only``
    narrows them to these names."""
    chosen = [study.entry(name) for name in only] if only else study.entries
    return [
        entry
        for entry in chosen
        if entry.run == where and any(not states[folder].current for folder in entry.folders())
    ]


def plan_lines(study: Study, states: dict[Path, FolderState]) -> list[str]:
    """One line per folder: its entry, where it runs, and its state (``mobitune study`` prints them)."""
    lines = []
    for entry in study.entries:
        for folder in entry.folders():
            state = states[folder]
            why = f": {state.why}" if state.why else ""
            lines.append(f"{folder} [{entry.name}, {entry.run}] {state.label}{why}")
    return lines


def record_states(study: Study, document: str) -> dict[Path, FolderState]:
    """The cited folders that are no sweep: historical at the commit they were committed at."""
    return {
        record.path: FolderState(record.path, False, record.commit, f"no provenance: {record.why}")
        for record in study.records
        if document in record.documents
    }


def search_section(folders: list[Path], states: dict[Path, FolderState], document_dir: Path) -> str:
    """The search page's generated section: each study folder's trials, epochs and best test accuracy, labelled
    with its state, and the folders."""
    rows = []
    for folder in folders:
        results = load_results(folder, read_sweep_record(folder))
        best = best_trial(results)
        rows.append(
            {
                "study": link(folder, document_dir),
                "mode": results.mode,
                "trials": len(results.table),
                "finetune epochs": int(results.table["finetune_epochs"].sum()),
                "best test acc %": "" if best is None else f"{best['test_accuracy'] * 100:.2f}",
                "figures are": states[folder].label,
            }
        )
    lines = [BEGIN, "", "## The study folders", "", markdown_table(pd.DataFrame(rows)), ""]
    lines += [folders_table(states, document_dir), "", END]
    return "\n".join(lines) + "\n"


def regenerate(study: Study, states: dict[Path, FolderState], recipes: dict[str, dict[str, Any]]) -> list[Path]:
    """``docs/fidelity.md`` and ``docs/search.md``'s generated sections, from the study's folders that exist."""
    written = []
    for document, page in (("fidelity", FIDELITY_PAGE), ("search", SEARCH_PAGE)):
        cited = {folder: states[folder] for folder in study.folders(document)} | record_states(study, document)
        folders = [folder for folder in study.folders(document) if (folder / "sweep.json").exists()]
        if document == "fidelity":
            section = lab_document(folders, cited, recipes, page.parent)
        else:
            section = search_section(folders, cited, page.parent)
        write_into(page, section)
        written.append(page)
    return written
