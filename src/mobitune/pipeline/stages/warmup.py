"""DVC stage ``warmup``: train the new head on frozen features.

Run: ``python -m mobitune.pipeline.stages.warmup`` (or ``dvc repro warmup``).
"""

from mobitune.params import load_params
from mobitune.pipeline import paths
from mobitune.pipeline.stages import run_stage
from mobitune.pipeline.stages.phase_outputs import write_phase_outputs
from mobitune.training.batches import DeviceData, resolve_device
from mobitune.training.data import load_dataset
from mobitune.training.loop import run_warmup


def main() -> None:
    params = load_params()
    dataset = load_dataset(paths.PREPARED, params.data.train_limit, params.data.test_limit)
    device_data = DeviceData.create(params, dataset, resolve_device(params.device))
    result = run_warmup(params, device_data, paths.WARMUP_CHECKPOINT)
    provenance = device_data.provenance(params.seed)
    write_phase_outputs("warmup", result, paths.WARMUP_HISTORY, paths.WARMUP_METRICS, paths.WARMUP_DETAILS, provenance)


if __name__ == "__main__":
    run_stage(main)
