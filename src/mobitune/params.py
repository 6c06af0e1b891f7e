"""Typed, validated parameters: the one place that reads ``params.yaml``.

Every other module receives a :class:`Params` object. Overrides use the
``key=value`` syntax of ``dvc exp run -S`` (dotted keys for nested values,
values parsed as YAML), so ``lr=0.002`` and ``sweep.lr=[0.05,0.005]`` mean
the same thing to DVC, the CLI and the sweep flow.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import json
import re
import types
import typing
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from mobitune.errors import MobituneError
from mobitune.storage import StorageError, parse_s3_uri

PARAMS_FILE = Path("params.yaml")
_YAML12_FLOAT = re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$")
NUM_BLOCKS = 17
# the report's one-at-a-time study (Tables 1-3)
REPORT_SWEEP_AXES = {
    "lr": [0.05, 0.01, 0.005, 0.001, 0.0005, 0.0001],
    "batch_size": [32, 64, 128, 192],
    "trainable_layers": [2, 5, 10],
}  # inverted-residual blocks in MobileNetV2's features[1..17]


class ParamsError(MobituneError, ValueError):
    """A parameter is missing, unknown, of the wrong type or out of range."""


def _range(default: Any, low: float | None = None, high: float | None = None, *, open_low: bool = False) -> Any:
    return field(default=default, metadata={"low": low, "high": high, "open_low": open_low})


@dataclass(frozen=True)
class DataParams:
    source: str = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
    md5: str | None = "c58f30108f718f92721af3b95e74349a"
    train_limit: int | None = _range(None, 1)
    test_limit: int | None = _range(None, 1)


@dataclass(frozen=True)
class ModelParams:
    pretrained: str = "imagenet"
    hidden_units: int = _range(128, 1)
    dropout: float = _range(0.2, 0.0, 0.99)
    image_size: int = _range(32, 32, 512)
    unfreeze_from: Literal["first", "last"] = "first"


@dataclass(frozen=True)
class PhaseOptions:
    """How one phase optimises; the defaults are the report's plain Adam at a constant rate.

    ``schedule`` shapes the learning rate over the phase's steps: ``constant``,
    ``cosine`` (to zero) or ``onecycle`` (up to the peak at 30%, then down);
    ``warmup_steps`` ramps it linearly from zero first (constant and cosine).
    ``weight_decay`` is decoupled (AdamW; 0 is exactly Adam).
    """

    schedule: Literal["constant", "cosine", "onecycle"] = "constant"
    warmup_steps: int = _range(0, 0)
    weight_decay: float = _range(0.0, 0.0, 1.0)
    label_smoothing: float = _range(0.0, 0.0, 0.5)


@dataclass(frozen=True)
class WarmupParams(PhaseOptions):
    epochs: int = _range(5, 0)
    lr: float = _range(0.001, 0.0, open_low=True)
    batch_size: int = _range(192, 1)


@dataclass(frozen=True)
class FinetuneParams(PhaseOptions):
    """The finetune's learning rate and batch size are the top-level ``lr`` and ``batch_size``.

    ``batchnorm``: ``train`` (PyTorch's default: the unfrozen blocks' BatchNorm
    normalises with batch statistics and updates its running ones) or ``frozen``
    (it keeps the pretrained statistics; its scale and shift still train).
    """

    epochs: int = _range(5, 0)
    batchnorm: Literal["train", "frozen"] = "train"


@dataclass(frozen=True)
class AugmentParams:
    flip: bool = False
    crop_padding: int = _range(0, 0, 16)


@dataclass(frozen=True)
class SearchRange:
    """A sweep axis sampled by ``random``/``tpe`` search: ``{low: 0.0001, high: 0.05, log: true}``.

    Integer when both bounds are integers, else float.
    """

    low: float
    high: float
    log: bool = False

    @property
    def integer(self) -> bool:
        return isinstance(self.low, int) and isinstance(self.high, int)


@dataclass(frozen=True)
class EarlyStopParams:
    """Asynchronous successive halving (``asha``): rungs at ``min_epochs`` x ``reduction``^k finetune epochs.

    A trial that reaches a rung continues only if its test accuracy is in the
    top 1/``reduction`` of the trials that have reached that rung.
    """

    method: Literal["none", "asha"] = "none"
    min_epochs: int = _range(1, 1)
    reduction: int = _range(3, 2)


@dataclass(frozen=True)
class SweepParams:
    """Which trials a sweep runs.

    ``axes`` maps dotted param keys to the values to try; in params.yaml the
    axes are written as plain keys of ``sweep:`` (``lr: [...]``,
    ``model.dropout: [...]``). ``one-at-a-time`` and ``grid`` enumerate lists;
    ``random`` and ``tpe`` sample ``trials`` configurations, an axis being a
    list (choices) or a :class:`SearchRange`. ``worker_timeout_s``: how long
    trials on the workers backend wait while no worker polls their pool.
    """

    mode: Literal["one-at-a-time", "grid", "random", "tpe"] = "one-at-a-time"
    seeds: list[int] = field(default_factory=lambda: [0])
    warmup_epochs: int | None = _range(None, 0)
    finetune_epochs: int | None = _range(None, 0)
    trials: int = _range(10, 1)
    search_seed: int = 0
    early_stop: EarlyStopParams = field(default_factory=EarlyStopParams)
    budget_epochs: int | None = _range(None, 1)
    worker_timeout_s: int = _range(300, 1)
    axes: dict[str, list[Any] | SearchRange] = field(default_factory=lambda: dict(REPORT_SWEEP_AXES))

    @property
    def searched(self) -> bool:
        """Sampled configurations (random/tpe) rather than an enumerated list."""
        return self.mode in ("random", "tpe")


@dataclass(frozen=True)
class StorageParams:
    uri: str | None = None


@dataclass(frozen=True)
class Params:
    seed: int = 0
    device: str = "auto"
    data: DataParams = field(default_factory=DataParams)
    model: ModelParams = field(default_factory=ModelParams)
    warmup: WarmupParams = field(default_factory=WarmupParams)
    finetune: FinetuneParams = field(default_factory=FinetuneParams)
    lr: float = _range(0.005, 0.0, open_low=True)
    batch_size: int = _range(192, 1)
    trainable_layers: int = _range(10, 0, NUM_BLOCKS)
    augment: AugmentParams = field(default_factory=AugmentParams)
    sweep: SweepParams = field(default_factory=SweepParams)
    storage: StorageParams = field(default_factory=StorageParams)

    def to_dict(self) -> dict[str, Any]:
        raw = dataclasses.asdict(self)
        raw["sweep"] = _sweep_to_yaml(raw["sweep"])
        return raw

    def override(self, assignments: Iterable[str]) -> Params:
        """A copy with ``key=value`` overrides applied and validated again."""
        return _from_mapping(apply_overrides(self.to_dict(), assignments))


def _sweep_to_yaml(sweep: dict[str, Any]) -> dict[str, Any]:
    axes = sweep.pop("axes")
    return {**sweep, **axes}


def _describe(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return " | ".join(str(a) for a in typing.get_args(tp))
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(a) for a in typing.get_args(tp))
    if origin is list:
        return f"a list of {_describe(typing.get_args(tp)[0])}"
    if tp is type(None):
        return "null"
    return getattr(tp, "__name__", str(tp))


def _convert(value: Any, tp: Any, key: str) -> Any:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _convert(value, arg, key)
            except ParamsError:
                if len(args) == 2:
                    raise
        raise ParamsError(f"{key}: expected {_describe(tp)}, got {value!r}")
    if origin is Literal:
        allowed = typing.get_args(tp)
        if value not in allowed:
            raise ParamsError(f"{key}: {value!r} is not allowed; use one of: {', '.join(map(str, allowed))}")
        return value
    if origin is list:
        if not isinstance(value, list):
            raise ParamsError(f"{key}: expected {_describe(tp)}, got {value!r}")
        (item,) = typing.get_args(tp)
        return [_convert(v, item, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict:  # sweep axes, already checked key by key in _split_sweep_axes
        return dict(value)
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, key)
    if tp is bool:
        if not isinstance(value, bool):
            raise ParamsError(f"{key}: expected true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ParamsError(f"{key}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, str) and _YAML12_FLOAT.match(value):
            value = float(value)  # PyYAML (YAML 1.1) reads 1e-3 as a string; YAML 1.2 and users mean a number
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ParamsError(f"{key}: expected a number, got {value!r}")
        if value != value or value in (float("inf"), float("-inf")):
            raise ParamsError(f"{key}: expected a finite number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str) or not value:
            raise ParamsError(f"{key}: expected a non-empty string, got {value!r}")
        return value
    if tp is Any:
        return value
    raise TypeError(f"unsupported parameter type {tp!r} for {key}")


def _check_range(value: Any, meta: Mapping[str, Any], key: str) -> None:
    if value is None or not meta:
        return
    low, high = meta.get("low"), meta.get("high")
    if meta.get("open_low") and value <= low:
        raise ParamsError(f"{key}: must be greater than {low}, got {value!r}")
    if low is not None and value < low:
        bound = f"between {low} and {high}" if high is not None else f"at least {low}"
        raise ParamsError(f"{key}: must be {bound}, got {value!r}")
    if high is not None and value > high:
        bound = f"between {low} and {high}" if low is not None else f"at most {high}"
        raise ParamsError(f"{key}: must be {bound}, got {value!r}")


def _unknown_key(key: str, valid: Iterable[str], name: str | None = None) -> ParamsError:
    """``name`` (default: the last part of ``key``) is what is compared with ``valid``."""
    valid = sorted(valid)
    close = difflib.get_close_matches(name or key.rsplit(".", 1)[-1], valid, n=1)
    hint = f" Did you mean '{close[0]}'?" if close else ""
    return ParamsError(f"unknown key '{key}'.{hint} Valid keys here: {', '.join(valid)}")


def _build(cls: type, raw: Any, prefix: str) -> Any:
    where = prefix or "params"
    if raw is None:
        raw = {}
    if not isinstance(raw, Mapping):
        raise ParamsError(f"{where}: expected a mapping of keys to values, got {raw!r}")
    if cls is SweepParams:
        raw = _split_sweep_axes(raw, prefix)
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs: dict[str, Any] = {}
    for name, value in raw.items():
        key = f"{prefix}.{name}" if prefix else str(name)
        if name not in fields:
            raise _unknown_key(key, fields)
        kwargs[name] = _convert(value, hints[name], key)
        _check_range(kwargs[name], fields[name].metadata, key)
    return cls(**kwargs)


def _split_sweep_axes(raw: Mapping[str, Any], prefix: str) -> dict[str, Any]:
    """Move every key of ``sweep:`` that names a param into ``axes``."""
    own = {f.name for f in dataclasses.fields(SweepParams)} - {"axes"}
    out: dict[str, Any] = {k: v for k, v in raw.items() if k in own}
    axes: dict[str, list[Any]] = {}
    for key, values in raw.items():
        if key in own:
            continue
        if key not in sweepable_keys():
            raise _unknown_key(f"{prefix}.{key}", own | set(sweepable_keys()), name=str(key))
        if isinstance(values, Mapping):
            axes[key] = _search_range(str(key), values, f"{prefix}.{key}")
            continue
        if not isinstance(values, list) or not values:
            raise ParamsError(
                f"{prefix}.{key}: expected a non-empty list of values, e.g. {key}: [1, 2], "
                f"or (random/tpe) a range, e.g. {key}: {{low: 0.0001, high: 0.05, log: true}}"
            )
        axes[key] = [_convert_leaf(key, v, f"{prefix}.{key}[{i}]") for i, v in enumerate(values)]
    out["axes"] = axes
    return out


def _search_range(dotted: str, raw: Mapping[str, Any], key: str) -> SearchRange:
    """A range axis, checked against the param it varies: numeric, inside its bounds, low < high."""
    example = "e.g. {low: 0.0001, high: 0.05, log: true}"
    unknown = set(raw) - {"low", "high", "log"}
    if unknown or not {"low", "high"} <= set(raw):
        raise ParamsError(f"{key}: a range has keys low, high and optionally log, {example}; got {dict(raw)}")
    tp, _ = sweepable_keys()[dotted]
    if not {int, float} & ({tp} | set(typing.get_args(tp))):
        raise ParamsError(f"{key}: {dotted} is not a number, so it has no range; list its values, e.g. {dotted}: [...]")
    low, high = (_convert_leaf(dotted, raw[bound], f"{key}.{bound}") for bound in ("low", "high"))
    log = _convert(raw.get("log", False), bool, f"{key}.log")
    if not low < high:
        raise ParamsError(f"{key}: low must be below high, got low={low}, high={high}")
    if log and low <= 0:
        raise ParamsError(f"{key}: a log range needs low > 0, got low={low}")
    return SearchRange(low, high, log)


def _check_sweep(sweep: SweepParams) -> None:
    """Rules across the sweep's keys, checked before anything runs."""
    for axis, values in sweep.axes.items():
        if isinstance(values, SearchRange) and not sweep.searched:
            raise ParamsError(
                f"sweep.{axis}: a range is sampled by sweep.mode random or tpe; "
                f"{sweep.mode} needs a list of values, e.g. sweep.{axis}=[...]"
            )
    if sweep.searched and len(sweep.seeds) != 1:
        raise ParamsError(
            f"sweep.seeds: {sweep.mode} search runs each sampled configuration once; "
            "give one seed, e.g. sweep.seeds=[0]"
        )


@functools.cache
def sweepable_keys() -> dict[str, tuple[Any, Mapping[str, Any]]]:
    """Dotted keys of every scalar param a sweep may vary, with type and range."""
    keys: dict[str, tuple[Any, Mapping[str, Any]]] = {}

    def walk(cls: type, prefix: str) -> None:
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            tp = hints[f.name]
            if dataclasses.is_dataclass(tp):
                if tp not in (SweepParams, StorageParams):
                    walk(tp, f"{prefix}{f.name}.")
            else:
                keys[f"{prefix}{f.name}"] = (tp, f.metadata)

    walk(Params, "")
    keys.pop("device")
    return keys


def _convert_leaf(dotted: str, value: Any, key: str) -> Any:
    tp, meta = sweepable_keys()[dotted]
    converted = _convert(value, tp, key)
    _check_range(converted, meta, key)
    return converted


def _from_mapping(raw: Any) -> Params:
    params = _build(Params, raw, "")
    _check_device(params.device)
    _check_sweep(params.sweep)
    if params.storage.uri is not None:
        try:
            parse_s3_uri(params.storage.uri)
        except StorageError as exc:
            raise ParamsError(f"storage.uri: {exc}, or null for a local folder") from None
    return params


def _check_device(device: str) -> None:
    if device in ("auto", "cpu", "cuda"):
        return
    if device.startswith("cuda:") and device[5:].isdigit():
        return
    raise ParamsError(f"device: {device!r} is not allowed; use one of: auto, cpu, cuda, cuda:N")


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


def params_from_dict(raw: Mapping[str, Any]) -> Params:
    """Validate params passed as plain data (e.g. a Prefect flow parameter)."""
    return _from_mapping(raw)


def apply_overrides(raw: Mapping[str, Any], assignments: Iterable[str]) -> dict[str, Any]:
    """Apply ``key=value`` overrides to a raw params mapping (not yet validated)."""
    result = _deep_copy(raw)
    for assignment in assignments:
        key, value = parse_override(assignment)
        node = result
        parts = key.split(".")
        # sweep axes are dotted keys themselves: sweep.model.dropout -> sweep["model.dropout"]
        if parts[0] == "sweep" and len(parts) > 2 and parts[1] not in _SWEEP_SECTIONS:
            parts = ["sweep", ".".join(parts[1:])]
        for part in parts[:-1]:
            child = node.get(part)
            if not isinstance(child, dict):
                child = {}
                node[part] = child
            node = child
        node[parts[-1]] = value
    return result


_SWEEP_SECTIONS = {"early_stop"}  # nested keys of sweep: that are not axes


def _deep_copy(raw: Any) -> Any:
    if isinstance(raw, Mapping):
        return {k: _deep_copy(v) for k, v in raw.items()}
    if isinstance(raw, list):
        return [_deep_copy(v) for v in raw]
    return raw


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
    return _from_mapping(_params_mapping(raw, [*first, *overrides], str(path)))


def parse_params(text: str, overrides: Iterable[str] = (), origin: str = "params") -> Params:
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ParamsError(f"{origin}: not valid YAML ({exc})") from None
    return _from_mapping(_params_mapping(raw, overrides, origin))


def _params_mapping(raw: Any, overrides: Iterable[str], origin: str) -> dict[str, Any]:
    if raw is None:
        raw = {}
    if not isinstance(raw, Mapping):
        raise ParamsError(f"{origin}: expected a mapping of keys to values at the top level")
    return apply_overrides(raw, overrides)
