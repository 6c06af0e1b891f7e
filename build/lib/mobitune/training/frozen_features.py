"""Frozen features computed once: a phase whose backbone is all frozen trains only the head, on cached features."""

from __future__ import annotations

import torch
from tqdm import tqdm

from mobitune.training.batches import EVAL_BATCH_SIZE, DeviceData, DeviceSplit
from mobitune.training.model import MobileNetClassifier


def _first_view(features: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    return features[:, 0]


def _mirror_view(features: torch.Tensor) -> torch.Tensor:
    return features[:, 1]


def _random_view(features: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Each image's features or its mirror's, drawn as :func:`~mobitune.training.batches.augment_batch` flips."""
    if features.shape[1] == 1 or generator is None:
        return features[:, 0]
    flip = torch.rand(len(features), device=features.device, generator=generator) < 0.5
    return torch.where(flip.view(-1, 1), features[:, 1], features[:, 0])


@torch.no_grad()
def frozen_feature_data(model: MobileNetClassifier, device_data: DeviceData) -> DeviceData | None:
    """For a phase with every feature layer frozen and no augmentation but flips: features once.

    Such a model maps each image to the same pooled 1280-d feature every
    epoch, so one inference pass replaces ``epochs`` passes through the
    backbone and each epoch trains only the head. With flips, the pass also
    keeps each image's mirror features (two passes instead of ``epochs``),
    and each batch draws between the two as the image flip would. Returns
    the device_data of features (for ``model.classifier``), or None when the
    phase does not qualify (random crops: every epoch sees new pixels).
    """
    augment = getattr(device_data.train_transform, "augment", None)
    if model.frozen_prefix < len(model.features) or (augment is not None and augment.crop_padding):
        return None
    model.eval()

    def features(split: DeviceSplit, name: str, mirrored: bool) -> DeviceSplit:
        views = [device_data.test_transform] + ([device_data.test_transform.mirrored] if mirrored else [])
        chunks = []
        with tqdm(total=len(split), desc=f"frozen features, {name} (once)", unit="img", disable=None) as bar:
            for images, _ in split.batches(EVAL_BATCH_SIZE):
                with device_data.autocast():
                    pooled = [model.pool(model.features(view(images))).flatten(1).float() for view in views]
                chunks.append(torch.stack(pooled, 1))
                bar.update(len(images))
        return DeviceSplit(torch.cat(chunks), split.labels)

    flips = augment is not None and augment.flip
    test_mirror = device_data.test_mirror is not None
    train = features(device_data.train, "train", flips)
    test = features(device_data.test, "test", test_mirror)
    mirror = _mirror_view if test_mirror else None
    return DeviceData(device_data.dataset, device_data.device, train, test, _random_view, _first_view, mirror)
