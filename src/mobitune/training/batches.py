"""Device-resident batches: the whole split lives on the device as uint8.

Each epoch is a ``randperm`` over device indices; crop, flip, normalisation and
upsampling run on whole batches on the device. There are no DataLoader
workers and no per-sample Python on the hot path (the airbench approach).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from mobitune.errors import MobituneError
from mobitune.params import AugmentParams, Params
from mobitune.provenance import provenance
from mobitune.training.data import Dataset, Split

# torchvision's ImageNet statistics, in uint8 units (the pretrained features expect them)
IMAGENET_MEAN = (0.485 * 255, 0.456 * 255, 0.406 * 255)
IMAGENET_STD = (0.229 * 255, 0.224 * 255, 0.225 * 255)
EVAL_BATCH_SIZE = 1000


def resolve_device(spec: str) -> torch.device:
    """``auto`` | ``cpu`` | ``cuda`` | ``cuda:N`` → a usable device, or a clear error."""
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if spec == "cpu":
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise MobituneError(f"device: {spec!r} requested but CUDA is not available here; use device=auto or cpu")
    device = torch.device(spec)
    if device.index is not None and device.index >= torch.cuda.device_count():
        raise MobituneError(
            f"device: {spec!r} does not exist; this machine has {torch.cuda.device_count()} CUDA device(s)"
        )
    return device


def use_deterministic_kernels(deterministic: bool) -> None:
    """``deterministic``: torch refuses kernels whose results vary from run to run (CUDA's atomics in scatter and
    some convolution backwards, cuBLAS's split reductions) and picks deterministic ones. CPU kernels already
    repeat for one thread count; what it costs on a GPU: README, "Runs that repeat"."""
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # read when cuBLAS starts: before any matmul
    torch.use_deterministic_algorithms(deterministic)
    torch.backends.cudnn.benchmark = False  # autotuning may pick another algorithm each run


def device_provenance(device: torch.device, seed: int) -> dict[str, Any]:
    """:func:`mobitune.provenance.provenance` of a run on ``device``: its name, on a GPU its index on the machine,
    and the CPU threads torch uses (another thread count may change the last digits of CPU results)."""
    if device.type != "cuda":
        return provenance(device=device.type, threads=torch.get_num_threads(), seed=seed)
    index = torch.cuda.current_device() if device.index is None else device.index
    name = torch.cuda.get_device_name(index)
    return provenance(device=name, device_index=index, threads=torch.get_num_threads(), seed=seed)


@dataclass
class DeviceSplit:
    images: torch.Tensor  # (N, 3, H, W) uint8 on the device
    labels: torch.Tensor  # (N,) int64 on the device

    @classmethod
    def from_split(cls, split: Split, device: torch.device) -> DeviceSplit:
        return cls(torch.from_numpy(split.images).to(device), torch.from_numpy(split.labels).to(device))

    def __len__(self) -> int:
        return len(self.labels)

    def batches(
        self, batch_size: int, generator: torch.Generator | None = None
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """uint8 image and label batches; shuffled when a generator is given."""
        n = len(self)
        if generator is None:
            for start in range(0, n, batch_size):
                yield self.images[start : start + batch_size], self.labels[start : start + batch_size]
            return
        order = torch.randperm(n, device=self.images.device, generator=generator)
        for start in range(0, n, batch_size):
            index = order[start : start + batch_size]
            yield self.images[index], self.labels[index]


class BatchTransform:
    """uint8 NCHW batch → normalised float batch, augmented when training."""

    def __init__(self, device: torch.device, image_size: int, augment: AugmentParams | None = None) -> None:
        self.image_size = image_size
        self.augment = augment
        self.channels_last = True  # faster on CUDA and on the CPU too (benchmarks/RESULTS.md)
        self.mean = torch.tensor(IMAGENET_MEAN, device=device).view(1, 3, 1, 1)
        self.inv_std = (1.0 / torch.tensor(IMAGENET_STD, device=device)).view(1, 3, 1, 1)

    @property
    def augments(self) -> bool:
        return self.augment is not None and bool(self.augment.flip or self.augment.crop_padding)

    def __call__(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        if self.augments and generator is not None:
            images = augment_batch(images, self.augment, generator)
        x = (images.float() - self.mean) * self.inv_std
        if x.shape[-1] != self.image_size or x.shape[-2] != self.image_size:
            x = F.interpolate(x, size=(self.image_size, self.image_size), mode="bilinear", align_corners=False)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x

    def mirrored(self, images: torch.Tensor) -> torch.Tensor:
        """The model input of the batch's mirror images (test-time flips)."""
        return self(images.flip(3))


def augment_batch(images: torch.Tensor, augment: AugmentParams, generator: torch.Generator) -> torch.Tensor:
    """Random crop (zero padding) and horizontal flip on a whole uint8 batch."""
    n, _, h, w = images.shape
    device = images.device
    if augment.crop_padding:
        pad = augment.crop_padding
        padded = F.pad(images, (pad, pad, pad, pad))
        dy = torch.randint(0, 2 * pad + 1, (n, 1), device=device, generator=generator)
        dx = torch.randint(0, 2 * pad + 1, (n, 1), device=device, generator=generator)
        rows = (dy + torch.arange(h, device=device)).view(n, 1, h, 1)
        cols = (dx + torch.arange(w, device=device)).view(n, 1, 1, w)
        batch = torch.arange(n, device=device).view(n, 1, 1, 1)
        channel = torch.arange(images.shape[1], device=device).view(1, -1, 1, 1)
        images = padded[batch, channel, rows, cols]
    if augment.flip:
        flip = torch.rand(n, device=device, generator=generator) < 0.5
        images = torch.where(flip.view(n, 1, 1, 1), images.flip(3), images)
    return images


@dataclass
class DeviceData:
    """What every phase needs: data on the device, its transform, the device."""

    dataset: Dataset
    device: torch.device
    train: DeviceSplit
    test: DeviceSplit
    train_transform: Callable[..., torch.Tensor]  # (uint8 batch, generator) -> model input
    test_transform: Callable[..., torch.Tensor]
    # augment.test_flip: (test batch) -> model input of its mirror images, whose logits are averaged in
    test_mirror: Callable[..., torch.Tensor] | None = None

    @classmethod
    def create(cls, params: Params, dataset: Dataset, device: torch.device) -> DeviceData:
        use_deterministic_kernels(params.deterministic)
        size = params.model.image_size
        test_transform = BatchTransform(device, size)
        return cls(
            dataset=dataset,
            device=device,
            train=DeviceSplit.from_split(dataset.train, device),
            test=DeviceSplit.from_split(dataset.test, device),
            train_transform=BatchTransform(device, size, params.augment),
            test_transform=test_transform,
            test_mirror=test_transform.mirrored if params.augment.test_flip else None,
        )

    def provenance(self, seed: int) -> dict[str, Any]:
        return device_provenance(self.device, seed)

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        if self.device.type == "cuda":
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()
