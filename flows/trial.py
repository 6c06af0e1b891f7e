"""Prefect flow ``trial``: one config, finetuned from its (shared) warmup.

Runs on a worker of pool ``gpu`` as the ``trial`` deployment (prefect.yaml);
``python flows/trial.py`` runs the base config of params.yaml alone.
"""

from mobitune.params import load_params
from mobitune.sweep import new_sweep_id
from mobitune.trial_flow import trial

if __name__ == "__main__":
    params = load_params()
    print(trial(sweep_id=new_sweep_id(), trial_id="base", params=params.to_dict(), store_uri=params.storage.uri))
