"""The reference pages, written from the code each time the site is built (mkdocs-gen-files runs this file, see
mkdocs.yml), so that none of them can drift from what mobitune does:

- ``reference/params.md``: every params key with its type, bounds, default and description (the pydantic models);
- ``reference/cli.md``: every command and option (the argparse parser);
- ``reference/statuses.md``: the trial statuses (the ``Status`` enum and the comment on each member);
- ``reference/files.md``: the files a run and a sweep write (the constants, and the code that writes them, run on
  a temporary folder);
- ``explanation/benchmarks.md``: ``benchmarks/RESULTS.md`` as it is.

Each params key's anchor is its dotted key (``params.md#finetune.epochs``); each command's is its name
(``cli.md#sweep``).
"""

from __future__ import annotations

import argparse
import ast
import inspect
import json
import re
import tempfile
import tomllib
from collections.abc import Callable, Mapping
from enum import Enum
from pathlib import Path, PurePath
from types import NoneType, UnionType
from typing import Annotated, Any, Literal, Union, get_args, get_origin

import mkdocs_gen_files
import yaml
from pydantic import BaseModel
from pydantic.fields import FieldInfo

from mobitune import provenance as provenance_module
from mobitune.cli import build_parser
from mobitune.params import Params, SearchRange, params_fields, sweepable_keys
from mobitune.params.models import model_in
from mobitune.pipeline import paths
from mobitune.report import results
from mobitune.storage import records
from mobitune.sweep import publish, trial_files
from mobitune.sweep.run import SweepRun

ROOT = Path(__file__).resolve().parents[1]
GENERATED = "Generated from the code when the site is built"


def rst_to_md(text: str) -> str:
    """A docstring's reStructuredText roles and double backticks as Markdown code."""
    text = re.sub(r":(?:func|class|data|mod|meth|attr):`~?([^`]+)`", r"`\1`", text)
    return text.replace("``", "`")


def docstring(obj: Any) -> str:
    """``obj``'s own docstring (not one inherited), cleaned, as Markdown; empty when it has none."""
    own = obj.__dict__.get("__doc__") if isinstance(obj, type) else obj.__doc__
    return rst_to_md(inspect.cleandoc(own)) if own else ""


def cell(text: str) -> str:
    """``text`` fit for one cell of a Markdown table."""
    return " ".join(text.split()).replace("|", "\\|")


def yaml_value(value: Any) -> str:
    """A value as ``params.yaml`` or ``--set`` writes it (YAML flow style)."""
    if isinstance(value, BaseModel):
        value = value.model_dump()
    return yaml.safe_dump(value, default_flow_style=True, width=10_000).removesuffix("...\n").strip()


def type_text(annotation: Any) -> str:
    """A param's type in words: ``int``, ``one of `a`, `b```, ``list of int``, ``float or null``."""
    if get_origin(annotation) is Annotated:
        return type_text(get_args(annotation)[0])
    if get_origin(annotation) is Literal:
        return "one of " + ", ".join(f"`{choice}`" for choice in get_args(annotation))
    if get_origin(annotation) in (Union, UnionType):
        parts = [type_text(arg) for arg in get_args(annotation) if arg is not NoneType]
        nullable = NoneType in get_args(annotation)
        return " or ".join(parts) + (" or null" if nullable else "")
    if get_origin(annotation) is list:
        return f"list of {type_text(get_args(annotation)[0])}"
    return getattr(annotation, "__name__", str(annotation))


def constraints(field: FieldInfo) -> list[Any]:
    """The field's constraints, and those of a type written inside its annotation (``Annotated[str, ...] | None``)."""
    found = list(field.metadata)
    for arg in get_args(field.annotation):
        if get_origin(arg) is Annotated:
            for item in get_args(arg)[1:]:
                found += item.metadata if isinstance(item, FieldInfo) else [item]
    return found


def bounds_text(field: FieldInfo) -> str:
    """The field's bounds as declared: ``> 0``, ``≥ 1``, ``0 to 17``, ``non-empty``; empty when it has none."""
    names = ("gt", "ge", "lt", "le", "min_length")
    found = {name: value for c in constraints(field) for name in names if (value := getattr(c, name, None)) is not None}
    if "ge" in found and "le" in found:
        return f"{found['ge']} to {found['le']}"
    words = {"gt": "> {}", "ge": "≥ {}", "lt": "< {}", "le": "≤ {}", "min_length": "non-empty"}
    return ", ".join(words[name].format(value) for name, value in found.items())


def default_of(dotted: str) -> Any:
    """The key's default: its value in ``Params()`` (a section's default factory included)."""
    value: Any = Params()
    for part in dotted.split("."):
        value = getattr(value, part)
    return value


def field_entry(dotted: str, field: FieldInfo, level: int) -> list[str]:
    """One key: a heading whose id is the dotted key, its type, bounds and default, its description."""
    lines = [f"{'#' * level} `{dotted}` {{#{dotted}}}", ""]
    section = model_in(field.annotation)
    if section is not None and section is not SearchRange:
        about = f" ({rst_to_md(field.description)})" if field.description else ""
        lines += [f"A section{about}: the keys below.", ""]
        if docstring(section):
            lines += [docstring(section), ""]
        return lines
    facts = [f"**{type_text(field.annotation)}**", bounds_text(field), f"default `{yaml_value(default_of(dotted))}`"]
    said = ", ".join(filter(None, facts))
    return [*lines, f"{said}: {rst_to_md(field.description)}" if field.description else said, ""]


def axes_entry(level: int) -> list[str]:
    """The sweep's axes: every other key of ``sweep:``, one per sweepable param."""
    range_fields = ", ".join(
        f"`{name}` ({type_text(f.annotation)}" + ("" if f.is_required() else f", default {yaml_value(f.default)}") + ")"
        for name, f in SearchRange.model_fields.items()
    )
    swept = ", ".join(f"[`{key}`](#{key})" for key in sweepable_keys())
    return [
        f"{'#' * level} `sweep.<key>`: the axes {{#sweep.axes}}",
        "",
        "Every key of `sweep:` but those above is an axis: the param of that dotted key, and the values to try.",
        "",
        f"Default: `{yaml_value(default_of('sweep.axes'))}`.",
        "",
        f"A range has the keys {range_fields}. {docstring(SearchRange)}",
        "",
        f"The keys a sweep may vary, each with its param's type and bounds: {swept}.",
        "",
    ]


def params_page() -> str:
    """Every params key, in the order of the models, nested as ``params.yaml`` nests them."""
    lines = [
        "# Params",
        "",
        f"Every key of `params.yaml`. {GENERATED}: the pydantic models of `src/mobitune/params/models.py`.",
        "`mobitune params > params.yaml` writes the file with every key at its default. A key is written dotted in",
        "overrides, the same for `dvc exp run -S` and `mobitune sweep --set`: `finetune.epochs=3`. Each key's",
        "anchor is its dotted key: `params.md#finetune.epochs`.",
        "",
    ]
    for dotted, field in params_fields().items():
        if dotted.startswith("sweep.axes"):
            if dotted == "sweep.axes":
                lines += axes_entry(3)
            continue
        lines += field_entry(dotted, field, min(dotted.count(".") + 2, 4))
    return "\n".join(lines)


def option_name(action: argparse.Action) -> str:
    """An option as it is typed, its value named (``--set KEY=VALUE``, ``--parallel PARALLEL``; a choice of values
    is listed beside it, see ``option_help``), or a positional's name."""
    if not action.option_strings:
        return action.metavar or action.dest
    if action.nargs == 0 or (action.choices and not action.metavar):
        return ", ".join(action.option_strings)
    return ", ".join(action.option_strings) + f" {action.metavar or action.dest.upper()}"


def option_help(action: argparse.Action) -> str:
    """The option's help, after its choices where it has some."""
    choices = f"one of {', '.join(f'`{choice}`' for choice in action.choices)}" if action.choices else ""
    return cell(": ".join(filter(None, (choices, action.help or ""))))


def subcommands(parser: argparse.ArgumentParser) -> dict[str, tuple[str, argparse.ArgumentParser]]:
    """Each command's name, help line and parser, in the order they were added."""
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    helps = {choice.dest: choice.help or "" for choice in action._choices_actions}
    return {name: (helps.get(name, ""), sub) for name, sub in action.choices.items()}


def cli_page() -> str:
    """Every command: its help, its usage, and a table of its arguments and options."""
    parser = build_parser()
    synopsis = inspect.getmodule(build_parser).__doc__.split("\n\n", 1)[1].strip()
    lines = [
        "# Command line",
        "",
        f"`mobitune` and its commands. {GENERATED}: the argparse parser of `src/mobitune/cli.py`. Each command's",
        "anchor is its name: `cli.md#sweep`.",
        "",
        "```text",
        synopsis,
        "```",
        "",
    ]
    for name, (help_line, sub) in subcommands(parser).items():
        formatter = sub.formatter_class(prog=sub.prog, width=110)  # not the terminal's width: the page's
        formatter.add_usage(sub.usage, sub._actions, sub._mutually_exclusive_groups)
        usage = formatter.format_help().strip()
        lines += [f"## `mobitune {name}` {{#{name}}}", "", help_line[:1].upper() + help_line[1:] + ".", ""]
        lines += ["```text", usage, "```", ""]
        actions = [a for a in sub._actions if not isinstance(a, argparse._HelpAction)]
        if not actions:
            continue
        lines += ["| argument | default | what it does |", "| --- | --- | --- |"]
        for action in actions:
            unset = action.default is None or action.default == [] or action.default is argparse.SUPPRESS
            shown = "" if unset or action.nargs == 0 else f"`{action.default}`"
            lines.append(f"| `{cell(option_name(action))}` | {shown} | {option_help(action)} |")
        lines.append("")
    return "\n".join(lines)


def member_comments(enum: type[Enum]) -> dict[str, str]:
    """The comment written after each member of ``enum`` in its source: what the member means."""
    source = inspect.getsource(enum)
    return dict(re.findall(r"^\s+([A-Z_]+) = [^#\n]+#\s*(.+)$", source, flags=re.MULTILINE))


def statuses_page() -> str:
    comments = member_comments(records.Status)
    lines = [
        "# Trial statuses",
        "",
        f"{docstring(records.Status)} {GENERATED}: the `Status` enum of `src/mobitune/storage/records.py`.",
        "",
        "| status | meaning |",
        "| --- | --- |",
    ]
    lines += [f"| `{status.value}` | {cell(comments.get(status.name, ''))} |" for status in records.Status]
    return "\n".join([*lines, ""])


# what each column of results.csv holds, said once per group of the code's constants (a new column without a line
# here fails the build: see column_groups)
COLUMN_GROUPS: dict[str, tuple[list[str], str]] = {
    "seed": (["seed"], "the trial's seed"),
    "metrics": (results.METRIC_COLUMNS, "the last epoch's loss or accuracy; the test set scored once per image"),
    "flips": (results.FLIP_COLUMNS, "with `augment.test_flip`: the mean logits of each test image and its mirror"),
    "epochs": (["warmup_epochs", "finetune_epochs"], "the epochs the trial trained in each phase"),
    "seconds": (["seconds"], "the trial's wall time"),
    "status": (["status"], "the trial's [status](statuses.md)"),
    "error": (["error"], "why it diverged, stopped or failed"),
    "cost": (
        results.COST_COLUMNS,
        "what it cost: its finetune epochs' seconds on the device, images per second; on a GPU, memory and utilisation",
    ),
    "cached": (["cached"], "true: answered from the artifact store, not trained (the result of an identical run)"),
    "provenance": (results.PROVENANCE_COLUMNS, "what computed it: from its [provenance block](#provenance)"),
}


def column_groups() -> list[tuple[list[str], str]]:
    """``RESULTS_COLUMNS`` in groups, each with what it holds, in the file's order; an error names any column no
    group describes."""
    described = [column for columns, _ in COLUMN_GROUPS.values() for column in columns]
    missing = [column for column in results.RESULTS_COLUMNS if column not in described]
    if missing:
        raise ValueError(f"results.csv columns with no meaning in docs/gen_reference.py COLUMN_GROUPS: {missing}")
    return sorted(COLUMN_GROUPS.values(), key=lambda group: results.RESULTS_COLUMNS.index(group[0][0]))


def example_json(value: Any, limit: int = 70) -> str:
    """``value`` as one line of JSON, cut at ``limit`` characters."""
    text = json.dumps(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def example_sweep_record() -> dict[str, Any]:
    """The ``sweep.json`` that ``SweepRun.start`` writes for the default params, in a temporary folder."""
    with tempfile.TemporaryDirectory() as folder:
        run = SweepRun.start(Params(), Path(folder), None, [], "local")
        run.release()
        return json.loads((run.sweep_dir / results.SWEEP_RECORD).read_text())


def example_manifest() -> dict[str, Any]:
    """The manifest ``mobitune report`` and publishing write, of a folder holding one small file."""
    with tempfile.TemporaryDirectory() as folder:
        sweep_dir = Path(folder) / "20261207-120000-a1b2c3"
        sweep_dir.mkdir()
        (sweep_dir / "results.csv").write_text("trial_id\n")
        return publish.build_manifest(sweep_dir)


# the function that writes each stage's metrics, read from its source (the stages import torch; the build does not)
STAGE_WRITERS = {
    "`WARMUP_METRICS`, `FINETUNE_METRICS`, their details": ("pipeline/stages/phase_outputs.py", "write_phase_outputs"),
    "`EVALUATE_METRICS`": ("training/evaluate.py", "Evaluation.metrics"),
    "`EXPORT_METRICS`": ("pipeline/stages/export.py", "export_metrics"),
}


def source_docstring(module: str, name: str) -> str:
    """The docstring of function or method ``name`` (``Class.method``) in ``src/mobitune/<module>``, as Markdown,
    read with ``ast`` rather than by importing it."""
    node: Any = ast.parse((ROOT / "src" / "mobitune" / module).read_text())
    for part in name.split("."):
        node = next(child for child in node.body if getattr(child, "name", None) == part)
    return rst_to_md(ast.get_docstring(node) or "")


def paths_table() -> list[str]:
    """The DVC pipeline's files: every path of ``mobitune.pipeline.paths``, under its constant's name."""
    rows = [(name, value) for name, value in vars(paths).items() if isinstance(value, PurePath) and name.isupper()]
    return ["| constant | path |", "| --- | --- |", *[f"| `{name}` | `{value}` |" for name, value in rows]]


def files_page() -> str:
    record = example_sweep_record()
    provenance = provenance_module.provenance(device="cpu", threads=2, seed=0)
    lines = [
        "# Files a run and a sweep write",
        "",
        f"{GENERATED}: the constants that name each file's columns and keys, and the code that writes",
        "`sweep.json`, `manifest.json` and the provenance block, run on a temporary folder. Every JSON file is",
        "strict JSON (a non-finite number is `null`) with every secret redacted.",
        "",
        "## The DVC pipeline {#pipeline}",
        "",
        docstring(paths),
        "",
        *paths_table(),
        "",
        "What each stage's metrics hold, as the function that writes them says:",
        "",
        "| files | what they hold |",
        "| --- | --- |",
        *[f"| {files} | {cell(source_docstring(*where))} |" for files, where in STAGE_WRITERS.items()],
        "",
        f"A phase's last epoch is its {code_list(list(records.FINAL_METRICS))} (and",
        f"{code_list(list(records.FLIP_METRICS))} with test-time flips); its history CSV has the columns of",
        "[`history.csv`](#history.csv); its details file its cost and [provenance block](#provenance).",
        "",
        "## A sweep's folder {#sweep}",
        "",
        "`artifacts/sweeps/<sweep_id>/`, or `<storage.uri>/sweeps/<sweep_id>/` once published.",
        "",
        "### `results.csv` {#results.csv}",
        "",
        "One row per trial: `trial_id`, one column per swept key, then the columns below. A column no trial",
        "recorded (the flipped view without test-time flips, a CPU's GPU figures) is left out.",
        "",
        "| columns | what they hold |",
        "| --- | --- |",
        *[f"| {', '.join(f'`{c}`' for c in columns)} | {meaning} |" for columns, meaning in column_groups()],
        "",
        "### `trials/<trial_id>/` {#trials}",
        "",
        f"Each trial's files: {', '.join(f'`{name}`' for name in trial_files.TRIAL_FILES)}. `params.json` holds",
        "`trial_id`, `varied` (its swept values) and `params` (every key); `metrics.json` its row of",
        "`results.csv` as JSON, the provenance columns inside its [provenance block](#provenance). It is written",
        "last: its presence marks the trial complete.",
        "",
        "#### `history.csv` {#history.csv}",
        "",
        "One row per epoch of both phases: " + ", ".join(f"`{column}`" for column in records.HISTORY_COLUMNS) + ".",
        "",
        f"### `{results.SWEEP_RECORD}` {{#sweep.json}}",
        "",
        "The sweep's spec, params and trials, written when it starts and again when it ends; `--resume` and",
        "`mobitune report` read it. Its keys, with the values of a sweep of the default params:",
        "",
        "| key | example |",
        "| --- | --- |",
        *[f"| `{key}` | `{cell(example_json(value))}` |" for key, value in record.items()],
        "",
        f"### `{publish.MANIFEST}` {{#manifest.json}}",
        "",
        rst_to_md(publish.build_manifest.__doc__ or ""),
        "Publishing uploads it last; fetching a published sweep refuses a path that leaves its folder and a file",
        "whose SHA-256 differs. For a folder holding one file:",
        "",
        "```json",
        json.dumps(example_manifest(), indent=2),
        "```",
        "",
        f"`{results.SEARCH_RECORD}` (a searched or early-stopped sweep's rungs, decisions and epochs), `report.md`",
        "and `figures/` sit beside them.",
        "",
        "## The provenance block {#provenance}",
        "",
        docstring(provenance_module.provenance),
        "Every result file has one under `provenance`: a stage's details, a trial's `metrics.json`, a benchmark's",
        "JSON. As this machine writes it:",
        "",
        "```json",
        json.dumps(provenance, indent=2),
        "```",
        "",
    ]
    return "\n".join(lines)


def code_list(names: list[str]) -> str:
    return ", ".join(f"`{name}`" for name in names)


def contracts_section() -> str:
    """The import-linter contracts of ``pyproject.toml``: each layers contract top layer first, each forbidden one
    as what may not import what."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
    lines = [""]
    for contract in config["contracts"]:
        lines += [f"**{contract['name']}** ({contract['type']}):", ""]
        if contract["type"] == "layers":
            containers = code_list(contract["containers"])
            lines += [f"inside {containers}, top first: a layer may import those below it, never one above:", ""]
            for n, layer in enumerate(contract["layers"], 1):
                siblings = [module.strip() for module in layer.split("|")]
                lines.append(f"{n}. {code_list(siblings)}" + (" (none imports another)" if len(siblings) > 1 else ""))
        else:
            lines.append(
                f"{code_list(contract['source_modules'])} may not import {code_list(contract['forbidden_modules'])}"
                + (f"; except {code_list(contract['ignore_imports'])}" if "ignore_imports" in contract else "")
                + (" (indirectly through another module, they may)" if contract.get("allow_indirect_imports") else "")
                + "."
            )
        lines.append("")
    return "\n".join(lines)


def benchmarks_page() -> str:
    """``benchmarks/RESULTS.md``, as committed beside the benchmark that measured it."""
    return (ROOT / "benchmarks" / "RESULTS.md").read_text()


PAGES: Mapping[str, Callable[[], str]] = {
    "reference/params.md": params_page,
    "reference/cli.md": cli_page,
    "reference/statuses.md": statuses_page,
    "reference/files.md": files_page,
    "explanation/benchmarks.md": benchmarks_page,
}


def main() -> None:
    for path, page in PAGES.items():
        with mkdocs_gen_files.open(path, "w") as out:
            out.write(page())
    with mkdocs_gen_files.open("explanation/architecture.md", "a") as out:  # its prose is committed, this appended
        out.write(contracts_section())


if __name__ == "<run_path>":  # run by mkdocs-gen-files (runpy.run_path) only: alone, it would write into docs/
    main()
