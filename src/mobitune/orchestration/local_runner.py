"""The local backend: trials as Prefect tasks of the sweep's own process, each on the next free device slot.

Apart from :mod:`mobitune.orchestration.sweep_flow` because it imports torch, which a sweep on the workers
backend never needs.
"""

from __future__ import annotations

import queue
from typing import Any

import torch

from mobitune.orchestration.trial_flow import trial_task
from mobitune.params import Params
from mobitune.sweep.trial_files import TrialRequest
from mobitune.training.batches import resolve_device


def local_devices(params: Params, parallel: int | None) -> list[str]:
    """One slot per GPU (or ``parallel`` slots); CPU-only machines default to one at a time."""
    device = resolve_device(params.device)
    if device.type == "cuda" and device.index is None:
        gpus = [f"cuda:{i}" for i in range(torch.cuda.device_count())]
        return [gpus[i % len(gpus)] for i in range(parallel or len(gpus))]
    return [str(device)] * (parallel or 1)


class LocalRunner:
    """Trials as Prefect tasks of this process, each on the next free device slot."""

    poll_seconds = 0.2

    def __init__(self, devices: list[str]) -> None:
        self.devices: queue.Queue[str] = queue.Queue()
        for device in devices:
            self.devices.put(device)

    def start(self, request: TrialRequest) -> Any:
        return trial_task.with_options(task_run_name=request.trial_id).submit(request, self.devices)

    def outcome(self, future: Any) -> str | None:
        """None while running; else "" when it completed, or why it did not."""
        state = future.state
        if not state.is_final():
            return None
        return "" if state.is_completed() else f"task {state.name}: {state.message}"
