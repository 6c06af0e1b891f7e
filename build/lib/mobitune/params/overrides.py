"""``key=value`` overrides, as ``dvc exp run -S`` takes them, on plain params data (before validation)."""

from __future__ import annotations

import copy
import json
from collections.abc import Iterable, Mapping
from typing import Any

import yaml

from mobitune.params.messages import ParamsError


def get_dotted(raw: Mapping[str, Any], dotted: str) -> Any:
    """``raw["a"]["b"]`` for ``a.b``; KeyError when a part is missing."""
    node: Any = raw
    for part in dotted.split("."):
        node = node[part]
    return node


def set_dotted(raw: dict[str, Any], dotted: str, value: Any) -> None:
    """``raw["a"]["b"] = value`` for ``a.b``, making (or replacing) the mappings on the way."""
    *parents, leaf = dotted.split(".")
    for part in parents:
        child = raw.get(part)
        raw[part] = child = child if isinstance(child, dict) else {}
        raw = child
    raw[leaf] = value


def parse_override(assignment: str) -> tuple[str, Any]:
    """Split ``key=value`` (value parsed as YAML, like ``dvc exp run -S``)."""
    key, sep, text = assignment.partition("=")
    key = key.strip().lstrip("+")
    if not sep or not key or any(not part for part in key.split(".")):
        raise ParamsError(
            f"override {assignment!r} is malformed; write key=value, e.g. lr=0.005 or sweep.lr=[0.01,0.001]"
        )
    try:
        value = yaml.safe_load(text) if text.strip() else None
    except yaml.YAMLError as exc:
        raise ParamsError(f"override {assignment!r}: the value is not valid YAML ({exc})") from None
    return key, value


def to_override(key: str, value: Any) -> str:
    """The ``key=value`` text that :func:`parse_override` reads back as ``value``."""
    return f"{key}={json.dumps(value)}"


_SWEEP_SECTIONS = {"early_stop"}  # nested keys of sweep: that are not axes


def apply_overrides(raw: Mapping[str, Any], assignments: Iterable[str]) -> dict[str, Any]:
    """Apply ``key=value`` overrides to a raw params mapping (not yet validated)."""
    result = copy.deepcopy(dict(raw))
    for assignment in assignments:
        key, value = parse_override(assignment)
        parts = key.split(".")
        if parts[0] == "sweep" and len(parts) > 2 and parts[1] not in _SWEEP_SECTIONS:
            sweep = result.get("sweep")  # sweep axes are dotted keys themselves: sweep.model.dropout
            result["sweep"] = sweep = sweep if isinstance(sweep, dict) else {}
            sweep[".".join(parts[1:])] = value
        else:
            set_dotted(result, key, value)
    return result
