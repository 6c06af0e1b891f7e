"""Whether a committed result folder is what today's code would compute: *current*, or *historical* with its commit.

A folder is current when the training closure that computed each of its trials (the import closure of the module
that trains, the trial cache's code fingerprint: :func:`mobitune.provenance.code_fingerprint`) equals today's.
``mobitune study`` records it in every trial it keeps; for a folder without it, every trial's metrics must carry a
provenance block whose source fingerprint is its commit's (the run had no local changes), and that commit's
training closure must be today's. Anything else is historical: written by older code, or by code nobody can
check out again. A commit's fingerprints are computed from ``git archive`` of it, by its own
``mobitune.provenance``.
"""

from __future__ import annotations

import functools
import io
import json
import os
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from mobitune.provenance import PACKAGE_DIR

FingerprintAt = Callable[[str], "tuple[str, str] | None"]  # commit -> (training closure, source), None: unknown
ROOT = PACKAGE_DIR.parents[1]  # the checkout whose git history names the commits
_FINGERPRINTS = (
    "import sys; from mobitune.provenance import code_fingerprint, source_fingerprint; "
    "print(code_fingerprint(sys.argv[1]), source_fingerprint())"
)


@dataclass(frozen=True)
class FolderState:
    """What a folder's figures are: current, or historical (with the commit that made them and why)."""

    folder: Path
    current: bool
    commit: str | None  # the short commit of its runs (the old ``git_rev`` for a folder without provenance)
    why: str = ""  # empty when current
    missing: bool = False  # no trial has run into it

    @property
    def label(self) -> str:
        """``current``, ``not run yet``, or ``historical (commit 96824f3)`` as the documents print it."""
        if self.current:
            return "current"
        if self.missing:
            return "not run yet"
        return f"historical (commit {self.commit})" if self.commit else "historical (commit unknown)"


def _trial_metrics(folder: Path) -> list[dict]:
    return [json.loads(path.read_text()) for path in sorted(folder.glob("trials/*/metrics.json"))]


def folder_state(folder: Path, today: str, fingerprint_at: FingerprintAt) -> FolderState:
    """``folder``'s state against ``today`` (the training closure's fingerprint of the code here).

    ``fingerprint_at(commit)`` gives a commit's (training closure, source) fingerprints, or None where the
    commit is not in this repository; :func:`git_fingerprints` reads them from git.
    """
    metrics = _trial_metrics(folder)
    if not metrics:
        return FolderState(folder, False, None, "no trial metrics in it", missing=True)
    unrecorded = [m for m in metrics if not m.get("provenance")]
    if unrecorded:
        revs = sorted({str(m.get("git_rev") or "") for m in unrecorded} - {""})
        commit = revs[0].removesuffix("-dirty")[:7] if revs else None
        dirty = " with local changes" if any(rev.endswith("-dirty") for rev in revs) else ""
        return FolderState(folder, False, commit, f"no provenance block{dirty}")
    runs = sorted({(m["provenance"]["git_commit"] or "", m["provenance"]["source_fingerprint"]) for m in metrics})
    commits = sorted({commit[:7] for commit, _ in runs})
    shown = commits[-1] if len(commits) == 1 else ", ".join(commits)
    recorded = {m["provenance"].get("training_fingerprint") for m in metrics}
    if None not in recorded:  # kept by `mobitune study`, which recorded the training closure that ran
        drifted = recorded != {today}
        return FolderState(folder, not drifted, shown, "the training code changed since" if drifted else "")
    for commit, source in runs:
        known = fingerprint_at(commit) if commit else None
        if known is None:
            return FolderState(folder, False, shown or None, f"commit {commit[:7] or '?'} is not in this repository")
        training, committed_source = known
        if committed_source != source:
            return FolderState(folder, False, shown, f"run with local changes to {commit[:7]}")
        if training != today:
            return FolderState(folder, False, shown, "the training code changed since")
    return FolderState(folder, True, shown)


@functools.cache
def git_fingerprints(training_module: str, commit: str) -> tuple[str, str] | None:
    """``commit``'s training closure of ``training_module`` and its source fingerprint, computed by that
    commit's own code from ``git archive``; None where git does not know the commit."""
    archive = subprocess.run(
        ["git", "archive", "--format=tar", commit, "src/mobitune"], cwd=ROOT, capture_output=True, timeout=60
    )
    if archive.returncode:
        return None
    with tempfile.TemporaryDirectory() as scratch:
        with tarfile.open(fileobj=io.BytesIO(archive.stdout)) as tar:
            tar.extractall(scratch, filter="data")
        environment = {**os.environ, "PYTHONPATH": str(Path(scratch) / "src")}
        answer = subprocess.run(
            [sys.executable, "-c", _FINGERPRINTS, training_module],
            cwd=scratch,
            env=environment,
            capture_output=True,
            text=True,
            timeout=120,
        )
    if answer.returncode:
        return None
    training, source = answer.stdout.split()
    return training, source


def folder_states(folders: list[Path], training_module: str, today: str) -> dict[Path, FolderState]:
    """Every folder's state, each commit's fingerprints read from git once."""
    at = functools.partial(git_fingerprints, training_module)
    return {folder: folder_state(folder, today, at) for folder in folders}
