"""A run that collapsed to chance without a NaN: recorded ``diverged`` like one whose loss went NaN/inf; and a
warmup that never left chance, said with its likely cause.

Frozen BatchNorm statistics at the report's learning rates (``docs/fidelity.md`` section 2) end a finetune at
9% on ten classes with a train loss of ln 10: finite numbers that look like a result. A finetune whose warmup
was above chance and whose test accuracy falls to chance, or whose train loss sits at ln(classes), has
collapsed; it stops at once (a search spends nothing more on it) and says where.

A warmup that ends at chance trained a head on features that tell the classes nothing. It is no failure (the
finetune may still learn), but its model answers one class for everything, so it is said, with what to change.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from mobitune.params import Params

CHANCE_MARGIN = 0.02  # test accuracy within 2 points over 1/classes is chance (10 classes: at most 12%)
CHANCE_LOSS_TOLERANCE = 0.01  # a train loss within 1% of ln(classes) is the loss of uniform predictions
# the stand-in ImageNet weights' last feature layer is dead below this input size (../shared/data/README.md)
LIVE_FEATURES_MIN_SIZE = 64


def collapse_reason(row: Mapping[str, Any], classes: int, warmup_accuracy: float | None) -> str | None:
    """Why the epoch ``row`` (a history row) is a collapse, or None. Only a phase that starts above chance
    (``warmup_accuracy``: the warmup's last test accuracy) can collapse: a model that never left chance (random
    features) has nothing to lose."""
    chance = 1 / classes + CHANCE_MARGIN
    if warmup_accuracy is None or not warmup_accuracy > chance:
        return None
    where = f"{row['phase']} epoch {row['epoch']}"
    if row["test_accuracy"] <= chance:
        return (
            f"collapsed to chance at {where}: test accuracy {row['test_accuracy']:.1%} (chance: 1/{classes} + "
            f"{CHANCE_MARGIN:.0%}), {warmup_accuracy:.1%} after warmup"
        )
    uniform = math.log(classes)
    if abs(row["train_loss"] - uniform) <= CHANCE_LOSS_TOLERANCE * uniform:
        return (
            f"collapsed to chance at {where}: train loss {row['train_loss']:.4f} is ln {classes}, uniform predictions"
        )
    return None


def warmup_at_chance(params: Params, test_accuracy: float, classes: int) -> str | None:
    """Why a warmup whose last test accuracy is ``test_accuracy`` likely ended at chance, and what to change; None
    when it ended above chance."""
    if test_accuracy > 1 / classes + CHANCE_MARGIN:
        return None
    ended = f"the warmup ended at chance ({test_accuracy:.1%} test accuracy on {classes} classes)"
    model = params.model
    if model.pretrained == "none":
        return (
            f"{ended}: model.pretrained is none, so the frozen features are random and tell the classes nothing; "
            "set model.pretrained to imagenet or a state dict of pretrained weights"
        )
    if model.image_size < LIVE_FEATURES_MIN_SIZE:
        return (
            f"{ended}, likely because the pretrained features are dead at model.image_size {model.image_size} (the "
            f"stand-in ImageNet weights' last layer is all but zero below {LIVE_FEATURES_MIN_SIZE} px): set "
            f"model.image_size={LIVE_FEATURES_MIN_SIZE} or more"
        )
    return (
        f"{ended}: the frozen features told the head nothing; check that model.pretrained holds ImageNet weights "
        f"of MobileNetV2, and try another warmup.lr (now {params.warmup.lr:g})"
    )
