"""A run that collapsed to chance without a NaN: recorded ``diverged`` like one whose loss went NaN/inf.

Frozen BatchNorm statistics at the report's learning rates (``docs/fidelity.md`` section 2) end a finetune at
9% on ten classes with a train loss of ln 10: finite numbers that look like a result. A finetune whose warmup
was above chance and whose test accuracy falls to chance, or whose train loss sits at ln(classes), has
collapsed; it stops at once (a search spends nothing more on it) and says where.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

CHANCE_MARGIN = 0.02  # test accuracy within 2 points over 1/classes is chance (10 classes: at most 12%)
CHANCE_LOSS_TOLERANCE = 0.01  # a train loss within 1% of ln(classes) is the loss of uniform predictions


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
