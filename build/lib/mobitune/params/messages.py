"""Pydantic's validation errors as one line a user acts on: the dotted key, the bad value, what is allowed, and
"did you mean ..." for an unknown key."""

from __future__ import annotations

import difflib
import math
from collections.abc import Iterable, Mapping
from typing import Any, get_args

from pydantic import BaseModel, ValidationError
from pydantic.fields import FieldInfo

from mobitune.errors import MobituneError


class ParamsError(MobituneError, ValueError):
    """A parameter is missing, unknown, of the wrong type or out of range."""


def unknown_key(key: str, valid: Iterable[str], name: str | None = None) -> ParamsError:
    """``name`` (default: the last part of ``key``) is what is compared with ``valid``."""
    valid = sorted(valid)
    close = difflib.get_close_matches(name or key.rsplit(".", 1)[-1], valid, n=1)
    hint = f" Did you mean '{close[0]}'?" if close else ""
    return ParamsError(f"unknown key '{key}'.{hint} Valid keys here: {', '.join(valid)}")


def _field_at(model: type[BaseModel], loc: tuple[Any, ...]) -> tuple[type[BaseModel], FieldInfo | None]:
    """The model that holds the last part of ``loc`` and that part's field (None past the models)."""
    field = None
    for part in loc:
        if field is not None:
            nested = model_in(field.annotation)
            if nested is None:
                break
            model = nested
        field = model.model_fields.get(part) if isinstance(part, str) else None
        if field is None:
            break
    return model, field


def model_in(annotation: Any) -> type[BaseModel] | None:
    """The pydantic model inside ``annotation`` (``X``, ``X | None``), if there is one."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    return next(filter(None, (model_in(arg) for arg in get_args(annotation))), None)


def _bounds(field: FieldInfo | None, ctx: Mapping[str, Any]) -> str:
    """The field's bounds in words, as declared: "between 0 and 17", "at least 1", "greater than 0.0"."""
    found = {}
    for constraint in field.metadata if field else []:
        found.update(
            {n: getattr(constraint, n) for n in ("gt", "ge", "le") if getattr(constraint, n, None) is not None}
        )
    found = found or dict(ctx)
    if "gt" in found:
        return f"greater than {found['gt']}"
    if "ge" in found and "le" in found:
        return f"between {found['ge']} and {found['le']}"
    return f"at least {found['ge']}" if "ge" in found else f"at most {found['le']}"


def _shown(value: Any, bound_like: Any) -> str:
    """``value`` as the bound's type shows it: -1 for a float param reads -1.0."""
    if isinstance(bound_like, float) and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    return repr(value)


def explain(error: Mapping[str, Any], model: type[BaseModel]) -> ParamsError:
    """One pydantic error of validating ``model`` as a :class:`ParamsError` that names the dotted key."""
    kind, loc, ctx = error["type"], tuple(error["loc"]), error.get("ctx") or {}
    if kind in ("value_error", "assertion_error") and isinstance(ctx.get("error"), ParamsError):
        return ctx["error"]
    key = ""
    for i, part in enumerate(loc):
        last_extra = kind == "extra_forbidden" and i == len(loc) - 1
        key += f"[{part}]" if isinstance(part, int) and not last_extra else f"{'.' if key else ''}{part}"
    owner, field = _field_at(model, loc)
    if kind == "extra_forbidden":
        return unknown_key(key, owner.model_fields)
    return ParamsError(f"{key or 'params'}: {problem(error, field)}")


def problem(error: Mapping[str, Any], field: FieldInfo | None) -> str:
    """What is wrong with the value in one pydantic ``error``, for the param ``field``."""
    kind, value, ctx, msg = error["type"], error.get("input"), error.get("ctx") or {}, error["msg"]
    if kind == "finite_number" or (isinstance(value, float) and not math.isfinite(value)):
        return f"expected a finite number, got {value!r}"
    if kind in ("model_type", "model_attributes_type", "dict_type"):
        return f"expected a mapping of keys to values, got {value!r}"
    if kind in ("greater_than", "greater_than_equal", "less_than", "less_than_equal"):
        return f"must be {_bounds(field, ctx)}, got {_shown(value, next(iter(ctx.values()), None))}"
    if kind == "literal_error":
        allowed = str(ctx.get("expected", "")).replace("'", "").replace(" or ", ", ")
        return f"{value!r} is not allowed; use one of: {allowed}"
    expected = {"int": "an integer", "float": "a number", "bool": "true or false", "string": "a non-empty string"}
    if kind.split("_")[0] in expected:
        return f"expected {expected[kind.split('_')[0]]}, got {value!r}"
    if kind == "list_type":
        return f"expected a list, got {value!r}"
    if kind == "value_error":
        return str(ctx.get("error", msg))
    return f"{msg}, got {value!r}"


def validated(model: type[BaseModel], raw: Any) -> Any:
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        raise explain(exc.errors()[0], model) from None
