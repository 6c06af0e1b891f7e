"""The params model tree: every section of ``params.yaml`` a frozen, strict pydantic model that refuses unknown keys,
its bounds field constraints; the sweep's axes a model derived from it (a list of a param's values, or a range of them),
so each value is checked as its param is; and ``key=value`` overrides, as ``dvc exp run -S`` takes them."""

from __future__ import annotations

import copy
import functools
import json
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Annotated, Any, Literal, get_args

import yaml
from pydantic import AfterValidator as After
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    ValidationError,
    ValidationInfo,
    WrapValidator,
    create_model,
    field_validator,
    model_serializer,
    model_validator,
)
from pydantic.fields import FieldInfo

from mobitune.params.messages import ParamsError, custom_error, explain

PARAMS_FILE = Path("params.yaml")
NUM_BLOCKS = 17  # inverted-residual blocks in MobileNetV2's features[1..17]
REPORT_SWEEP_AXES = {  # the report's one-at-a-time study (Tables 1-3)
    "lr": [0.05, 0.01, 0.005, 0.001, 0.0005, 0.0001],
    "batch_size": [32, 64, 128, 192],
    "trainable_layers": [2, 5, 10],
}
EXECUTION_KEYS = ("device", "compile", "deterministic")  # how a run executes, not what: never swept nor cache keys
S3_URI = re.compile(r"^s3://(?P<bucket>[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9])(?:/(?P<key>.*))?$")
S3_URI_RULE = "is not a valid S3 URI; write s3://bucket/key (bucket: 3-63 lowercase letters, digits, dots or hyphens)"
_YAML12_FLOAT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")
RANGE_EXAMPLE = "{low: 0.0001, high: 0.05, log: true}"
SEARCHED = ("random", "tpe")  # sweep modes that sample configurations rather than enumerate lists


def _yaml12_float(value: Any) -> Any:
    """PyYAML (YAML 1.1) reads ``1e-3`` as a string; YAML 1.2 and users mean a number."""
    return float(value) if isinstance(value, str) and _YAML12_FLOAT.fullmatch(value) else value


def _device(value: str) -> str:
    if value in ("auto", "cpu", "cuda") or (value.startswith("cuda:") and value[5:].isdigit()):
        return value
    raise custom_error("device", "{value} is not allowed; use one of: auto, cpu, cuda, cuda:N", value=repr(value))


def _s3_uri(value: str) -> str:
    if S3_URI.match(value):
        return value
    raise custom_error("s3_uri", "{value} {rule}, or null for a local folder", value=repr(value), rule=S3_URI_RULE)


Number = Annotated[float, BeforeValidator(_yaml12_float), Field(allow_inf_nan=False)]
Text = Annotated[str, Field(min_length=1)]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class DataParams(_Section):
    source: Text = Field("https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz", description="URL, path or s3://")
    md5: Text | None = Field("c58f30108f718f92721af3b95e74349a", description="null: no check")
    train_limit: int | None = Field(None, ge=1, description="use the first N training images (smoke runs)")
    test_limit: int | None = Field(None, ge=1)


class ModelParams(_Section):
    pretrained: Text = Field("imagenet", description="imagenet | none | path, URL or s3:// URI of a state dict")
    hidden_units: int = Field(128, ge=1)
    dropout: Number = Field(0.2, ge=0.0, le=0.99)
    image_size: int = Field(32, ge=32, le=512, description=">32 upsamples on the device")
    unfreeze_from: Literal["first", "last"] = Field("first", description="first: the report")


class OptimizationParams(_Section):
    """How one phase optimises; the defaults are the report's plain Adam at a constant rate."""

    schedule: Literal["constant", "cosine", "onecycle"] = Field(
        "constant", description="the learning rate over the phase's steps"
    )
    warmup_steps: int = Field(0, ge=0, description="a linear ramp from zero first (onecycle: its rise, else 30%)")
    weight_decay: Number = Field(0.0, ge=0.0, le=1.0, description="AdamW's decoupled decay on weights (0: Adam)")
    label_smoothing: Number = Field(0.0, ge=0.0, le=0.5, description="of the training loss")


class WarmupParams(OptimizationParams):
    epochs: int = Field(5, ge=0)
    lr: Number = Field(0.001, gt=0.0)
    batch_size: int = Field(192, ge=1)
    batchnorm: Literal["pretrained", "recalibrated"] = Field(
        "pretrained", description="recalibrated: BatchNorm statistics re-estimated first (AdaBN)"
    )


class FinetuneParams(OptimizationParams):
    """The finetune's learning rate and batch size are the top-level ``lr`` and ``batch_size``."""

    epochs: int = Field(5, ge=0)
    batchnorm: Literal["train", "frozen"] = Field(
        "train", description="frozen: the unfrozen blocks keep the pretrained BatchNorm statistics"
    )
    last_conv: Literal["frozen", "train"] = Field(
        "frozen", description="train: the 1x1 convolution after the last block (features[18]) trains too"
    )


class AugmentParams(_Section):
    flip: bool = False
    crop_padding: int = Field(0, ge=0, le=16)
    test_flip: bool = Field(
        False, description="also score the mean logits of each image and its mirror (as the ONNX export does)"
    )


class SearchRange(_Section):
    """A sweep axis that ``random``/``tpe`` sample, e.g. ``{low: 0.0001, high: 0.05, log: true}``: integers when
    both bounds are; :func:`sweep_axes` derives one per numeric param, its bounds typed as the param."""

    low: float | int
    high: float | int
    log: bool = False

    @model_validator(mode="before")
    @classmethod
    def _keys(cls, raw: Any) -> Any:
        if isinstance(raw, Mapping) and (set(raw) - {"low", "high", "log"} or not {"low", "high"} <= set(raw)):
            message = "a range has keys low, high and optionally log, e.g. {example}; got {got}"
            raise custom_error("range_keys", message, example=RANGE_EXAMPLE, got=str(dict(raw)))
        return raw

    @model_validator(mode="after")
    def _ordered(self) -> SearchRange:
        if not self.low < self.high:
            message = "low must be below high, got low={low}, high={high}"
            raise custom_error("range_order", message, low=self.low, high=self.high)
        if self.log and self.low <= 0:
            raise custom_error("range_log", "a log range needs low > 0, got low={low}", low=self.low)
        return self

    @property
    def integer(self) -> bool:
        return isinstance(self.low, int) and isinstance(self.high, int)


class EarlyStopParams(_Section):
    """Asynchronous successive halving (``asha``): a trial reaching a rung continues only if its test accuracy is
    in the top 1/``reduction`` of the trials that have reached it."""

    method: Literal["none", "asha"] = Field("none", description="asha: stop the weaker trials at rungs")
    min_epochs: int = Field(1, ge=1, description="the first rung, in finetune epochs")
    reduction: int = Field(3, ge=2, description="rungs at min_epochs * reduction^k; the top 1/reduction continue")


class SweepParams(_Section):
    """Which trials a sweep runs. ``axes`` maps dotted param keys to the values to try, written in params.yaml as
    the other keys of ``sweep:`` (``lr: [...]``, ``model.dropout: [...]``)."""

    mode: Literal["one-at-a-time", "grid", "random", "tpe"] = Field(
        "one-at-a-time", description="random and tpe sample `trials` configurations"
    )
    seeds: list[int] = Field([0], description="every configuration runs once per seed")
    warmup_epochs: int | None = Field(None, ge=0, description="empty: warmup.epochs")
    finetune_epochs: int | None = Field(None, ge=0, description="empty: finetune.epochs")
    trials: int = Field(10, ge=1, description="random/tpe: configurations to sample")
    search_seed: int = Field(0, description="random/tpe: the sampler's seed")
    early_stop: EarlyStopParams = EarlyStopParams()
    budget_epochs: int | None = Field(None, ge=1, description="start no new trial once this many epochs are spent")
    time_budget_s: Number | None = Field(
        None, gt=0, description="seconds: then nothing new starts, and running trials stop after their epoch"
    )
    worker_timeout_s: int = Field(
        300, ge=1, description="workers: give up on waiting trials after this long with no worker"
    )
    server_outage_s: int = Field(
        300, ge=0, description="workers: how long the sweep rides out a Prefect server that does not answer"
    )
    axes: dict[str, list[Any] | SearchRange] = {}

    @model_validator(mode="wrap")
    @classmethod
    def _axes_from_plain_keys(cls, raw: Any, validate: Any) -> SweepParams:
        """The keys of ``sweep:`` other than its own fields are the axes, in the order written: see sweep_axes."""
        if not isinstance(raw, Mapping):
            return validate(raw)
        own = {k: v for k, v in raw.items() if k in cls.model_fields and k != "axes"}
        written = {k: v for k, v in raw.items() if k not in own}
        mode = own.get("mode", cls.model_fields["mode"].default)
        checked = sweep_axes().model_validate(written, context={"mode": mode})
        return validate({**own, "axes": {k: getattr(checked, _name(k)) for k in written}})

    @field_validator("seeds")
    @classmethod
    def _one_seed_when_searched(cls, seeds: list[int], info: ValidationInfo) -> list[int]:
        if info.data.get("mode") in SEARCHED and len(seeds) != 1:
            message = "{mode} search runs each sampled configuration once; give one seed, e.g. sweep.seeds=[0]"
            raise custom_error("search_seeds", message, mode=info.data["mode"])
        return seeds

    @model_serializer(mode="wrap")
    def _axes_as_plain_keys(self, dump: Any) -> dict[str, Any]:
        """Dumped as ``params.yaml`` writes it, so the dump validates again."""
        raw = dump(self)
        return {**{k: v for k, v in raw.items() if k != "axes"}, **raw["axes"]}

    @property
    def searched(self) -> bool:
        """Sampled configurations (random/tpe) rather than an enumerated list."""
        return self.mode in SEARCHED


class StorageParams(_Section):
    uri: Annotated[Text, After(_s3_uri)] | None = Field(
        None, description="s3://bucket/prefix to publish to; empty: a local folder"
    )
    outage_s: int = Field(300, ge=0, description="how long S3 calls retry an endpoint that does not answer")


class Params(_Section):
    seed: int = 0
    device: Annotated[Text, After(_device)] = Field("auto", description="auto | cpu | cuda | cuda:N")
    compile: Literal["none", "default", "reduce-overhead"] = Field(
        "none", description="torch.compile of the train and eval steps"
    )
    deterministic: bool = Field(
        False, description="CUDA: deterministic kernels only, so a GPU run repeats bit for bit (CPU runs always do)"
    )
    data: DataParams = DataParams()
    model: ModelParams = ModelParams()
    warmup: WarmupParams = Field(WarmupParams(), description="phase 1: the head alone on frozen features")
    finetune: FinetuneParams = Field(FinetuneParams(), description="phase 2: the head and `trainable_layers` blocks")
    lr: Number = Field(0.005, gt=0.0, description="finetune learning rate")
    batch_size: int = Field(192, ge=1, description="finetune batch size")
    trainable_layers: int = Field(10, ge=0, le=NUM_BLOCKS, description="inverted-residual blocks unfrozen in finetune")
    augment: AugmentParams = AugmentParams()
    sweep: SweepParams = Field(
        default_factory=lambda: SweepParams.model_validate(REPORT_SWEEP_AXES),
        description=f"each swept key lists its values; random/tpe also take a range, e.g. lr: {RANGE_EXAMPLE}",
    )
    storage: StorageParams = StorageParams()

    def to_dict(self) -> dict[str, Any]:
        """Plain data as ``params.yaml`` writes it (the sweep's axes as keys of ``sweep:``)."""
        return self.model_dump()

    def override(self, assignments: Iterable[str]) -> Params:
        """A copy with ``key=value`` overrides applied and validated again."""
        return params_from_dict(apply_overrides(self.to_dict(), assignments))


def model_in(annotation: Any) -> type[BaseModel] | None:
    """The pydantic model inside ``annotation`` (``X``, ``X | None``), if there is one."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    return next(filter(None, (model_in(arg) for arg in get_args(annotation))), None)


@functools.cache
def params_fields() -> dict[str, FieldInfo]:
    """Every dotted key of the params tree (``lr``, ``warmup``, ``warmup.lr``, ...) with its field."""
    fields: dict[str, FieldInfo] = {}

    def walk(model: type[BaseModel], prefix: str) -> None:
        for name, field in model.model_fields.items():
            fields[prefix + name] = field
            if (nested := model_in(field.annotation)) is not None:
                walk(nested, f"{prefix}{name}.")

    walk(Params, "")
    return fields


@functools.cache
def sweepable_keys() -> dict[str, FieldInfo]:
    """Dotted keys of every scalar param a sweep may vary, with its field (type and bounds)."""
    return {
        key: field
        for key, field in params_fields().items()
        if model_in(field.annotation) is None and key.split(".")[0] not in ("sweep", "storage", *EXECUTION_KEYS)
    }


def field_type(field: FieldInfo) -> Any:
    """The field's type with its constraints (bounds, validators) attached."""
    return Annotated[field.annotation, *field.metadata] if field.metadata else field.annotation


def _name(key: str) -> str:
    return key.replace(".", "__")


def _axis_kind(value: Any) -> str:
    return "range" if isinstance(value, Mapping | SearchRange) else "list"


def _axis(key: str, numeric: bool, value: Any, validate: Any, info: ValidationInfo) -> Any:
    """An axis is a non-empty list, or a numeric param's range when the mode samples."""
    if _axis_kind(value) == "list" and not (isinstance(value, list) and value):
        message = "expected a non-empty list of values, e.g. {key}: [1, 2], or (random/tpe) a range, e.g. {key}: {eg}"
        raise custom_error("axis_shape", message, key=key, eg=RANGE_EXAMPLE)
    if _axis_kind(value) == "range" and not numeric:
        message = "{key} is not a number, so it has no range; list its values, e.g. {key}: [...]"
        raise custom_error("axis_range", message, key=key)
    axis, mode = validate(value), info.context["mode"]
    if isinstance(axis, SearchRange) and mode not in SEARCHED:
        message = (
            "a range is sampled by sweep.mode random or tpe; {mode} needs a list of values, e.g. sweep.{key}=[...]"
        )
        raise custom_error("range_mode", message, mode=mode, key=key)
    return axis


@functools.cache
def sweep_axes() -> type[BaseModel]:
    """The sweep's axes as a model: per sweepable param (its dotted key the alias) a list of its values, or for a
    number a :class:`SearchRange` whose bounds are typed as the param is; validated with ``context={"mode": ...}``."""
    fields: dict[str, Any] = {}
    for key, field in sweepable_keys().items():
        typed = field_type(field)
        numeric = bool({int, float} & {field.annotation, *get_args(field.annotation)})
        axis: Any = Annotated[list[typed], Tag("list")]
        if numeric:
            bounded = create_model(f"Range_{_name(key)}", __base__=SearchRange, low=(typed, ...), high=(typed, ...))
            axis = Annotated[axis | Annotated[bounded, Tag("range")], Discriminator(_axis_kind)]
        checked = WrapValidator(functools.partial(_axis, key, numeric))
        fields[_name(key)] = (Annotated[axis, checked], Field(None, alias=key))
    return create_model("SweepAxes", __config__=ConfigDict(extra="forbid", strict=True), **fields)


def params_from_dict(raw: Any) -> Params:
    """Validate params passed as plain data (e.g. a Prefect flow parameter)."""
    if not isinstance(raw or {}, Mapping):
        raise ParamsError("params: expected a mapping of keys to values at the top level")
    try:
        return Params.model_validate(raw or {})
    except ValidationError as exc:
        raise explain(exc.errors()[0], params_fields(), sweepable_keys()) from None


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
    section = params_fields().get(".".join(parts[:2]))
    if parts[0] == "sweep" and len(parts) > 2 and (section is None or model_in(section.annotation) is None):
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
        example = "write key=value, e.g. lr=0.005 or sweep.lr=[0.01,0.001]"
        raise ParamsError(f"override {assignment!r} is malformed; {example}")
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
