"""User input into :class:`Params`: ``params.yaml`` and recipes read, ``key=value`` overrides applied (as ``dvc exp
run -S`` takes them), and pydantic's validation errors said as one line a user acts on: the dotted key, the bad
value, what is allowed, and "did you mean ..." for an unknown key. The one place that reads params from disk, and
the one that writes the project's ``params.yaml`` from the models' defaults (:func:`defaults_yaml`)."""

from __future__ import annotations

import copy
import difflib
import json
import math
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

import yaml
from pydantic import BaseModel, ValidationError
from pydantic.fields import FieldInfo

from mobitune.errors import MobituneError
from mobitune.params.models import PARAMS_FILE, Params, SweepParams, model_in, params_fields, sweepable_keys

HEADER = """\
# Every hyperparameter of mobitune, at its default: `mobitune params` writes this file from the models of
# mobitune.params (a test checks that they agree). Stages, sweeps and the CLI read it through mobitune.params;
# override with `dvc exp run -S key=value` or `mobitune sweep --set key=value`.
"""
COMMENT_COLUMN = 26


class ParamsError(MobituneError, ValueError):
    """A parameter is missing, unknown, of the wrong type or out of range."""


EXPECTED = {"int": "an integer", "float": "a number", "bool": "true or false", "string": "a non-empty string"}
TEMPLATES = {  # pydantic's error types: what is wrong with {value} (custom errors carry their own message)
    "finite_number": "expected a finite number, got {value}",
    "model_type": "expected a mapping of keys to values, got {value}",
    "model_attributes_type": "expected a mapping of keys to values, got {value}",
    "dict_type": "expected a mapping of keys to values, got {value}",
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


def explain(error: Mapping[str, Any]) -> ParamsError:
    """One pydantic error of validating :class:`Params` as a :class:`ParamsError` that names the dotted key."""
    kind, loc, value = error["type"], list(error["loc"]), error.get("input")
    if isinstance(value, float) and not math.isfinite(value):
        kind = "finite_number"  # pydantic checks the bounds first
    axis = loc[1] if loc[:1] == ["sweep"] and len(loc) > 1 and loc[1] in sweepable_keys() else None
    if axis is not None and len(loc) > 2 and loc[2] in ("list", "range"):
        del loc[2]  # the union's tag
    key = ""
    for i, part in enumerate(loc):
        last_extra = kind == "extra_forbidden" and i == len(loc) - 1
        key += f"[{part}]" if isinstance(part, int) and not last_extra else f"{'.' if key else ''}{part}"
    if kind == "extra_forbidden":
        parent = ".".join(str(part) for part in loc[:-1])
        if parent == "sweep":  # an axis of no param
            return unknown_key(key, set(SweepParams.model_fields) - {"axes"} | set(sweepable_keys()), str(loc[-1]))
        model = model_in(params_fields()[parent].annotation) if parent else Params
        return unknown_key(key, model.model_fields)
    field = sweepable_keys()[axis] if axis else params_fields().get(".".join(p for p in loc if isinstance(p, str)))
    if kind not in TEMPLATES:
        return ParamsError(f"{key or 'params'}: {error['msg']}")
    bounds, bound = _bounds(field, error.get("ctx") or {}) if "than" in kind else ("", None)
    if isinstance(bound, float) and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)  # shown as the bound's type: -1 for a float param reads -1.0
    allowed = str((error.get("ctx") or {}).get("expected", "")).replace("'", "").replace(" or ", ", ")
    return ParamsError(
        f"{key or 'params'}: {TEMPLATES[kind].format(value=repr(value), bounds=bounds, allowed=allowed)}"
    )


def params_from_dict(raw: Any) -> Params:
    """Validate params passed as plain data (e.g. a Prefect flow parameter)."""
    if not isinstance(raw or {}, Mapping):
        raise ParamsError("params: expected a mapping of keys to values at the top level")
    try:
        return Params.model_validate(raw or {})
    except ValidationError as exc:
        raise explain(exc.errors()[0]) from None


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
    if parts[0] == "sweep" and len(parts) > 2 and parts[1] not in _sweep_sections():
        parts = ["sweep", ".".join(parts[1:])]
    for part in parts[:-1]:
        child = raw.get(part)
        raw[part] = child = child if isinstance(child, dict) else {}
        raw = child
    raw[parts[-1]] = value


def _sweep_sections() -> set[str]:
    """The nested sections of ``sweep:`` (``early_stop``): every other dotted key under it is an axis."""
    return {name for name, field in SweepParams.model_fields.items() if model_in(field.annotation) is not None}


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


def _read_yaml(path: Path, missing: str) -> Any:
    """The YAML in ``path``; ``missing`` is what to say if there is no such file."""
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ParamsError(f"{path}: {missing}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ParamsError(f"{path}: cannot be read ({exc})") from None
    except yaml.YAMLError as exc:
        raise ParamsError(f"{path}: not valid YAML ({exc})") from None


def recipe_overrides(path: str | Path) -> list[str]:
    """A recipe file as ``key=value`` overrides: a flat mapping of dotted keys, as ``dvc exp run -S`` takes.

    Each key is checked against the params, so a typo fails naming the recipe.
    """
    path = Path(path)
    raw = _read_yaml(path, "recipe not found (the project's are in recipes/)")
    if not isinstance(raw, Mapping) or not raw:
        raise ParamsError(f"{path}: a recipe is a mapping of dotted param keys to values, e.g. 'finetune.epochs: 5'")
    overrides = []
    for key, value in raw.items():
        if isinstance(value, Mapping):
            raise ParamsError(
                f"{path}: {key}: recipes are flat; write each nested key dotted, e.g. '{key}.<name>: ...'"
            )
        overrides.append(to_override(str(key), value))
    try:
        Params().override(overrides)
    except ParamsError as exc:
        raise ParamsError(f"{path}: {exc}") from None
    return overrides


def load_params(
    path: str | Path = PARAMS_FILE,
    overrides: Iterable[str] = (),
    recipe: str | Path | None = None,
    settings: Mapping[str, Any] | None = None,
) -> Params:
    """Read params, apply ``recipe``, then ``settings`` (typed values of dotted keys: the sweep form's), then
    ``overrides``; validate; raise :class:`ParamsError` naming the bad key."""
    path = Path(path)
    raw = _read_yaml(path, "not found; run from the project root")
    if isinstance(raw, Mapping):
        raw = apply_overrides(raw, recipe_overrides(recipe) if recipe is not None else [])
        for key, value in (settings or {}).items():
            set_dotted(raw, key, value)
    return parse_params(raw, overrides, str(path))


def parse_params(text_or_raw: str | Any, overrides: Iterable[str] = (), origin: str = "params") -> Params:
    """Params from YAML text (or its parsed data), with ``overrides`` applied."""
    raw = text_or_raw
    if isinstance(text_or_raw, str):
        try:
            raw = yaml.safe_load(text_or_raw)
        except yaml.YAMLError as exc:
            raise ParamsError(f"{origin}: not valid YAML ({exc})") from None
    if not isinstance(raw or {}, Mapping):
        raise ParamsError(f"{origin}: expected a mapping of keys to values at the top level")
    return params_from_dict(apply_overrides(raw or {}, overrides))


def defaults_yaml() -> str:
    """``params.yaml`` with every key at the models' default, each commented with its choices and description."""
    lines = HEADER.splitlines()

    def write(raw: Mapping[str, Any], model: type[BaseModel], indent: str) -> None:
        for key, value in raw.items():
            field = model.model_fields.get(key)  # None for a sweep axis
            note = _note(field) if field is not None else ""
            nested = model_in(field.annotation) if field is not None else None
            if nested is not None:
                lines.extend([f"{indent}# {note}"] if note else [])
                lines.append(f"{indent}{key}:")
                write(value, nested, indent + "  ")
            else:
                line = f"{indent}{key}: {yaml.safe_dump([value], default_flow_style=True, width=1000).strip()[1:-1]}"
                lines.append(f"{line.ljust(COMMENT_COLUMN - 1)} # {note}" if note else line)

    write(Params().to_dict(), Params, "")
    return "\n".join(lines) + "\n"


def _note(field: FieldInfo) -> str:
    """A key's comment: its choices (a ``Literal``), then its description."""
    choices = " | ".join(get_args(field.annotation)) if get_origin(field.annotation) is Literal else ""
    return "; ".join(filter(None, (choices, field.description)))
