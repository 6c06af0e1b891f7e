"""DVC stage entry points: load params, call one library function, write the declared outs."""

from __future__ import annotations

import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mobitune.errors import MobituneError
from mobitune.storage.records import HISTORY_COLUMNS, git_revision, write_csv, write_json
from mobitune.training.loop import FitResult


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def run_stage(main: Callable[[], None]) -> None:
    """Run a stage; expected failures print one clear line instead of a traceback.

    SIGTERM is turned into KeyboardInterrupt so an interrupted stage unwinds
    through the same cleanup as Ctrl-C (every output is written atomically).
    """
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        main()
    except MobituneError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted: no output of this stage was completed; `dvc repro` will redo it", file=sys.stderr)
        sys.exit(130)


def final_metrics(result: FitResult) -> dict[str, Any]:
    last = result.history[-1] if result.history else {}
    keys = ("train_loss", "train_accuracy", "test_loss", "test_accuracy")
    return {
        **{key: last.get(key) for key in keys},
        "epochs": len(result.history),
        "status": result.status,
        "git_rev": git_revision(),
    }


def write_phase_outputs(result: FitResult, history_path: Path, metrics_path: Path) -> None:
    write_csv(history_path, result.history, HISTORY_COLUMNS)
    write_json(metrics_path, final_metrics(result))
