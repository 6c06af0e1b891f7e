"""Test accuracy of a sweep's finetuned trials with and without test-time flips (``augment.test_flip``), from the
checkpoints the local backend keeps: the effect of the flips alone, on the same weights.

``python benchmarks/flip_effect.py artifacts/sweeps/<sweep_id> [--root artifacts]`` prints a JSON line per
trial. A trial that reused a cached result has no checkpoint of its own and is skipped.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from mobitune.params import params_from_dict
from mobitune.sweep.trial import ensure_data
from mobitune.training.batches import DeviceData, resolve_device
from mobitune.training.data import load_dataset
from mobitune.training.evaluate import evaluate_checkpoint


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("sweep_dir", type=Path)
    parser.add_argument("--root", type=Path, default=None, help="the sweep's local root (default: two folders up)")
    args = parser.parse_args()
    root = args.root or args.sweep_dir.resolve().parents[1]
    for trial in sorted((args.sweep_dir / "trials").iterdir()):
        checkpoint = root / "checkpoints" / args.sweep_dir.name / f"{trial.name}.pt"
        if not checkpoint.exists():
            continue
        params = params_from_dict(json.loads((trial / "params.json").read_text())["params"])
        dataset = load_dataset(ensure_data(params.data, root), params.data.train_limit, params.data.test_limit)
        row: dict[str, object] = {"trial_id": trial.name}
        for flips in (False, True):
            flipped = params.override([f"augment.test_flip={str(flips).lower()}"])
            device_data = DeviceData.create(flipped, dataset, resolve_device(flipped.device))
            row[f"test_accuracy_test_flip_{str(flips).lower()}"] = evaluate_checkpoint(
                flipped, device_data, checkpoint
            ).test_accuracy
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
