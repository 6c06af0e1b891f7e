"""The sweep's main settings as typed flow parameters, which the Prefect UI renders as a form.

``sweep(settings=SweepSettings(...))`` is the same as ``--set`` overrides of
the same keys, applied after the recipe and before the free-form overrides.
In the deployment's parameter schema each field's default is the value in the
deploying project's ``params.yaml`` (read when ``prefect deploy`` builds the
schema), so the UI's "Custom run" form starts from it; a field left empty
keeps what ``params.yaml`` says when the run starts.
"""

from __future__ import annotations

import json
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from mobitune.errors import MobituneError
from mobitune.params import PARAMS_FILE, load_params
from mobitune.sweep import lookup

# field -> the dotted params key it sets
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
            value = lookup(raw, key)
        except KeyError:  # an axis this project does not sweep
            continue
        if value is not None and not isinstance(value, dict):  # a sampled range: the form's lists cannot hold it
            schema["properties"][name]["default"] = value


class SweepSettings(BaseModel):
    """What a sweep tries and how long it trains; empty fields keep params.yaml's value."""

    model_config = ConfigDict(extra="forbid", json_schema_extra=_deployed_defaults, title="Sweep settings")

    mode: Literal["one-at-a-time", "grid", "random", "tpe"] | None = Field(
        None, description="one-at-a-time and grid enumerate the lists; random and tpe sample `trials` of them"
    )
    lr: list[float] | None = Field(None, description="finetune learning rates to try")
    batch_size: list[int] | None = Field(None, description="finetune batch sizes to try")
    trainable_layers: list[int] | None = Field(None, description="inverted-residual blocks unfrozen in finetune")
    seeds: list[int] | None = Field(None, description="every configuration runs once per seed")
    trials: int | None = Field(None, ge=1, description="random/tpe: configurations to sample")
    warmup_epochs: int | None = Field(None, ge=0, description="empty: warmup.epochs")
    finetune_epochs: int | None = Field(None, ge=0, description="empty: finetune.epochs")
    early_stop: Literal["none", "asha"] | None = Field(None, description="asha: stop the weaker trials at rungs")
    budget_epochs: int | None = Field(None, ge=1, description="start no new trial once this many epochs are spent")
    storage_uri: str | None = Field(None, description="s3://bucket/prefix to publish to; empty: params.yaml's")

    def overrides(self) -> list[str]:
        """The set fields as ``key=value`` overrides (values in JSON, which the params loader reads as YAML)."""
        return [f"{KEYS[name]}={json.dumps(value)}" for name, value in self if value is not None]
