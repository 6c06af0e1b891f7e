"""The local backend: trials as Prefect tasks of the sweep's own process, each on the next free device slot.

Torch is imported only where it must be: to count GPUs, and by a trial that trains. A sweep on a machine with
no GPU whose trials are all known (cached) never imports it (2-3 s of its start on a CPU).
"""

from __future__ import annotations

import queue
import sys
from pathlib import Path
from typing import Any

from mobitune.params import Params
from mobitune.sweep.plan import warmup_key
from mobitune.sweep.trial_files import TrialRequest

# the device nodes through which torch reaches a GPU on Linux: NVIDIA's driver, WSL's GPU, AMD's ROCm
GPU_DEVICE_NODES = ("/dev/nvidiactl", "/dev/dxg", "/dev/kfd")


def no_gpu_possible() -> bool:
    """True where torch cannot see a GPU, known without importing it: Linux with none of the GPU device nodes."""
    return sys.platform.startswith("linux") and not any(Path(node).exists() for node in GPU_DEVICE_NODES)


def local_devices(params: Params, parallel: int | None, trials: list[Params] | None = None) -> list[str]:
    """One slot per GPU (or ``parallel`` slots, several to a GPU when there are more than GPUs); CPU-only
    machines default to one at a time. Raises a clear error for a device this machine does not have, and for
    more trials on a GPU than its memory holds (each as big as the largest of ``trials``, default ``params``)."""
    if params.device == "cpu" or (params.device == "auto" and no_gpu_possible()):
        return ["cpu"] * (parallel or 1)
    import torch

    from mobitune.training.batches import resolve_device
    from mobitune.training.memory import check_packing

    device = resolve_device(params.device)
    if device.type == "cuda" and device.index is None:
        gpus = [f"cuda:{i}" for i in range(torch.cuda.device_count())]
        devices = [gpus[i % len(gpus)] for i in range(parallel or len(gpus))]
    else:
        devices = [str(device)] * (parallel or 1)
    check_packing(trials or [params], devices)
    return devices


class LocalRunner:
    """Trials as Prefect tasks of this process, each on the next free device slot.

    The run graph shows what waits for what: each trial's task run is drawn from its shared warmup's (``wait_for``,
    which lets it run whatever the warmup's end: a trial tries a failed warmup itself), and from nothing else.
    """

    poll_seconds = 0.2

    def __init__(self, devices: list[str]) -> None:
        self.devices: queue.Queue[str] = queue.Queue()
        for device in devices:
            self.devices.put(device)
        self.warmups: dict[str, Any] = {}  # a shared warmup's key -> its task's future

    def start(self, request: TrialRequest) -> Any:
        from prefect.utilities.annotations import allow_failure

        from mobitune.orchestration.trial_flow import trial_task  # Prefect: not for checks and dry runs (sweep_start)

        key = warmup_key(request.params)
        upstream = [] if request.warmup_only or key not in self.warmups else [allow_failure(self.warmups[key])]
        task = trial_task.with_options(task_run_name=request.trial_id)
        future = task.submit(request, self.devices, wait_for=upstream)
        if request.warmup_only:
            self.warmups[key] = future
        return future

    def outcome(self, future: Any) -> str | None:
        """None while running; else "" when it completed, or why it did not."""
        state = future.state
        if not state.is_final():
            return None
        return "" if state.is_completed() else f"task {state.name}: {state.message}"
