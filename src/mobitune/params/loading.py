"""``params.yaml`` and recipes into :class:`Params`, with ``recipe``, form settings and ``key=value`` overrides
applied: the one place that reads params from disk, and the one that writes the project's ``params.yaml`` from the
models' defaults (:func:`defaults_yaml`)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

import yaml
from pydantic import BaseModel
from pydantic.fields import FieldInfo

from mobitune.params.messages import ParamsError
from mobitune.params.models import (
    PARAMS_FILE,
    Params,
    apply_overrides,
    model_in,
    params_from_dict,
    set_dotted,
    to_override,
)

HEADER = """\
# Every hyperparameter of mobitune, at its default: `mobitune params` writes this file from the models of
# mobitune.params (a test checks that they agree). Stages, sweeps and the CLI read it through mobitune.params;
# override with `dvc exp run -S key=value` or `mobitune sweep --set key=value`.
"""
COMMENT_COLUMN = 26


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
