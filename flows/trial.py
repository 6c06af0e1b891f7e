"""Prefect flows ``trial`` (one config, finetuned from its shared warmup) and ``trial-slot`` (a worker slot
that runs a sweep's trials one after another).

``trial-slot`` runs on workers of pool ``gpu`` as the ``trial-slot/gpu``
deployment (prefect.yaml); ``python flows/trial.py`` runs the base config of
params.yaml alone.
"""

from mobitune.orchestration.trial_flow import trial, trial_slot
from mobitune.params import load_params
from mobitune.sweep.plan import new_sweep_id
from mobitune.sweep.trial_files import TrialRequest

__all__ = ["trial", "trial_slot"]

if __name__ == "__main__":
    params = load_params()
    print(trial(TrialRequest(sweep_id=new_sweep_id(), trial_id="base", params=params, store_uri=params.storage.uri)))
