"""The sweep's main settings as typed flow parameters, which the Prefect UI renders as a form.

``sweep(settings=SweepSettings(...))`` sets the same keys as ``--set`` overrides would, with typed values, after the
recipe and before the free-form overrides. Each field's type, bounds and description come from the params model; a
swept key (``lr``) is a list of that param's values. Every field starts empty, and an empty field keeps what
``params.yaml`` says when the run starts: an untouched form runs what a scheduled run runs.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, create_model

from mobitune.params import field_type, params_fields, sweepable_keys

# form field -> the dotted params key it sets; a key under sweep. that is a param's name sweeps that param
KEYS = {
    "mode": "sweep.mode",
    "lr": "sweep.lr",
    "batch_size": "sweep.batch_size",
    "trainable_layers": "sweep.trainable_layers",
    "seeds": "sweep.seeds",
    "trials": "sweep.trials",
    "warmup_epochs": "sweep.warmup_epochs",
    "finetune_epochs": "sweep.finetune_epochs",
    "early_stop": "sweep.early_stop.method",
    "budget_epochs": "sweep.budget_epochs",
    "time_budget_s": "sweep.time_budget_s",
    "storage_uri": "storage.uri",
}


def _field(dotted: str) -> Any:
    """The params model's field behind ``dotted``: a swept param as a list of its values."""
    if (axis := dotted.removeprefix("sweep.")) in sweepable_keys():
        param = sweepable_keys()[axis]
        return list[field_type(param)] | None, Field(None, description=f"{param.description}: the values to try")
    param = params_fields()[dotted]
    return field_type(param) | None, Field(None, description=param.description)


class _Form(BaseModel):
    model_config = ConfigDict(extra="forbid", title="Sweep settings")

    def values(self) -> dict[str, Any]:
        """The set fields as typed values of their dotted params keys."""
        return {KEYS[name]: value for name, value in self if value is not None}


SweepSettings = create_model(
    "SweepSettings",
    __base__=_Form,
    __doc__="What a sweep tries and how long it trains; empty fields keep params.yaml's value.",
    **{name: _field(key) for name, key in KEYS.items()},
)
