"""What a trial used of its GPU: the peak memory torch allocated beside the estimate it was admitted on, and the
device's utilisation and memory as NVML sees them, sampled by a light thread. On a CPU there is nothing to
measure, and the figures are absent (not zero): a CPU trial's cost is its device seconds alone.
"""

from __future__ import annotations

import threading
from types import TracebackType
from typing import Any

import torch

from mobitune.params import Params
from mobitune.training.data import Dataset
from mobitune.training.memory import trial_memory_bytes

SAMPLE_SECONDS = 1.0  # NVML is read once a second: a few microseconds a read, nothing on the training's path


class DeviceUse:
    """``with DeviceUse(params, device, dataset) as use: train()``, then ``use.metrics()``."""

    def __init__(self, params: Params, device: torch.device, dataset: Dataset) -> None:
        self.device = device
        self.cuda = device.type == "cuda"
        images = len(dataset.train.labels) + len(dataset.test.labels)
        self.estimate = (
            trial_memory_bytes(params, len(dataset.classes), images, dataset.train.images.shape[1:]) if self.cuda else 0
        )
        self.samples: list[tuple[float, float]] = []  # (utilisation %, memory used in bytes)
        self.stopped = threading.Event()
        self.sampler: threading.Thread | None = None
        self.nvml_problem: str | None = None

    def __enter__(self) -> DeviceUse:
        if self.cuda:
            torch.cuda.reset_peak_memory_stats(self.device)
            self.sampler = threading.Thread(target=self._sample, name="nvml-sampler", daemon=True)
            self.sampler.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None, tb: TracebackType | None) -> None:
        self.stopped.set()
        if self.sampler is not None:
            self.sampler.join(timeout=5)

    def _sample(self) -> None:
        try:
            import pynvml  # nvidia-ml-py: imports anywhere, works where a driver is

            pynvml.nvmlInit()
            handle = pynvml.nvmlDeviceGetHandleByUUID(f"GPU-{torch.cuda.get_device_properties(self.device).uuid}")
            while not self.stopped.wait(SAMPLE_SECONDS):
                rates = pynvml.nvmlDeviceGetUtilizationRates(handle)
                self.samples.append((float(rates.gpu), float(pynvml.nvmlDeviceGetMemoryInfo(handle).used)))
            pynvml.nvmlShutdown()
        except Exception as exc:  # no NVML here: the utilisation is absent, and the trial says why
            self.nvml_problem = f"{type(exc).__name__}: {exc}"

    def metrics(self) -> dict[str, Any]:
        """``peak_memory_bytes`` and ``memory_estimate_bytes`` on a GPU, the mean ``gpu_utilization_percent`` and
        ``gpu_memory_used_bytes`` where NVML answered; nothing on a CPU."""
        if not self.cuda:
            return {}
        used: dict[str, Any] = {
            "peak_memory_bytes": torch.cuda.max_memory_allocated(self.device),
            "memory_estimate_bytes": self.estimate,
        }
        if self.samples:
            used["gpu_utilization_percent"] = sum(s[0] for s in self.samples) / len(self.samples)
            used["gpu_memory_used_bytes"] = sum(s[1] for s in self.samples) / len(self.samples)
        elif self.nvml_problem:
            print(f"GPU utilisation not recorded: NVML {self.nvml_problem}")
        return used
