"""Where the DVC stages read and write: the one copy of the paths ``dvc.yaml`` declares.

``tests/test_dvc_pipeline.py`` checks that ``dvc.yaml`` names exactly these.
"""

from pathlib import Path

DATA = Path("data")
PREPARED = DATA / "cifar10"
WARMUP_CHECKPOINT = DATA / "models" / "warmup.pt"
FINETUNE_CHECKPOINT = DATA / "models" / "finetune.pt"
WARMUP_METRICS = DATA / "metrics" / "warmup.json"
FINETUNE_METRICS = DATA / "metrics" / "finetune.json"
EVALUATE_METRICS = DATA / "metrics" / "evaluate.json"
WARMUP_HISTORY = DATA / "plots" / "warmup.csv"
FINETUNE_HISTORY = DATA / "plots" / "finetune.csv"
PREDICTIONS = DATA / "plots" / "predictions.csv"
