"""Test-set evaluation of a trained checkpoint: accuracy, loss, per-class accuracy, predictions."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from mobitune.params import Params
from mobitune.storage.records import Status
from mobitune.training.batches import DeviceData
from mobitune.training.checkpoints import load_trained_model
from mobitune.training.loop import TestScores, evaluate


@dataclass
class Evaluation:
    """Single-view figures; with ``augment.test_flip`` the flipped view's loss and accuracy beside them."""

    scores: TestScores
    per_class_accuracy: dict[str, float]
    status: str  # the training status recorded in the checkpoint
    predictions: list[dict[str, str]]  # actual/predicted class names, for DVC's confusion template

    @property
    def test_accuracy(self) -> float:
        return self.scores.accuracy

    @property
    def test_loss(self) -> float:
        return self.scores.loss

    def metrics(self) -> dict[str, Any]:
        """Test loss and accuracy (both views with flips) and the training status; per class apart."""
        return {**self.scores.row(), "status": self.status}


def evaluate_checkpoint(params: Params, device_data: DeviceData, checkpoint_path: Path) -> Evaluation:
    classes = device_data.dataset.classes
    model, state = load_trained_model(checkpoint_path, params, len(classes))
    model.to(device_data.device, memory_format=torch.channels_last)
    scores = evaluate(model, device_data)
    predicted = scores.predicted
    labels = device_data.test.labels.cpu()
    per_class = {}
    for index, name in enumerate(classes):
        mask = labels == index
        per_class[name] = (predicted[mask] == index).float().mean().item() if mask.any() else float("nan")
    rows = [
        {"actual": classes[a], "predicted": classes[p]}
        for a, p in zip(labels.tolist(), predicted.tolist(), strict=True)
    ]
    return Evaluation(scores, per_class, state.get("status", Status.OK), rows)
