"""DVC stage ``evaluate``: test metrics, per-class accuracy and the confusion-matrix data.

Run: ``python -m mobitune.pipeline.stages.evaluate`` (or ``dvc repro evaluate``).
"""

from mobitune.params import load_params
from mobitune.pipeline import paths
from mobitune.pipeline.stages import run_stage
from mobitune.storage.records import write_csv, write_json
from mobitune.training.batches import DeviceData, resolve_device
from mobitune.training.data import load_dataset
from mobitune.training.evaluate import evaluate_checkpoint


def main() -> None:
    params = load_params()
    dataset = load_dataset(paths.PREPARED, test_limit=params.data.test_limit, train_limit=0)
    device_data = DeviceData.create(params, dataset, resolve_device(params.device))
    evaluation = evaluate_checkpoint(params, device_data, paths.FINETUNE_CHECKPOINT)
    write_csv(paths.PREDICTIONS, evaluation.predictions, ("actual", "predicted"))
    write_json(paths.EVALUATE_METRICS, evaluation.metrics())
    details = {"per_class_accuracy": evaluation.per_class_accuracy, "provenance": device_data.provenance(params.seed)}
    write_json(paths.EVALUATE_DETAILS, details)
    flips = evaluation.scores.flips
    flipped = f" (with test-time flips {flips.accuracy:.4f})" if flips is not None else ""
    print(f"test accuracy {evaluation.test_accuracy:.4f}{flipped}, test loss {evaluation.test_loss:.4f}")


if __name__ == "__main__":
    run_stage(main)
