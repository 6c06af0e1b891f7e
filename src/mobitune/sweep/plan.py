"""Sweep rules: expand a sweep spec into trials, key shared warmups, name sweeps.

Pure functions: the Prefect flows in ``flows/`` only call these.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import secrets
import time
from dataclasses import dataclass
from typing import Any

from mobitune.params import EXECUTION_KEYS, Params, ParamsError, SearchRange, get_dotted, to_override

# Params that change the warmup checkpoint (dvc.yaml's warmup stage reads the same, plus its data dep).
WARMUP_KEYS = (
    "seed",
    "data.source",
    "data.md5",
    "data.train_limit",
    "data.test_limit",
    "model.pretrained",
    "model.hidden_units",
    "model.dropout",
    "model.image_size",
    "warmup",
    "augment",
)


@dataclass(frozen=True)
class TrialSpec:
    trial_id: str
    varied: dict[str, Any]  # the swept keys and their values for this trial (seed included)
    params: Params


def training_config(params: Params) -> str:
    """Canonical text of everything that defines a training run (not the sweep spec itself)."""
    raw = params.to_dict()
    for key in ("sweep", "storage", *EXECUTION_KEYS):
        raw.pop(key)
    return json.dumps(raw, sort_keys=True)


def warmup_key(params: Params) -> str:
    """Hash of the warmup's inputs: trials with equal keys share one warmup checkpoint."""
    raw = params.to_dict()
    subset = {key: get_dotted(raw, key) for key in WARMUP_KEYS}
    return hashlib.sha256(json.dumps(subset, sort_keys=True).encode()).hexdigest()[:16]


def _slug(point: dict[str, Any], base: dict[str, Any]) -> str:
    """A trial's name from its varied values: ``lr=0.001``, or ``base`` for the base configuration."""
    if all(base.get(key) == value for key, value in point.items()):
        return "base"
    text = "-".join(
        f"{key.replace('.', '_')}={f'{value:.4g}' if isinstance(value, float) else value}"
        for key, value in point.items()
    )
    return "".join(c if c.isalnum() or c in "=._-" else "_" for c in text)[:80]


def swept_axes(params: Params) -> dict[str, list[Any] | SearchRange]:
    """The axes a sweep varies: a range, or a list of two values or more. An axis of one value is a setting, not
    swept: every trial takes that value (see :func:`trial_base`), and no trial name, report section or figure is
    about it."""
    return {
        key: values for key, values in params.sweep.axes.items() if isinstance(values, SearchRange) or len(values) > 1
    }


def fixed_axes(params: Params) -> dict[str, Any]:
    """The axes of one value, each with its value: what every trial of the sweep takes."""
    swept = swept_axes(params)
    return {key: values[0] for key, values in params.sweep.axes.items() if key not in swept}


def trial_base(params: Params) -> Params:
    """The params every trial starts from: the sweep's epoch counts and its one-value axes applied."""
    spec = params.sweep
    if not spec.axes:
        raise ParamsError("sweep: nothing to sweep; give at least one axis, e.g. sweep.lr=[0.01,0.001]")
    if not spec.seeds:
        raise ParamsError("sweep.seeds: expected at least one seed, e.g. sweep.seeds=[0]")
    settings = [to_override(key, value) for key, value in fixed_axes(params).items()]
    if spec.warmup_epochs is not None:
        settings.append(f"warmup.epochs={spec.warmup_epochs}")
    if spec.finetune_epochs is not None:
        settings.append(f"finetune.epochs={spec.finetune_epochs}")
    return params.override(settings)


def make_trial(base: Params, index: int, point: dict[str, Any], seed: int) -> TrialSpec:
    """Trial number ``index``: ``base`` (see :func:`trial_base`) with the axes' values of ``point`` and ``seed``."""
    varied = {**point, "seed": seed}
    raw = base.to_dict()
    at_base = {key: get_dotted(raw, key) for key in point}
    trial_id = f"t{index:03d}-{_slug(point, at_base)}-s{seed}"
    return TrialSpec(trial_id, varied, base.override(to_override(k, v) for k, v in varied.items()))


def expand(params: Params) -> list[TrialSpec]:
    """The trials of an enumerated sweep, identical configs once, in a stable order.

    ``one-at-a-time`` varies each axis around the base params (the report's
    Tables 1-3; the base config sits on every axis, runs once and is named
    ``base``); ``grid`` takes the cartesian product. Every config runs once per seed.
    With no axis of two values or more, the base config alone runs (once per seed).
    """
    spec = params.sweep
    base = trial_base(params)
    axes = swept_axes(params)
    if spec.mode == "grid":
        points = [dict(zip(axes, values, strict=True)) for values in itertools.product(*axes.values())]
    else:
        points = [{key: value} for key, values in axes.items() for value in values] or [{}]
    trials: list[TrialSpec] = []
    seen: set[str] = set()
    for seed in spec.seeds:
        for point in points:
            trial = make_trial(base, len(trials), point, seed)
            config = training_config(trial.params)
            if config not in seen:
                seen.add(config)
                trials.append(trial)
    return trials


def new_sweep_id() -> str:
    """Time-ordered and unique: two sweeps started in the same second still differ."""
    return time.strftime("%Y%m%d-%H%M%S", time.gmtime()) + "-" + secrets.token_hex(3)
