"""Reading ``params.yaml`` and recipes, with overrides applied: the one place that reads params from disk."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml

from mobitune.params.messages import ParamsError
from mobitune.params.models import PARAMS_FILE, Params, params_from_dict
from mobitune.params.overrides import apply_overrides, to_override


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
    path: str | Path = PARAMS_FILE, overrides: Iterable[str] = (), recipe: str | Path | None = None
) -> Params:
    """Read params, apply ``recipe`` then ``overrides``, validate; raise :class:`ParamsError` naming the bad key."""
    path = Path(path)
    raw = _read_yaml(path, "not found; run from the project root")
    first = recipe_overrides(recipe) if recipe is not None else []
    return parse_params(raw, [*first, *overrides], str(path))


def parse_params(text_or_raw: str | Any, overrides: Iterable[str] = (), origin: str = "params") -> Params:
    """Params from YAML text (or its parsed data), with ``overrides`` applied."""
    raw = text_or_raw
    if isinstance(text_or_raw, str):
        try:
            raw = yaml.safe_load(text_or_raw)
        except yaml.YAMLError as exc:
            raise ParamsError(f"{origin}: not valid YAML ({exc})") from None
    if raw is None:
        raw = {}
    if not isinstance(raw, Mapping):
        raise ParamsError(f"{origin}: expected a mapping of keys to values at the top level")
    return params_from_dict(apply_overrides(raw, overrides))
