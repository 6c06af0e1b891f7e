"""Result files as the storage layer writes them: whole or not at all, and with the mode any other file gets."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from mobitune.storage.records import write_csv, write_json
from mobitune.storage.stores import LocalStore, atomic_path


@pytest.mark.parametrize("umask", [0o022, 0o002, 0o077], ids=["022", "002", "077"])
def test_result_files_get_the_umasks_mode_like_any_other_file(tmp_path: Path, umask: int) -> None:
    """A team sharing a results folder reads model.onnx, manifest.json and sweep.json as it reads report.md
    (written plainly): all take the mode the umask gives, never a scratch file's 0600."""
    before = os.umask(umask)
    try:
        (tmp_path / "report.md").write_text("# plain\n")
        write_json(tmp_path / "sweep.json", {"sweep_id": "s1"})
        write_csv(tmp_path / "results.csv", [{"a": 1}], ["a"])
        LocalStore(tmp_path).put_bytes("trials/t1/metrics.json", b"{}")
        with atomic_path(tmp_path / "model.onnx") as scratch:
            scratch.write_bytes(b"onnx")
    finally:
        os.umask(before)
    modes = {p.relative_to(tmp_path).as_posix(): p.stat().st_mode & 0o777 for p in tmp_path.rglob("*") if p.is_file()}
    assert modes == dict.fromkeys(
        ["report.md", "sweep.json", "results.csv", "trials/t1/metrics.json", "model.onnx"], 0o666 & ~umask
    )


def test_a_write_that_fails_leaves_the_file_as_it_was_and_no_scratch(tmp_path: Path) -> None:
    write_json(tmp_path / "metrics.json", {"before": 1})
    with pytest.raises(RuntimeError), atomic_path(tmp_path / "metrics.json") as scratch:
        scratch.write_text('{"half": ')
        raise RuntimeError("interrupted")
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]
    assert (tmp_path / "metrics.json").read_text() == '{\n  "before": 1\n}\n'
