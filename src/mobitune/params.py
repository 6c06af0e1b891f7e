"""Typed, validated parameters (pydantic): the one place that reads ``params.yaml``.

Every other module receives a :class:`Params` object. Overrides use the
``key=value`` syntax of ``dvc exp run -S`` (dotted keys for nested values,
values parsed as YAML), so ``lr=0.002`` and ``sweep.lr=[0.05,0.005]`` mean
the same thing to DVC, the CLI and the sweep flow. Validation is pydantic's,
strict (no ``1`` for ``true``, no ``1.5`` for an integer); its errors are
translated into one line that names the key, the value and what is allowed.
"""

from __future__ import annotations

import copy
import difflib
import functools
import json
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, get_args, get_origin

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic.fields import FieldInfo

from mobitune.errors import MobituneError, StorageError

PARAMS_FILE = Path("params.yaml")
NUM_BLOCKS = 17  # inverted-residual blocks in MobileNetV2's features[1..17]
# the report's one-at-a-time study (Tables 1-3)
REPORT_SWEEP_AXES = {
    "lr": [0.05, 0.01, 0.005, 0.001, 0.0005, 0.0001],
    "batch_size": [32, 64, 128, 192],
    "trainable_layers": [2, 5, 10],
}
S3_URI = re.compile(r"^s3://(?P<bucket>[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9])(?:/(?P<key>.*))?$")
_YAML12_FLOAT = re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$")


class ParamsError(MobituneError, ValueError):
    """A parameter is missing, unknown, of the wrong type or out of range."""


@dataclass(frozen=True)
class S3Location:
    bucket: str
    key: str

    @property
    def uri(self) -> str:
        return f"s3://{self.bucket}/{self.key}" if self.key else f"s3://{self.bucket}"


def parse_s3_uri(uri: str) -> S3Location:
    match = S3_URI.match(uri)
    if not match:
        raise StorageError(
            f"{uri!r} is not a valid S3 URI; write s3://bucket/key (bucket: 3-63 lowercase "
            "letters, digits, dots or hyphens)"
        )
    return S3Location(match["bucket"], (match["key"] or "").strip("/"))


def _yaml12_float(value: Any) -> Any:
    """PyYAML (YAML 1.1) reads ``1e-3`` as a string; YAML 1.2 and users mean a number."""
    return float(value) if isinstance(value, str) and _YAML12_FLOAT.match(value) else value


def _device(value: str) -> str:
    if value in ("auto", "cpu", "cuda") or (value.startswith("cuda:") and value[5:].isdigit()):
        return value
    raise ValueError(f"{value!r} is not allowed; use one of: auto, cpu, cuda, cuda:N")


def _s3_uri(value: str | None) -> str | None:
    if value is not None:
        try:
            parse_s3_uri(value)
        except StorageError as exc:
            raise ValueError(f"{exc}, or null for a local folder") from None
    return value


Number = Annotated[float, BeforeValidator(_yaml12_float), Field(allow_inf_nan=False)]
Text = Annotated[str, Field(min_length=1)]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class DataParams(_Section):
    source: Text = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
    md5: Text | None = "c58f30108f718f92721af3b95e74349a"
    train_limit: int | None = Field(None, ge=1)
    test_limit: int | None = Field(None, ge=1)


class ModelParams(_Section):
    pretrained: Text = "imagenet"
    hidden_units: int = Field(128, ge=1)
    dropout: Number = Field(0.2, ge=0.0, le=0.99)
    image_size: int = Field(32, ge=32, le=512)
    unfreeze_from: Literal["first", "last"] = "first"


class OptimizationParams(_Section):
    """How one phase optimises; the defaults are the report's plain Adam at a constant rate.

    ``schedule`` shapes the learning rate over the phase's steps: ``constant``,
    ``cosine`` (to zero) or ``onecycle`` (up to the peak at 30%, then down);
    ``warmup_steps`` ramps it linearly from zero first (constant and cosine).
    ``weight_decay`` is decoupled (AdamW; 0 is exactly Adam).
    """

    schedule: Literal["constant", "cosine", "onecycle"] = "constant"
    warmup_steps: int = Field(0, ge=0)
    weight_decay: Number = Field(0.0, ge=0.0, le=1.0)
    label_smoothing: Number = Field(0.0, ge=0.0, le=0.5)


class WarmupParams(OptimizationParams):
    epochs: int = Field(5, ge=0)
    lr: Number = Field(0.001, gt=0.0)
    batch_size: int = Field(192, ge=1)


class FinetuneParams(OptimizationParams):
    """The finetune's learning rate and batch size are the top-level ``lr`` and ``batch_size``.

    ``batchnorm``: ``train`` (PyTorch's default: the unfrozen blocks' BatchNorm
    normalises with batch statistics and updates its running ones) or ``frozen``
    (it keeps the pretrained statistics; its scale and shift still train).
    """

    epochs: int = Field(5, ge=0)
    batchnorm: Literal["train", "frozen"] = "train"


class AugmentParams(_Section):
    flip: bool = False
    crop_padding: int = Field(0, ge=0, le=16)


class SearchRange(_Section):
    """A sweep axis sampled by ``random``/``tpe`` search: ``{low: 0.0001, high: 0.05, log: true}``.

    Integer when both bounds are integers, else float.
    """

    model_config = ConfigDict(strict=False)  # low and high are checked against the param they vary
    low: float | int
    high: float | int
    log: bool = False

    @property
    def integer(self) -> bool:
        return isinstance(self.low, int) and isinstance(self.high, int)


class EarlyStopParams(_Section):
    """Asynchronous successive halving (``asha``): rungs at ``min_epochs`` x ``reduction``^k finetune epochs.

    A trial that reaches a rung continues only if its test accuracy is in the
    top 1/``reduction`` of the trials that have reached that rung.
    """

    method: Literal["none", "asha"] = Field("none", description="asha: stop the weaker trials at rungs")
    min_epochs: int = Field(1, ge=1)
    reduction: int = Field(3, ge=2)


Axis = list[Any] | SearchRange


class SweepParams(_Section):
    """Which trials a sweep runs.

    ``axes`` maps dotted param keys to the values to try; in params.yaml the
    axes are written as plain keys of ``sweep:`` (``lr: [...]``,
    ``model.dropout: [...]``). ``one-at-a-time`` and ``grid`` enumerate lists;
    ``random`` and ``tpe`` sample ``trials`` configurations, an axis being a
    list (choices) or a :class:`SearchRange`. ``worker_timeout_s``: how long
    trials on the workers backend wait while no worker polls their pool.
    """

    mode: Literal["one-at-a-time", "grid", "random", "tpe"] = Field(
        "one-at-a-time",
        description="one-at-a-time and grid enumerate the lists; random and tpe sample `trials` of them",
    )
    seeds: list[int] = Field([0], description="every configuration runs once per seed")
    warmup_epochs: int | None = Field(None, ge=0, description="empty: warmup.epochs")
    finetune_epochs: int | None = Field(None, ge=0, description="empty: finetune.epochs")
    trials: int = Field(10, ge=1, description="random/tpe: configurations to sample")
    search_seed: int = 0
    early_stop: EarlyStopParams = EarlyStopParams()
    budget_epochs: int | None = Field(None, ge=1, description="start no new trial once this many epochs are spent")
    worker_timeout_s: int = Field(300, ge=1)
    axes: dict[str, Any] = {}  # key -> list[Any] | SearchRange, built by _check_axes

    @model_validator(mode="before")
    @classmethod
    def _axes_from_plain_keys(cls, raw: Any) -> Any:
        """Every key of ``sweep:`` that is not one of the sweep's own names an axis."""
        if not isinstance(raw, Mapping):
            return raw
        own = set(cls.model_fields) - {"axes"}
        return {**{k: v for k, v in raw.items() if k in own}, "axes": {k: v for k, v in raw.items() if k not in own}}

    @field_validator("axes", mode="plain")
    @classmethod
    def _check_axes(cls, raw: Any) -> dict[str, Axis]:
        own = set(cls.model_fields) - {"axes"}
        axes: dict[str, Axis] = {}
        for key, values in raw.items():
            where = f"sweep.{key}"
            if key not in sweepable_keys():
                raise _unknown_key(where, own | set(sweepable_keys()), name=str(key))
            if isinstance(values, SearchRange):
                values = values.model_dump()
            if isinstance(values, Mapping):
                axes[key] = _search_range(key, values, where)
            elif isinstance(values, list) and values:
                axes[key] = [_check_value(key, v, f"{where}[{i}]") for i, v in enumerate(values)]
            else:
                raise ParamsError(
                    f"{where}: expected a non-empty list of values, e.g. {key}: [1, 2], "
                    f"or (random/tpe) a range, e.g. {key}: {{low: 0.0001, high: 0.05, log: true}}"
                )
        return axes

    @model_validator(mode="after")
    def _check_across_keys(self) -> SweepParams:
        for axis, values in self.axes.items():
            if isinstance(values, SearchRange) and not self.searched:
                raise ParamsError(
                    f"sweep.{axis}: a range is sampled by sweep.mode random or tpe; "
                    f"{self.mode} needs a list of values, e.g. sweep.{axis}=[...]"
                )
        if self.searched and len(self.seeds) != 1:
            raise ParamsError(
                f"sweep.seeds: {self.mode} search runs each sampled configuration once; "
                "give one seed, e.g. sweep.seeds=[0]"
            )
        return self

    @property
    def searched(self) -> bool:
        """Sampled configurations (random/tpe) rather than an enumerated list."""
        return self.mode in ("random", "tpe")


class StorageParams(_Section):
    uri: Annotated[Text | None, AfterValidator(_s3_uri)] = Field(
        None, description="s3://bucket/prefix to publish to; empty: a local folder"
    )


class Params(_Section):
    seed: int = 0
    device: Annotated[Text, AfterValidator(_device)] = "auto"
    data: DataParams = DataParams()
    model: ModelParams = ModelParams()
    warmup: WarmupParams = WarmupParams()
    finetune: FinetuneParams = FinetuneParams()
    lr: Number = Field(0.005, gt=0.0, description="finetune learning rate")
    batch_size: int = Field(192, ge=1, description="finetune batch size")
    trainable_layers: int = Field(10, ge=0, le=NUM_BLOCKS, description="inverted-residual blocks unfrozen in finetune")
    augment: AugmentParams = AugmentParams()
    sweep: SweepParams = Field(default_factory=lambda: SweepParams.model_validate(REPORT_SWEEP_AXES))
    storage: StorageParams = StorageParams()

    def to_dict(self) -> dict[str, Any]:
        """Plain data as ``params.yaml`` writes it: the sweep's axes as keys of ``sweep:``."""
        raw = self.model_dump()
        axes = raw["sweep"].pop("axes")
        raw["sweep"].update(axes)
        return raw

    def override(self, assignments: Iterable[str]) -> Params:
        """A copy with ``key=value`` overrides applied and validated again."""
        return params_from_dict(apply_overrides(self.to_dict(), assignments))


# ----------------------------------------------------------------- pydantic's errors, as one line a user acts on


def _unknown_key(key: str, valid: Iterable[str], name: str | None = None) -> ParamsError:
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
            nested = _model_in(field.annotation)
            if nested is None:
                break
            model = nested
        field = model.model_fields.get(part) if isinstance(part, str) else None
        if field is None:
            break
    return model, field


def _model_in(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    return next(filter(None, (_model_in(arg) for arg in get_args(annotation))), None)


def _bounds(field: FieldInfo | None, ctx: Mapping[str, Any]) -> str:
    """ "between 0 and 17", "at least 1", "greater than 0.0": from the field's constraints, as declared."""
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


def _explain(error: Mapping[str, Any], model: type[BaseModel]) -> ParamsError:
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
        return _unknown_key(key, owner.model_fields)
    return ParamsError(f"{key or 'params'}: {_problem(kind, error.get('input'), ctx, field, error['msg'])}")


def _problem(kind: str, value: Any, ctx: Mapping[str, Any], field: FieldInfo | None, msg: str) -> str:
    if kind == "finite_number" or (isinstance(value, float) and not math.isfinite(value)):
        return f"expected a finite number, got {value!r}"
    if kind in ("model_type", "model_attributes_type", "dict_type"):
        return f"expected a mapping of keys to values, got {value!r}"
    if kind in ("greater_than", "greater_than_equal", "less_than", "less_than_equal"):
        return f"must be {_bounds(field, ctx)}, got {_shown(value, next(iter(ctx.values()), None))}"
    if kind == "literal_error":
        allowed = ", ".join(str(a) for a in _literal_args(field.annotation)) if field else ctx.get("expected")
        return f"{value!r} is not allowed; use one of: {allowed}"
    expected = {"int": "an integer", "float": "a number", "bool": "true or false", "string": "a non-empty string"}
    if kind.split("_")[0] in expected:
        return f"expected {expected[kind.split('_')[0]]}, got {value!r}"
    if kind == "list_type":
        return f"expected a list, got {value!r}"
    if kind == "value_error":
        return str(ctx.get("error", msg))
    return f"{msg}, got {value!r}"


def _literal_args(annotation: Any) -> list[Any]:
    if get_origin(annotation) is Literal:
        return list(get_args(annotation))
    return [a for arg in get_args(annotation) for a in _literal_args(arg)]


def _validated(model: type[BaseModel], raw: Any) -> Any:
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        raise _explain(exc.errors()[0], model) from None


# ----------------------------------------------------------------------------------------- sweep axes


@functools.cache
def sweepable_keys() -> dict[str, FieldInfo]:
    """Dotted keys of every scalar param a sweep may vary, with its field (type and bounds)."""
    keys: dict[str, FieldInfo] = {}

    def walk(model: type[BaseModel], prefix: str) -> None:
        for name, field in model.model_fields.items():
            nested = _model_in(field.annotation)
            if nested is None:
                keys[f"{prefix}{name}"] = field
            elif nested not in (SweepParams, StorageParams):
                walk(nested, f"{prefix}{name}.")

    walk(Params, "")
    keys.pop("device")
    return keys


def field_type(field: FieldInfo) -> Any:
    """The field's type with its constraints (bounds, validators) attached."""
    return Annotated[field.annotation, *field.metadata] if field.metadata else field.annotation


@functools.cache
def _adapter(dotted: str) -> TypeAdapter:
    return TypeAdapter(field_type(sweepable_keys()[dotted]))


def _check_value(dotted: str, value: Any, where: str) -> Any:
    """One value of an axis, validated as the param ``dotted`` is."""
    try:
        return _adapter(dotted).validate_python(value, strict=True)
    except ValidationError as exc:
        error = exc.errors()[0]
        problem = _problem(
            error["type"], error.get("input"), error.get("ctx") or {}, sweepable_keys()[dotted], error["msg"]
        )
        raise ParamsError(f"{where}: {problem}") from None


def _search_range(dotted: str, raw: Mapping[str, Any], where: str) -> SearchRange:
    """A range axis, checked against the param it varies: numeric, inside its bounds, low < high."""
    example = "e.g. {low: 0.0001, high: 0.05, log: true}"
    if set(raw) - {"low", "high", "log"} or not {"low", "high"} <= set(raw):
        raise ParamsError(f"{where}: a range has keys low, high and optionally log, {example}; got {dict(raw)}")
    if not {int, float} & _scalar_types(sweepable_keys()[dotted].annotation):
        raise ParamsError(
            f"{where}: {dotted} is not a number, so it has no range; list its values, e.g. {dotted}: [...]"
        )
    low, high = (_check_value(dotted, raw[bound], f"{where}.{bound}") for bound in ("low", "high"))
    if not isinstance(raw.get("log", False), bool):
        raise ParamsError(f"{where}.log: expected true or false, got {raw['log']!r}")
    log = raw.get("log", False)
    if not low < high:
        raise ParamsError(f"{where}: low must be below high, got low={low}, high={high}")
    if log and low <= 0:
        raise ParamsError(f"{where}: a log range needs low > 0, got low={low}")
    return SearchRange(low=low, high=high, log=log)


def _scalar_types(annotation: Any) -> set[type]:
    if get_origin(annotation) is Annotated:
        return _scalar_types(get_args(annotation)[0])
    if isinstance(annotation, type):
        return {annotation}
    return {t for arg in get_args(annotation) for t in _scalar_types(arg)}


# ------------------------------------------------------------------------------- reading and overriding


def params_from_dict(raw: Any) -> Params:
    """Validate params passed as plain data (e.g. a Prefect flow parameter)."""
    if raw is None:
        raw = {}
    if not isinstance(raw, Mapping):
        raise ParamsError("params: expected a mapping of keys to values at the top level")
    return _validated(Params, raw)


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
