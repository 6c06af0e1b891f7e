"""MobileNetV2 features with the report's classifier head, pretrained weights, freezing."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torchvision.models import MobileNet_V2_Weights, mobilenet_v2

from mobitune.errors import MobituneError
from mobitune.params import NUM_BLOCKS, ModelParams
from mobitune.storage.fetch import fetch

FEATURE_CHANNELS = 1280
IMAGENET_WEIGHTS = MobileNet_V2_Weights.IMAGENET1K_V1


class ModelError(MobituneError):
    """Weights or checkpoints that cannot be loaded."""


class MobileNetClassifier(nn.Module):
    """torchvision MobileNetV2 ``features`` + pool → dropout → dense → ReLU → dropout → dense.

    Leading feature layers that are frozen run under ``no_grad``: they need no
    autograd graph, which makes warmup (all features frozen) several times
    cheaper. Frozen BatchNorm layers stay in eval mode whenever the model trains,
    so their ImageNet running statistics are not overwritten; with
    ``frozen_batchnorm`` the trainable ones do too.
    """

    def __init__(self, num_classes: int, hidden_units: int, dropout: float) -> None:
        super().__init__()
        self.features = mobilenet_v2().features
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Dropout(dropout),
            nn.Linear(FEATURE_CHANNELS, hidden_units),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(hidden_units, num_classes),
        )
        self.frozen_prefix = 0
        self.frozen_batchnorm = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.frozen_prefix:
            with torch.no_grad():
                x = self.features[: self.frozen_prefix](x)
        x = self.features[self.frozen_prefix :](x)
        return self.classifier(self.pool(x))

    def train(self, mode: bool = True) -> MobileNetClassifier:
        super().train(mode)
        if mode:
            for module in self.modules():
                if isinstance(module, nn.BatchNorm2d) and (
                    self.frozen_batchnorm or not any(p.requires_grad for p in module.parameters())
                ):
                    module.eval()
        return self


def set_trainable_layers(
    model: MobileNetClassifier, trainable_layers: int, unfreeze_from: str, last_conv: bool = False
) -> None:
    """Freeze all features, then unfreeze ``trainable_layers`` inverted-residual blocks (and the last convolution).

    ``first`` unfreezes ``features[1..trainable_layers]`` (the report), ``last`` unfreezes
    ``features[18-trainable_layers..17]``; ``last_conv`` unfreezes ``features[18]``. The head always trains.
    """
    if not 0 <= trainable_layers <= NUM_BLOCKS:
        raise ValueError(f"trainable_layers must be in 0..{NUM_BLOCKS}, got {trainable_layers}")
    model.features.requires_grad_(False)
    first = (
        range(1, trainable_layers + 1)
        if unfreeze_from == "first"
        else range(NUM_BLOCKS + 1 - trainable_layers, NUM_BLOCKS + 1)
    )
    indices = [*first, *([NUM_BLOCKS + 1] if last_conv else [])]
    for index in indices:
        model.features[index].requires_grad_(True)
    model.classifier.requires_grad_(True)
    model.frozen_prefix = min(indices, default=len(model.features))


def build_model(params: ModelParams, num_classes: int) -> MobileNetClassifier:
    """The classifier with ``params.pretrained`` feature weights loaded."""
    model = MobileNetClassifier(num_classes, params.hidden_units, params.dropout)
    if params.pretrained == "none":
        return model
    state = _imagenet_state() if params.pretrained == "imagenet" else _state_from(params.pretrained)
    features = {k: v for k, v in state.items() if k.startswith("features.")}
    expected = {k for k in model.state_dict() if k.startswith("features.")}
    missing = sorted(expected - features.keys())
    if missing:
        raise ModelError(
            f"model.pretrained {params.pretrained}: not a MobileNetV2 state dict "
            f"(missing {missing[0]} and {len(missing) - 1} more keys)"
        )
    try:
        model.load_state_dict(features, strict=False)
    except RuntimeError as exc:
        raise ModelError(f"model.pretrained {params.pretrained}: shapes do not match ({exc})") from None
    return model


def _imagenet_state() -> dict[str, Any]:
    try:
        return IMAGENET_WEIGHTS.get_state_dict(progress=True, check_hash=True)
    except (OSError, RuntimeError) as exc:
        cache = Path(torch.hub.get_dir()) / "checkpoints" / IMAGENET_WEIGHTS.url.rsplit("/", 1)[-1]
        raise ModelError(
            f"model.pretrained=imagenet: cannot fetch the ImageNet weights from {IMAGENET_WEIGHTS.url} "
            f"({getattr(exc, 'reason', exc)}). Offline, pre-seed the torch cache by copying that file "
            f"to {cache} (or set TORCH_HOME), or set model.pretrained to a local path, URL or s3:// URI "
            "of a MobileNetV2 state dict, or to none"
        ) from None


def _state_from(source: str) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        path = fetch(source, Path(tmp), key="model.pretrained")
        state = load_checkpoint(path, what="model.pretrained")
    if isinstance(state.get("model"), dict):  # a mobitune checkpoint
        state = state["model"]
    return state


def load_checkpoint(path: Path, what: str = "checkpoint") -> dict[str, Any]:
    """``torch.load`` with ``weights_only=True``: tensors and plain data, never code."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise ModelError(f"{what} {path}: not found") from None
    except Exception as exc:  # torch raises many types for a non-checkpoint file
        raise ModelError(
            f"{what} {path}: not a PyTorch checkpoint or state dict ({type(exc).__name__}); "
            "it may be truncated or another kind of file"
        ) from None
    if not isinstance(state, dict):
        raise ModelError(f"{what} {path}: expected a state dict, got {type(state).__name__}")
    return state
