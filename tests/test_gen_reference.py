"""The documentation's reference pages come from the code (docs/gen_reference.py, run by mkdocs-gen-files at each
build): a change to a model, an option or a status changes its page, and nothing in the code goes unlisted."""

from __future__ import annotations

import argparse
import importlib.util
from types import ModuleType

import pytest
from helpers import ROOT

from mobitune.cli import build_parser
from mobitune.params import params_fields
from mobitune.report.results import RESULTS_COLUMNS
from mobitune.storage.records import Status


@pytest.fixture(scope="module")
def gen() -> ModuleType:
    """docs/gen_reference.py as a module (imported, so its pages are not written)."""
    spec = importlib.util.spec_from_file_location("gen_reference", ROOT / "docs" / "gen_reference.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_a_params_description_changed_in_the_models_changes_its_page(
    gen: ModuleType, monkeypatch: pytest.MonkeyPatch
) -> None:
    field = params_fields()["finetune.batchnorm"]
    monkeypatch.setattr(field, "description", "a description written for this test")
    page = gen.params_page()
    entry = page.split("{#finetune.batchnorm}", 1)[1].split("\n#", 1)[0]
    assert "default `train`: a description written for this test" in entry
    assert "one of `train`, `frozen`" in entry


def test_every_params_key_has_its_own_anchor_with_type_bounds_and_default(gen: ModuleType) -> None:
    page = gen.params_page()
    for key in params_fields():
        if not key.startswith("sweep.axes."):  # a range's keys, described under the axes
            assert f"{{#{key}}}" in page, key
    assert "**int**, 0 to 17, default `10`: inverted-residual blocks" in page  # trainable_layers
    assert "**float or null**, > 0, default `null`" in page  # sweep.time_budget_s, a bound inside Optional


def test_every_command_and_option_is_on_the_cli_page(gen: ModuleType) -> None:
    page = gen.cli_page()
    for name, (_, parser) in gen.subcommands(build_parser()).items():
        assert f"## `mobitune {name}` {{#{name}}}" in page
        for action in parser._actions:
            if not isinstance(action, argparse._HelpAction):
                assert f"`{gen.option_name(action)}`" in page, (name, action.dest)


def test_every_status_has_its_meaning(gen: ModuleType) -> None:
    comments = gen.member_comments(Status)
    assert set(comments) == {status.name for status in Status}
    page = gen.statuses_page()
    assert all(f"| `{status.value}` | {comments[status.name]} |" in page for status in Status)


def test_every_results_column_is_described_and_a_new_one_fails_the_build(
    gen: ModuleType, monkeypatch: pytest.MonkeyPatch
) -> None:
    page = gen.files_page()
    assert all(f"`{column}`" in page for column in RESULTS_COLUMNS)
    monkeypatch.setattr(gen.results, "RESULTS_COLUMNS", [*RESULTS_COLUMNS, "new_column"])
    with pytest.raises(ValueError, match="new_column"):
        gen.column_groups()


def test_each_stage_metrics_writer_is_found_and_says_what_it_writes(gen: ModuleType) -> None:
    for files, where in gen.STAGE_WRITERS.items():
        assert gen.source_docstring(*where), files
