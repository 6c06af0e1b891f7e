"""What each phase trains and how, from the params: the one mapping of ``params.yaml`` to a training phase (the
loop trains it; the memory estimate sizes it)."""

from __future__ import annotations

from dataclasses import dataclass

from mobitune.params import OptimizationParams, Params


@dataclass(frozen=True, kw_only=True)
class Phase:
    name: str
    epochs: int
    lr: float
    batch_size: int
    trainable_layers: int  # inverted-residual blocks unfrozen (params' ``trainable_layers``; 0: features frozen)
    unfreeze_from: str
    options: OptimizationParams = OptimizationParams()
    frozen_batchnorm: bool = False
    last_conv: bool = False  # features[18] trains too
    compile: str = "none"  # torch.compile mode of the train and eval steps (params' ``compile``)


def warmup_phase(params: Params) -> Phase:
    """Phase 1: the head alone on frozen features."""
    return Phase(
        name="warmup",
        epochs=params.warmup.epochs,
        lr=params.warmup.lr,
        batch_size=params.warmup.batch_size,
        trainable_layers=0,
        unfreeze_from=params.model.unfreeze_from,
        options=params.warmup,
        compile=params.compile,
    )


def finetune_phase(params: Params) -> Phase:
    """Phase 2: the head and ``trainable_layers`` blocks (and the last convolution, with ``finetune.last_conv``)."""
    return Phase(
        name="finetune",
        epochs=params.finetune.epochs,
        lr=params.lr,
        batch_size=params.batch_size,
        trainable_layers=params.trainable_layers,
        unfreeze_from=params.model.unfreeze_from,
        options=params.finetune,
        frozen_batchnorm=params.finetune.batchnorm == "frozen",
        last_conv=params.finetune.last_conv == "train",
        compile=params.compile,
    )
