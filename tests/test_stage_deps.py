"""The DVC stages depend on exactly the code they run: their import closure, as the trial cache's fingerprint."""

from __future__ import annotations

import grimp
import pytest
import yaml
from helpers import ROOT

from mobitune.provenance import PACKAGE, import_closure, module_file

STAGES = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]


def stage_module(stage: dict) -> str:
    return stage["cmd"].removeprefix("python -m ")


def expected_deps(module: str) -> set[str]:
    """The closure's files, with a package folder in place of its files where the closure holds every one of them
    (``src/mobitune/params``), as ``dvc.yaml`` lists them."""
    files = {path.as_posix() for path in import_closure(module)}
    package_root = ROOT / "src" / PACKAGE
    folders = {(ROOT / file).parent for file in files} - {package_root}
    for folder in sorted(folders, key=lambda f: len(f.parts)):
        members = {p.relative_to(ROOT).as_posix() for p in folder.rglob("*.py")}
        if members <= files:
            files = (files - members) | {folder.relative_to(ROOT).as_posix()}
    return files


@pytest.mark.parametrize("name", list(STAGES))
def test_each_stage_depends_on_exactly_the_code_its_module_imports(name: str) -> None:
    stage = STAGES[name]
    declared = {dep for dep in stage["deps"] if dep.startswith("src/")}
    expected = expected_deps(stage_module(stage))
    missing, extra = sorted(expected - declared), sorted(declared - expected)
    assert not missing and not extra, (
        f"dvc.yaml stage {name!r}: add to its deps {missing} (imported by {stage_module(stage)}), "
        f"remove {extra} (not imported)"
    )


@pytest.mark.parametrize("module", [*(stage_module(s) for s in STAGES.values()), "mobitune.sweep.trial_training"])
def test_the_closure_read_from_the_source_holds_every_import_grimp_finds(module: str) -> None:
    """``import_closure`` parses the source instead of importing it (a cached sweep imports no torch); grimp's
    import graph, which import-linter checks the contracts on, must not find an import it missed."""
    graph = grimp.build_graph(PACKAGE)
    found = {module_file(m) for m in {module, *graph.find_upstream_modules(module)}}
    closure = {ROOT / path for path in import_closure(module)}
    assert found <= closure, sorted(str(p) for p in found - closure)
