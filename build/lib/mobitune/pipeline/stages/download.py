"""DVC stage ``download``: fetch, verify and decode the data set once.

Run: ``python -m mobitune.pipeline.stages.download`` (or ``dvc repro download``).
"""

from mobitune.params import load_params
from mobitune.pipeline import paths
from mobitune.pipeline.stages import run_stage
from mobitune.training.data import prepare


def main() -> None:
    params = load_params()
    meta = prepare(params.data.source, params.data.md5, paths.PREPARED)
    print(
        f"{meta['format']}: {meta['train_count']} train / {meta['test_count']} test images, "
        f"{len(meta['classes'])} classes -> {paths.PREPARED}"
    )


if __name__ == "__main__":
    run_stage(main)
