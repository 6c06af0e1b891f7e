"""Pydantic's errors of validating the params, said as one line a user acts on: the dotted key, the bad value, what
is allowed, "did you mean ..." for an unknown key. Below the models, which hand it their index of dotted keys."""

from __future__ import annotations

import difflib
import math
from collections.abc import Mapping
from typing import Any

from pydantic.fields import FieldInfo
from pydantic_core import PydanticCustomError

from mobitune.errors import MobituneError

EXPECTED = {"int": "an integer", "float": "a number", "bool": "true or false", "string": "a non-empty string"}
TEMPLATES = {  # what is wrong, per pydantic error type (custom errors carry their own message)
    "finite_number": "expected a finite number, got {value}",
    "literal_error": "{value} is not allowed; use one of: {allowed}",
    "list_type": "expected a list, got {value}",
    **dict.fromkeys(
        ("model_type", "model_attributes_type", "dict_type"), "expected a mapping of keys to values, got {value}"
    ),
    **dict.fromkeys(("greater_than", "greater_than_equal", "less_than_equal"), "must be {bounds}, got {value}"),
    **{
        f"{kind}_{how}": f"expected {text}, got {{value}}"
        for kind, text in EXPECTED.items()
        for how in ("type", "parsing", "from_float", "too_short")
    },
}


class ParamsError(MobituneError, ValueError):
    """A parameter is missing, unknown, of the wrong type or out of range."""


def custom_error(kind: str, message: str, **context: Any) -> PydanticCustomError:
    """A validator's own error: ``message`` formatted with ``context``, shown after the dotted key."""
    return PydanticCustomError(kind, message, context)


def _bounds(field: FieldInfo) -> tuple[str, Any]:
    """The field's bounds in words, as declared ("between 0 and 17", "at least 1", "greater than 0.0"), and one."""
    found = {n: getattr(c, n) for c in field.metadata for n in ("gt", "ge", "le") if getattr(c, n, None) is not None}
    if "gt" in found:
        return f"greater than {found['gt']}", found["gt"]
    if "ge" in found and "le" in found:
        return f"between {found['ge']} and {found['le']}", found["ge"]
    return (f"at least {found['ge']}", found["ge"]) if "ge" in found else (f"at most {found['le']}", found["le"])


def explain(error: Mapping[str, Any], fields: Mapping[str, FieldInfo], axes: Mapping[str, FieldInfo]) -> ParamsError:
    """One pydantic error of validating the params as a :class:`ParamsError` that names the dotted key; ``fields``:
    every dotted key's field, ``axes``: the sweepable ones (the models' index, handed down)."""
    kind, loc, value = error["type"], list(error["loc"]), error.get("input")
    axis = axes.get(loc[1]) if loc[:1] == ["sweep"] and len(loc) > 1 else None
    if axis is not None and loc[2:3] in (["list"], ["range"]):
        del loc[2]  # the union's tag
    key = "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in loc).lstrip(".")
    if kind == "extra_forbidden":
        prefix = "".join(f"{part}." for part in loc[:-1])
        valid = {k.removeprefix(prefix) for k in fields if k.startswith(prefix) and "." not in k.removeprefix(prefix)}
        valid = sorted(valid - {"axes"} | (set(axes) if prefix == "sweep." else set()))
        hint = "".join(f" Did you mean '{close}'?" for close in difflib.get_close_matches(str(loc[-1]), valid, n=1))
        return ParamsError(f"unknown key '{key}'.{hint} Valid keys here: {', '.join(valid)}")
    if isinstance(value, float) and not math.isfinite(value):
        kind = "finite_number"  # pydantic checks the bounds first
    if kind not in TEMPLATES:
        return ParamsError(f"{key or 'params'}: {error['msg']}")
    field = axis or fields.get(".".join(p for p in loc if isinstance(p, str)))
    bounds, bound = _bounds(field) if "than" in kind and field else ("", None)
    if isinstance(bound, float) and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)  # shown as the bound's type: -1 for a float param reads -1.0
    allowed = str((error.get("ctx") or {}).get("expected", "")).replace("'", "").replace(" or ", ", ")
    return ParamsError(
        f"{key or 'params'}: {TEMPLATES[kind].format(value=repr(value), bounds=bounds, allowed=allowed)}"
    )
