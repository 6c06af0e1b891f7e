"""Test-set evaluation of a trained checkpoint: accuracy, loss, per-class accuracy, predictions."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from mobitune.params import Params
from mobitune.training.batches import DeviceData
from mobitune.training.checkpoints import load_trained_model
from mobitune.training.loop import evaluate


@dataclass
class Evaluation:
    test_loss: float
    test_accuracy: float
    per_class_accuracy: dict[str, float]
    status: str  # the training status recorded in the checkpoint
    predictions: list[dict[str, str]]  # actual/predicted class names, for DVC's confusion template

    def metrics(self) -> dict[str, Any]:
        return {
            "test_loss": self.test_loss,
            "test_accuracy": self.test_accuracy,
            "status": self.status,
            "per_class_accuracy": self.per_class_accuracy,
        }


def evaluate_checkpoint(params: Params, device_data: DeviceData, checkpoint_path: Path) -> Evaluation:
    classes = device_data.dataset.classes
    model, state = load_trained_model(checkpoint_path, params, len(classes))
    model.to(device_data.device, memory_format=torch.channels_last)
    loss, accuracy, predicted = evaluate(model, device_data)
    labels = device_data.test.labels.cpu()
    per_class = {}
    for index, name in enumerate(classes):
        mask = labels == index
        per_class[name] = (predicted[mask] == index).float().mean().item() if mask.any() else float("nan")
    rows = [
        {"actual": classes[a], "predicted": classes[p]}
        for a, p in zip(labels.tolist(), predicted.tolist(), strict=True)
    ]
    return Evaluation(loss, accuracy, per_class, state.get("status", "ok"), rows)
