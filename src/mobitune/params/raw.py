"""Params as plain data, before validation: dotted keys, ``key=value`` overrides as ``dvc exp run -S`` takes them,
and pydantic's validation errors said as one line a user acts on (the dotted key, the bad value, what is allowed,
"did you mean ..." for an unknown key). Below the models, which validate with it."""

from __future__ import annotations

import copy
import difflib
import json
import math
from collections.abc import Iterable, Mapping
from typing import Any

import yaml
from pydantic.fields import FieldInfo

from mobitune.errors import MobituneError

SWEEP_SECTIONS = ("early_stop",)  # the nested sections of sweep: (SweepParams); every other dotted key is an axis


class ParamsError(MobituneError, ValueError):
    """A parameter is missing, unknown, of the wrong type or out of range."""


EXPECTED = {"int": "an integer", "float": "a number", "bool": "true or false", "string": "a non-empty string"}
TEMPLATES = {  # pydantic's error types: what is wrong with {value} (custom errors carry their own message)
    "finite_number": "expected a finite number, got {value}",
    **dict.fromkeys(
        ("model_type", "model_attributes_type", "dict_type"), "expected a mapping of keys to values, got {value}"
    ),
    "literal_error": "{value} is not allowed; use one of: {allowed}",
    "list_type": "expected a list, got {value}",
    **dict.fromkeys(("greater_than", "greater_than_equal", "less_than_equal"), "must be {bounds}, got {value}"),
    **{
        f"{kind}_{how}": f"expected {text}, got {{value}}"
        for kind, text in EXPECTED.items()
        for how in ("type", "parsing", "from_float", "too_short")
    },
}


def unknown_key(key: str, valid: Iterable[str], name: str | None = None) -> ParamsError:
    """``name`` (default: the last part of ``key``) is what is compared with ``valid``."""
    valid = sorted(valid)
    close = difflib.get_close_matches(name or key.rsplit(".", 1)[-1], valid, n=1)
    hint = f" Did you mean '{close[0]}'?" if close else ""
    return ParamsError(f"unknown key '{key}'.{hint} Valid keys here: {', '.join(valid)}")


def _bounds(field: FieldInfo | None, ctx: Mapping[str, Any]) -> tuple[str, Any]:
    """The field's bounds in words, as declared ("between 0 and 17", "at least 1", "greater than 0.0"), and one."""
    found = {
        n: getattr(c, n)
        for c in (field.metadata if field else [])
        for n in ("gt", "ge", "le")
        if getattr(c, n, None) is not None
    }
    found = found or dict(ctx)
    if "gt" in found:
        return f"greater than {found['gt']}", found["gt"]
    if "ge" in found and "le" in found:
        return f"between {found['ge']} and {found['le']}", found["ge"]
    return (f"at least {found['ge']}", found["ge"]) if "ge" in found else (f"at most {found['le']}", found["le"])


def _children(fields: Mapping[str, FieldInfo], parent: str) -> set[str]:
    prefix = f"{parent}." if parent else ""
    return {key[len(prefix) :] for key in fields if key.startswith(prefix) and "." not in key[len(prefix) :]}


def explain(error: Mapping[str, Any], fields: Mapping[str, FieldInfo], axes: Mapping[str, FieldInfo]) -> ParamsError:
    """One pydantic error of validating the params as a :class:`ParamsError` that names the dotted key; ``fields``:
    every dotted key's field, ``axes``: the sweepable ones (the models' index, handed down)."""
    kind, loc, value = error["type"], list(error["loc"]), error.get("input")
    if isinstance(value, float) and not math.isfinite(value):
        kind = "finite_number"  # pydantic checks the bounds first
    axis = loc[1] if loc[:1] == ["sweep"] and len(loc) > 1 and loc[1] in axes else None
    if axis is not None and len(loc) > 2 and loc[2] in ("list", "range"):
        del loc[2]  # the union's tag
    key = ""
    for i, part in enumerate(loc):
        last_extra = kind == "extra_forbidden" and i == len(loc) - 1
        key += f"[{part}]" if isinstance(part, int) and not last_extra else f"{'.' if key else ''}{part}"
    if kind == "extra_forbidden":
        parent = ".".join(str(part) for part in loc[:-1])
        if parent == "sweep":  # an axis of no param
            return unknown_key(key, _children(fields, "sweep") - {"axes"} | set(axes), str(loc[-1]))
        return unknown_key(key, _children(fields, parent))
    field = axes[axis] if axis else fields.get(".".join(p for p in loc if isinstance(p, str)))
    if kind not in TEMPLATES:
        return ParamsError(f"{key or 'params'}: {error['msg']}")
    bounds, bound = _bounds(field, error.get("ctx") or {}) if "than" in kind else ("", None)
    if isinstance(bound, float) and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)  # shown as the bound's type: -1 for a float param reads -1.0
    allowed = str((error.get("ctx") or {}).get("expected", "")).replace("'", "").replace(" or ", ", ")
    return ParamsError(
        f"{key or 'params'}: {TEMPLATES[kind].format(value=repr(value), bounds=bounds, allowed=allowed)}"
    )


def get_dotted(raw: Mapping[str, Any], dotted: str) -> Any:
    """``raw["a"]["b"]`` for ``a.b``; KeyError when a part is missing."""
    node: Any = raw
    for part in dotted.split("."):
        node = node[part]
    return node


def set_dotted(raw: dict[str, Any], dotted: str, value: Any) -> None:
    """``raw["a"]["b"] = value`` for ``a.b``, making (or replacing) the mappings on the way; a sweep axis is a
    dotted key of ``sweep:`` itself (``sweep.model.dropout``)."""
    parts = dotted.split(".")
    if parts[0] == "sweep" and len(parts) > 2 and parts[1] not in SWEEP_SECTIONS:
        parts = ["sweep", ".".join(parts[1:])]
    for part in parts[:-1]:
        child = raw.get(part)
        raw[part] = child = child if isinstance(child, dict) else {}
        raw = child
    raw[parts[-1]] = value


def parse_override(assignment: str) -> tuple[str, Any]:
    """Split ``key=value`` (value parsed as YAML, like ``dvc exp run -S``)."""
    key, sep, text = assignment.partition("=")
    key = key.strip().lstrip("+")
    if not sep or not key or any(not part for part in key.split(".")):
        raise ParamsError(
            f"override {assignment!r} is malformed; write key=value, e.g. lr=0.005 or sweep.lr=[0.01,0.001]"
        )
    try:
        return key, yaml.safe_load(text) if text.strip() else None
    except yaml.YAMLError as exc:
        raise ParamsError(f"override {assignment!r}: the value is not valid YAML ({exc})") from None


def to_override(key: str, value: Any) -> str:
    """The ``key=value`` text that :func:`parse_override` reads back as ``value``."""
    return f"{key}={json.dumps(value)}"


def apply_overrides(raw: Mapping[str, Any], assignments: Iterable[str]) -> dict[str, Any]:
    """Apply ``key=value`` overrides to a raw params mapping (not yet validated)."""
    result = copy.deepcopy(dict(raw))
    for assignment in assignments:
        set_dotted(result, *parse_override(assignment))
    return result
