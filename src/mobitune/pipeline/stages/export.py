"""DVC stage ``export``: the fine-tuned model as ``model.onnx`` and ``model.int8.onnx``, checked against PyTorch.

Run: ``python -m mobitune.pipeline.stages.export`` (or ``dvc repro export``).
"""

from typing import Any

from mobitune.export.onnx_model import CALIBRATION_IMAGES, export_model
from mobitune.params import load_params
from mobitune.pipeline import paths
from mobitune.pipeline.stages import run_stage
from mobitune.storage.records import write_json
from mobitune.training.checkpoints import load_trained_model
from mobitune.training.data import load_dataset


def export_metrics(report: dict[str, Any]) -> dict[str, Any]:
    """What the export stage's metrics hold of its report: each file's test accuracy and agreement with PyTorch,
    and how much smaller the int8 file is. Sizes, latencies (which vary run to run) and provenance are details."""
    scores = ("test_accuracy", "agreement_with_pytorch")
    files = {name: {key: report[name][key] for key in scores} for name in ("fp32", "int8")}
    return {**files, "int8_smaller": report["int8_smaller"]}


def main() -> None:
    params = load_params()
    dataset = load_dataset(paths.PREPARED, train_limit=CALIBRATION_IMAGES, test_limit=params.data.test_limit)
    model, _ = load_trained_model(paths.FINETUNE_CHECKPOINT, params, len(dataset.classes))
    report = export_model(
        model, params.model.image_size, dataset, paths.ONNX_MODEL, paths.INT8_MODEL, params.augment.test_flip
    )
    write_json(paths.EXPORT_METRICS, export_metrics(report))
    write_json(paths.EXPORT_DETAILS, report)
    fp32, int8 = report["fp32"], report["int8"]
    print(
        f"model.onnx: agrees with PyTorch on {fp32['agreement_with_pytorch']:.2%} of the test images; "
        f"model.int8.onnx: test accuracy {int8['test_accuracy']:.2%} (fp32 {fp32['test_accuracy']:.2%}), "
        f"{report['int8_smaller']:.1f}x smaller, {report['int8_speedup_batch_1']:.2f}x the speed at batch 1"
    )


if __name__ == "__main__":
    run_stage(main)
