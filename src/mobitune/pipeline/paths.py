"""Where the DVC stages read and write: the one copy of the paths ``dvc.yaml`` declares.

``tests/test_dvc_pipeline.py`` checks that ``dvc.yaml`` names exactly these.
"""

from pathlib import Path

DATA = Path("data")
PREPARED = DATA / "cifar10"
WARMUP_CHECKPOINT = DATA / "models" / "warmup.pt"
FINETUNE_CHECKPOINT = DATA / "models" / "finetune.pt"
ONNX_MODEL = DATA / "models" / "model.onnx"
INT8_MODEL = DATA / "models" / "model.int8.onnx"
WARMUP_METRICS = DATA / "metrics" / "warmup.json"
FINETUNE_METRICS = DATA / "metrics" / "finetune.json"
EVALUATE_METRICS = DATA / "metrics" / "evaluate.json"
EXPORT_METRICS = DATA / "metrics" / "export.json"
# what DVC does not show as metrics (`dvc exp show` would give it a column each), committed beside them: each
# stage's provenance and cost, the per-class accuracies, the exported files' sizes and latencies
WARMUP_DETAILS = DATA / "metrics" / "details" / "warmup.json"
FINETUNE_DETAILS = DATA / "metrics" / "details" / "finetune.json"
EVALUATE_DETAILS = DATA / "metrics" / "details" / "evaluate.json"
EXPORT_DETAILS = DATA / "metrics" / "details" / "export.json"
WARMUP_HISTORY = DATA / "plots" / "warmup.csv"
FINETUNE_HISTORY = DATA / "plots" / "finetune.csv"
PREDICTIONS = DATA / "plots" / "predictions.csv"
