"""Prefect flow ``sweep``: the report's whole study from one command.

Run: ``mobitune sweep [--set key=value ...] [--backend local|workers]``, or
``python flows/sweep.py``; deployed by ``prefect deploy --all`` (prefect.yaml).
The flow itself lives in ``mobitune.orchestration.sweep_flow`` so the CLI and tests import it.
"""

from mobitune.orchestration.sweep_flow import sweep

if __name__ == "__main__":
    print(sweep())
