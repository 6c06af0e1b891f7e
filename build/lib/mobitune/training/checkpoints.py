"""Checkpoints: written whole or not at all, read back to resume a phase or to load a trained model."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from mobitune.errors import MobituneError
from mobitune.params import Params
from mobitune.storage.records import Status
from mobitune.storage.stores import atomic_path
from mobitune.training.model import MobileNetClassifier, build_model, load_checkpoint


def save_checkpoint(path: Path, checkpoint: dict[str, Any]) -> None:
    """``torch.save`` whole or not at all."""
    with atomic_path(path) as scratch:
        torch.save(checkpoint, scratch)


def resume_state(path: Path | None, phase: str) -> dict[str, Any] | None:
    """The checkpoint to resume ``phase`` from: the last one it saved, if it saved one and did not diverge."""
    if path is None or not path.exists():
        return None
    state = load_checkpoint(path)
    return state if state.get("phase") == phase and state.get("status") == Status.OK else None


def load_trained_model(checkpoint_path: Path, params: Params, num_classes: int) -> tuple[MobileNetClassifier, dict]:
    """A model with the weights of a mobitune checkpoint, and the checkpoint itself."""
    state = load_checkpoint(checkpoint_path)
    if not isinstance(state.get("model"), dict) or "history" not in state:
        raise MobituneError(f"{checkpoint_path}: not a mobitune checkpoint (no model/history); re-run its stage")
    model = build_model(params.model.model_copy(update={"pretrained": "none"}), num_classes)
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as exc:
        raise MobituneError(
            f"{checkpoint_path}: does not fit model.hidden_units={params.model.hidden_units} "
            f"and {num_classes} classes ({str(exc).splitlines()[0]}); re-run the stage that wrote it"
        ) from None
    return model, state
