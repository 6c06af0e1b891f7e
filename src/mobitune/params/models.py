"""The params model tree: every section of ``params.yaml`` as a frozen, strict pydantic model that refuses unknown
keys, with its bounds as field constraints; the sweep's axes checked against the params they vary."""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, get_args

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    field_validator,
    model_serializer,
    model_validator,
)
from pydantic.fields import FieldInfo

from mobitune.errors import StorageError
from mobitune.params.messages import ParamsError, model_in, problem, unknown_key, validated
from mobitune.params.overrides import apply_overrides

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
    """``batchnorm``: the backbone's BatchNorm statistics, ``pretrained`` (the
    report) or ``recalibrated`` on the training images at ``model.image_size``
    before warmup (AdaBN; :mod:`mobitune.training.batchnorm`)."""

    epochs: int = Field(5, ge=0)
    lr: Number = Field(0.001, gt=0.0)
    batch_size: int = Field(192, ge=1)
    batchnorm: Literal["pretrained", "recalibrated"] = "pretrained"


class FinetuneParams(OptimizationParams):
    """The finetune's learning rate and batch size are the top-level ``lr`` and ``batch_size``.

    ``batchnorm``: ``train`` (PyTorch's default: the unfrozen blocks' BatchNorm
    normalises with batch statistics and updates its running ones) or ``frozen``
    (it keeps the pretrained statistics; its scale and shift still train).
    ``last_conv``: whether the 1x1 convolution after the last block (320 -> 1280
    channels, ``features[18]``) trains too; ``trainable_layers`` counts blocks only.
    """

    epochs: int = Field(5, ge=0)
    batchnorm: Literal["train", "frozen"] = "train"
    last_conv: Literal["frozen", "train"] = "frozen"


class AugmentParams(_Section):
    flip: bool = False
    crop_padding: int = Field(0, ge=0, le=16)
    test_flip: bool = False  # evaluate on the mean logits of each test image and its mirror


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
    time_budget_s: Number | None = Field(
        None, gt=0, description="seconds: then nothing new starts, and running trials stop after their epoch"
    )
    worker_timeout_s: int = Field(300, ge=1)
    server_outage_s: int = Field(
        300, ge=0, description="workers: how long the sweep rides out a Prefect server that does not answer"
    )
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
                raise unknown_key(where, own | set(sweepable_keys()), name=str(key))
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

    @model_serializer(mode="wrap")
    def _axes_as_plain_keys(self, dump: Any) -> dict[str, Any]:
        """Dumped as ``params.yaml`` writes it, so the dump validates again: the axes as keys of ``sweep:``."""
        raw = dump(self)
        return {**{k: v for k, v in raw.items() if k != "axes"}, **raw["axes"]}

    @property
    def searched(self) -> bool:
        """Sampled configurations (random/tpe) rather than an enumerated list."""
        return self.mode in ("random", "tpe")


class StorageParams(_Section):
    uri: Annotated[Text | None, AfterValidator(_s3_uri)] = Field(
        None, description="s3://bucket/prefix to publish to; empty: a local folder"
    )
    outage_s: int = Field(300, ge=0, description="how long S3 calls retry an endpoint that does not answer")


EXECUTION_KEYS = ("device", "compile", "deterministic")  # how a run executes, not what it computes: never swept,
# never in cache keys


class Params(_Section):
    seed: int = 0
    device: Annotated[Text, AfterValidator(_device)] = "auto"
    compile: Literal["none", "default", "reduce-overhead"] = Field(
        "none",
        description="torch.compile the train and eval steps: none (eager), default, reduce-overhead (CUDA graphs)",
    )
    deterministic: bool = Field(
        False, description="CUDA: deterministic kernels only, so a GPU run repeats bit for bit (CPU runs always do)"
    )
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
        """Plain data as ``params.yaml`` writes it (the sweep's axes as keys of ``sweep:``)."""
        return self.model_dump()

    def override(self, assignments: Iterable[str]) -> Params:
        """A copy with ``key=value`` overrides applied and validated again."""
        return params_from_dict(apply_overrides(self.to_dict(), assignments))


@functools.cache
def sweepable_keys() -> dict[str, FieldInfo]:
    """Dotted keys of every scalar param a sweep may vary, with its field (type and bounds)."""
    keys: dict[str, FieldInfo] = {}

    def walk(model: type[BaseModel], prefix: str) -> None:
        for name, field in model.model_fields.items():
            nested = model_in(field.annotation)
            if nested is None:
                keys[f"{prefix}{name}"] = field
            elif nested not in (SweepParams, StorageParams):
                walk(nested, f"{prefix}{name}.")

    walk(Params, "")
    for how_it_runs in EXECUTION_KEYS:
        keys.pop(how_it_runs)
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
        raise ParamsError(f"{where}: {problem(exc.errors()[0], sweepable_keys()[dotted])}") from None


def _search_range(dotted: str, raw: Mapping[str, Any], where: str) -> SearchRange:
    """A range axis, checked against the param it varies: numeric, inside its bounds, low < high."""
    example = "e.g. {low: 0.0001, high: 0.05, log: true}"
    if set(raw) - {"low", "high", "log"} or not {"low", "high"} <= set(raw):
        raise ParamsError(f"{where}: a range has keys low, high and optionally log, {example}; got {dict(raw)}")
    annotation = sweepable_keys()[dotted].annotation
    if not {int, float} & {annotation, *get_args(annotation)}:
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


def params_from_dict(raw: Any) -> Params:
    """Validate params passed as plain data (e.g. a Prefect flow parameter)."""
    if raw is None:
        raw = {}
    if not isinstance(raw, Mapping):
        raise ParamsError("params: expected a mapping of keys to values at the top level")
    return validated(Params, raw)
