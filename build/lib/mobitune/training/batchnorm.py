"""BatchNorm statistics re-estimated on the training images at the training resolution (AdaBN).

The pretrained running statistics were measured on ImageNet at 224 px. At
``model.image_size`` 64 the activations differ, so the first finetune step that
switches the unfrozen blocks to batch statistics changes every feature the
warmed-up head learned on (``docs/fidelity.md`` §2: 69.8% → 19.6% before any
weight moves). Re-estimating the statistics before warmup (Li et al. 2016,
"Revisiting Batch Normalization for Practical Domain Adaptation") makes the
stored statistics those the finetune's batches will show.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from mobitune.training.batches import DeviceSplit

RECALIBRATION_IMAGES = 10_000  # the first training images; more moves the estimates by less than their noise
RECALIBRATION_BATCH = 500


@torch.no_grad()
def recalibrate_batchnorm(
    features: nn.Module, train: DeviceSplit, transform: Callable[[torch.Tensor], torch.Tensor]
) -> None:
    """Replace every BatchNorm layer's running mean and variance in ``features`` with their average over
    batches of the first :data:`RECALIBRATION_IMAGES` training images, as ``transform`` (the test transform: no
    augmentation) feeds them; weights stay as they are, and the module is left in evaluation mode."""
    norms = [module for module in features.modules() if isinstance(module, nn.BatchNorm2d)]
    momenta = [norm.momentum for norm in norms]
    features.eval()
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None  # a cumulative average over the batches
        norm.train()
    subset = DeviceSplit(train.images[:RECALIBRATION_IMAGES], train.labels[:RECALIBRATION_IMAGES])
    for images, _ in subset.batches(RECALIBRATION_BATCH):
        features(transform(images))
    for norm, momentum in zip(norms, momenta, strict=True):
        norm.momentum = momentum
    features.eval()
