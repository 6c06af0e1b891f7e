"""DVC stage entry points: load params, call one library function, write the declared outs."""

from __future__ import annotations

import signal
import sys
from collections.abc import Callable
from typing import Any

from mobitune.errors import MobituneError


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
