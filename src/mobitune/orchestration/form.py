"""The sweep's main settings as typed flow parameters, which the Prefect UI renders as a form.

``sweep(settings=SweepSettings(...))`` sets the same keys as ``--set`` overrides
would, with typed values, after the recipe and before the free-form overrides.
Each field's type, bounds and description come from the params model
(:mod:`mobitune.params`): a swept key (``lr``) is a list of that param's
values. In the deployment's parameter schema each field's default is the
value in the deploying project's ``params.yaml`` (read when ``prefect deploy``
builds the schema), so the UI's "Custom run" form starts from it; a field
left empty keeps what ``params.yaml`` says when the run starts.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, create_model

from mobitune.errors import MobituneError
from mobitune.params import PARAMS_FILE, field_type, get_dotted, load_params, params_fields, sweepable_keys

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


def _deployed_defaults(schema: dict[str, Any]) -> None:
    """Each field's default in the JSON schema: the project's params.yaml, where there is one and it is valid."""
    try:
        raw = load_params(PARAMS_FILE).to_dict()
    except MobituneError:
        return
    for name, key in KEYS.items():
        try:
            value = get_dotted(raw, key)
        except KeyError:  # an axis this project does not sweep
            continue
        if value is not None and not isinstance(value, dict):  # a sampled range: the form's lists cannot hold it
            schema["properties"][name]["default"] = value


def _field(dotted: str) -> Any:
    """The params model's field behind ``dotted``: a swept param as a list of its values."""
    if (axis := dotted.removeprefix("sweep.")) in sweepable_keys():
        param = sweepable_keys()[axis]
        return list[field_type(param)] | None, Field(None, description=f"{param.description}: the values to try")
    param = params_fields()[dotted]
    return field_type(param) | None, Field(None, description=param.description)


class _Form(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra=_deployed_defaults, title="Sweep settings")

    def values(self) -> dict[str, Any]:
        """The set fields as typed values of their dotted params keys."""
        return {KEYS[name]: value for name, value in self if value is not None}


SweepSettings = create_model(
    "SweepSettings",
    __base__=_Form,
    __doc__="What a sweep tries and how long it trains; empty fields keep params.yaml's value.",
    **{name: _field(key) for name, key in KEYS.items()},
)
