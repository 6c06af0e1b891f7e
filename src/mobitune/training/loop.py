"""One training loop for warmup and finetune: per-epoch history, checkpoints, divergence.

The two phases differ only in which blocks are trainable and in their
hyperparameters (:class:`Phase`). Loss and accuracy are accumulated on
the device and read once per epoch; the only other host sync is a NaN/inf
test of the running loss every ``DIVERGENCE_CHECK_EVERY`` steps.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from tqdm import tqdm

from mobitune.params import OptimizationParams, Params
from mobitune.redaction import redact_data
from mobitune.storage.records import FLIP_METRICS, Status
from mobitune.training.batches import EVAL_BATCH_SIZE, DeviceData
from mobitune.training.batchnorm import recalibrate_batchnorm
from mobitune.training.checkpoints import load_trained_model, resume_state, save_checkpoint
from mobitune.training.collapse import collapse_reason, warmup_at_chance
from mobitune.training.frozen_features import frozen_feature_data
from mobitune.training.model import MobileNetClassifier, build_model, set_trainable_layers
from mobitune.training.phases import Phase, finetune_phase, warmup_phase

DIVERGENCE_CHECK_EVERY = 25  # steps between host syncs that test the running loss for NaN/inf


def lr_schedule(
    optimizer: torch.optim.Optimizer, options: OptimizationParams, total_steps: int
) -> torch.optim.lr_scheduler.LRScheduler:
    """The phase's learning rate over its ``total_steps`` optimiser steps, from ``torch.optim.lr_scheduler``.

    ``constant`` and ``cosine`` first ramp linearly over ``warmup_steps`` (``LinearLR``; the cosine then falls to
    zero over the remaining steps). ``onecycle`` is ``OneCycleLR`` without cycling momentum: up from 1/25 of the
    peak along a half cosine for ``warmup_steps`` steps (default: 30% of the phase), then down to 1/25e4. It is
    given one step more than the phase has, so that the last step is not yet at the floor, the rates that the
    recorded runs trained with (``tests/test_model_train.py`` compares every step with their formula).
    """
    schedulers = torch.optim.lr_scheduler
    if options.schedule == "onecycle":
        rise = options.warmup_steps or max(1, round(0.3 * total_steps))
        steps = max(total_steps, rise) + 1
        return schedulers.OneCycleLR(
            optimizer,
            max_lr=[group["lr"] for group in optimizer.param_groups],
            total_steps=steps,
            pct_start=(rise + 1) / steps,
            cycle_momentum=False,
        )
    ramp_steps = max(1, options.warmup_steps)
    ramp = schedulers.LinearLR(optimizer, start_factor=1 / ramp_steps, total_iters=ramp_steps - 1)
    if options.schedule == "constant":
        return ramp
    cosine = schedulers.CosineAnnealingLR(optimizer, T_max=max(1, total_steps - options.warmup_steps))
    if not options.warmup_steps:
        return cosine
    return schedulers.SequentialLR(optimizer, [ramp, cosine], milestones=[options.warmup_steps])


def make_optimizer(
    model: torch.nn.Module, phase: Phase, steps_per_epoch: int
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
    """AdamW over the trainable parameters (decay on weights, never on biases or norms) and its schedule.

    With ``weight_decay`` 0 and a constant schedule this is the report's Adam.
    """
    trainable = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in trainable if p.ndim > 1], "weight_decay": phase.options.weight_decay},
        {"params": [p for p in trainable if p.ndim <= 1], "weight_decay": 0.0},
    ]
    optimizer = torch.optim.AdamW([g for g in groups if g["params"]], lr=phase.lr)
    return optimizer, lr_schedule(optimizer, phase.options, phase.epochs * steps_per_epoch)


@dataclass
class FitResult:
    history: list[dict[str, Any]]
    status: Status
    reason: str | None = None  # why a run diverged: its loss went NaN/inf, or it collapsed to chance


def compiled(module: torch.nn.Module, mode: str) -> torch.nn.Module:
    """``module`` as ``torch.compile`` captures it (``mode`` "default", or "reduce-overhead": CUDA graphs), or
    as it is ("none"). Shapes are static (the last, smaller batch of an epoch gets a graph of its own), since a
    CUDA graph replays one shape; the module's parameters stay shared, so checkpoints are the eager model's."""
    if mode == "none":
        return module
    return torch.compile(module, mode=mode, dynamic=False)


def train_one_epoch(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    device_data: DeviceData,
    batch_size: int,
    generator: torch.Generator,
    desc: str,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
    label_smoothing: float = 0.0,
) -> tuple[float, float]:
    """Returns mean train loss and accuracy; the loss is NaN/inf if training diverged.

    The loss reported is plain cross-entropy, comparable across runs and with
    the test loss, even when the loss optimised is label-smoothed.
    """
    model.train()
    loss_sum = torch.zeros((), device=device_data.device)
    correct = torch.zeros((), device=device_data.device, dtype=torch.int64)
    seen = 0
    steps = math.ceil(len(device_data.train) / batch_size)
    with tqdm(total=steps, desc=desc, unit="batch", disable=None, leave=False) as bar:
        for step, (images, labels) in enumerate(device_data.train.batches(batch_size, generator), start=1):
            x = device_data.train_transform(images, generator)
            with device_data.autocast():
                logits = model(x)
                loss = F.cross_entropy(logits, labels, label_smoothing=label_smoothing)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if scheduler is not None:
                scheduler.step()
            if label_smoothing:
                loss = F.cross_entropy(logits.detach().float(), labels)
            loss_sum += loss.detach() * len(labels)
            correct += (logits.argmax(1) == labels).sum()
            seen += len(labels)
            bar.update()
            if step % DIVERGENCE_CHECK_EVERY == 0 and not torch.isfinite(loss_sum):  # host sync
                break
    return loss_sum.item() / seen, correct.item() / seen


@dataclass(frozen=True)
class TestScores:
    """A model's test loss, accuracy and predictions on single images; with ``augment.test_flip`` also those of
    the mean logits of each image and its mirror (``flips``), from the same pass: a run records both views."""

    loss: float
    accuracy: float
    predicted: torch.Tensor  # the predicted class of every test image, on the host
    flips: TestScores | None = None

    def row(self) -> dict[str, float]:
        """The history/metrics columns: ``test_loss``, ``test_accuracy`` (single view), and with flips
        ``test_loss_flips``, ``test_accuracy_flips``."""
        row = {"test_loss": self.loss, "test_accuracy": self.accuracy}
        if self.flips is not None:
            row.update(test_loss_flips=self.flips.loss, test_accuracy_flips=self.flips.accuracy)
        return row


def not_evaluated(device_data: DeviceData) -> dict[str, float]:
    """The test columns of an epoch that diverged: NaN, with the flip columns where the run has them."""
    flips = FLIP_METRICS if device_data.test_mirror is not None else ()
    return dict.fromkeys(("test_loss", "test_accuracy", *flips), math.nan)


@torch.inference_mode()
def evaluate(model: torch.nn.Module, device_data: DeviceData, batch_size: int = EVAL_BATCH_SIZE) -> TestScores:
    """Test loss, accuracy and predictions of single images, and with ``augment.test_flip`` of the mean logits of
    each image and its mirror too (one pass: the mirror's logits are added to the image's)."""
    model.eval()
    mirror = device_data.test_mirror
    loss_sums: dict[str, torch.Tensor] = {}
    predictions: dict[str, list[torch.Tensor]] = {}
    for images, labels in device_data.test.batches(batch_size):
        with device_data.autocast():
            views = {"single": model(device_data.test_transform(images)).float()}
            if mirror is not None:
                views["flips"] = (views["single"] + model(mirror(images)).float()) / 2
        for view, logits in views.items():
            loss = F.cross_entropy(logits, labels, reduction="sum")
            loss_sums[view] = loss_sums.get(view, 0) + loss
            predictions.setdefault(view, []).append(logits.argmax(1))

    def scores(view: str) -> TestScores:
        predicted = torch.cat(predictions[view])
        accuracy = (predicted == device_data.test.labels).float().mean().item()
        return TestScores(loss_sums[view].item() / len(device_data.test), accuracy, predicted.cpu())

    single = scores("single")
    return replace(single, flips=scores("flips")) if mirror is not None else single


@dataclass(frozen=True, kw_only=True)
class FitRun:
    """One run of a phase by :func:`fit`: its seed, where its checkpoint goes, and what ends it early.

    ``record`` (params, classes) is stored in every checkpoint so a resumed or evaluated run cannot silently change
    its configuration; ``resume`` is the checkpoint it continues. ``on_checkpoint`` gets each epoch's history row
    once its checkpoint is written. ``until`` stops after that many epochs (an early-stopping rung); the schedule is
    still the whole phase's, so a later resume continues it exactly. Past ``deadline`` (``time.time()``, a sweep's
    time budget) it stops after the epoch it is in, ``stopped`` and resumable alike. ``warmup_accuracy`` (the
    finetune's): an epoch that falls to chance from above it ends the run as diverged
    (:mod:`mobitune.training.collapse`). ``step_offset``: the history steps of the phases before this one.
    """

    seed: int
    checkpoint_path: Path
    record: dict[str, Any] = field(default_factory=dict)
    step_offset: int = 0
    resume: dict[str, Any] | None = None
    on_checkpoint: Callable[[dict[str, Any]], None] | None = None
    cache_features: bool = True
    until: int | None = None
    deadline: float | None = None
    warmup_accuracy: float | None = None


def fit(model: MobileNetClassifier, phase: Phase, device_data: DeviceData, run: FitRun) -> FitResult:
    """Train ``phase.epochs`` epochs as ``run`` says, checkpointing after each."""
    set_trainable_layers(model, phase.trainable_layers, phase.unfreeze_from, phase.last_conv)
    model.frozen_batchnorm = phase.frozen_batchnorm
    model.to(device_data.device, memory_format=torch.channels_last)
    runner: torch.nn.Module = model
    cached = frozen_feature_data(model, device_data) if run.cache_features and phase.epochs else None
    if cached is not None:
        runner, device_data = model.classifier, cached
    runner = compiled(runner, phase.compile)
    optimizer, scheduler = make_optimizer(model, phase, math.ceil(len(device_data.train) / phase.batch_size))
    history: list[dict[str, Any]] = []
    if run.resume is not None:
        model.load_state_dict(run.resume["model"])
        optimizer.load_state_dict(run.resume["optimizer"])
        scheduler.load_state_dict(run.resume["scheduler"])
        history = list(run.resume["history"])
    generator = torch.Generator(device=device_data.device)
    status, reason = Status.OK, None

    def checkpoint() -> None:
        state = {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()}
        save_checkpoint(
            run.checkpoint_path,
            {**run.record, **state, "phase": phase.name, "history": history, "status": status.value, "reason": reason},
        )

    first_epoch = len(history) + 1
    last_epoch = phase.epochs if run.until is None else min(run.until, phase.epochs)
    for epoch in range(first_epoch, last_epoch + 1):
        started = time.perf_counter()
        # per-epoch seeds (batches, augmentation, dropout): a resumed run continues exactly
        torch.manual_seed(generator.manual_seed(run.seed * 100_003 + epoch).initial_seed())
        train_loss, train_accuracy = train_one_epoch(
            runner,
            optimizer,
            device_data,
            phase.batch_size,
            generator,
            f"{phase.name} {epoch}/{phase.epochs}",
            scheduler,
            phase.options.label_smoothing,
        )
        trained = time.perf_counter()  # train_one_epoch ends on a host sync: the device is done
        row = {"step": run.step_offset + epoch, "phase": phase.name, "epoch": epoch}
        row.update(train_loss=train_loss, train_accuracy=train_accuracy)
        row["train_images_per_s"] = len(device_data.train) / (trained - started)
        if math.isfinite(train_loss):
            row.update(evaluate(runner, device_data).row())
            row["eval_images_per_s"] = len(device_data.test) / (time.perf_counter() - trained)
            reason = collapse_reason(row, len(device_data.dataset.classes), run.warmup_accuracy)
        else:
            reason = f"train loss is {train_loss} at {phase.name} epoch {epoch}"
            row.update(not_evaluated(device_data))
        status = Status.DIVERGED if reason else Status.OK
        row["seconds"] = time.perf_counter() - started
        history.append(row)
        checkpoint()
        if run.on_checkpoint is not None:
            run.on_checkpoint(row)
        # after the checkpoint is stored, so the line means the epoch is safe; print, not tqdm.write: the bar
        # is closed, and a Prefect run with log_prints records printed lines, so its page shows its epochs
        print(
            f"{phase.name} {epoch}/{phase.epochs}: train loss {train_loss:.4f} acc {train_accuracy:.4f} | test loss "
            f"{row['test_loss']:.4f} acc {row['test_accuracy']:.4f}{_flips_text(row)} | {row['seconds']:.1f}s",
            flush=True,
        )
        if status == Status.DIVERGED:
            print(f"{phase.name}: {reason}; stopping, run recorded as diverged", flush=True)
            break
        if run.deadline is not None and time.time() >= run.deadline and epoch < last_epoch:
            status, reason = Status.STOPPED, f"the sweep's time budget ended after {phase.name} epoch {epoch}"
            print(f"{phase.name}: {reason}; stopping, resumable from its checkpoint", flush=True)
            break
    if first_epoch > last_epoch:
        checkpoint()  # no epoch ran (0 epochs, or resumed complete): the phase's output still exists
    return FitResult(history, status, reason)


def _flips_text(row: dict[str, Any]) -> str:
    return f" (flips {row['test_accuracy_flips']:.4f})" if "test_accuracy_flips" in row else ""


def _record(params: Params, device_data: DeviceData) -> dict[str, Any]:
    """What a checkpoint says of its run: the params as records keep them (redacted), the classes."""
    return {"params": redact_data(params.to_dict()), "classes": device_data.dataset.classes}


def run_warmup(params: Params, device_data: DeviceData, checkpoint_path: Path, resume: bool = False) -> FitResult:
    """Phase 1: all features frozen, only the new head trains (after re-estimating the BatchNorm statistics, with
    ``warmup.batchnorm: recalibrated``)."""
    torch.manual_seed(params.seed)
    model = build_model(params.model, len(device_data.dataset.classes))
    resumed = resume_state(checkpoint_path, "warmup") if resume else None
    if params.warmup.batchnorm == "recalibrated" and resumed is None:  # a resumed run's statistics are its own
        model.to(device_data.device, memory_format=torch.channels_last)
        recalibrate_batchnorm(model.features, device_data.train, device_data.test_transform)
    run = FitRun(seed=params.seed, checkpoint_path=checkpoint_path, record=_record(params, device_data), resume=resumed)
    result = fit(model, warmup_phase(params), device_data, run)
    if result.status == Status.OK and result.history:
        at_chance = warmup_at_chance(params, result.history[-1]["test_accuracy"], len(device_data.dataset.classes))
        if at_chance is not None:
            print(f"warning: {at_chance}", flush=True)
    return result


def run_finetune(
    params: Params,
    device_data: DeviceData,
    warmup_checkpoint: Path,
    checkpoint_path: Path,
    resume: bool = False,
    on_checkpoint: Callable[[dict[str, Any]], None] | None = None,
    until: int | None = None,
    deadline: float | None = None,
) -> FitResult:
    """Phase 2: head plus ``trainable_layers`` blocks, starting from the warmup weights (``until``, ``deadline``:
    see :class:`FitRun`)."""
    torch.manual_seed(params.seed)
    model, warm = load_trained_model(warmup_checkpoint, params, len(device_data.dataset.classes))
    resumed = resume_state(checkpoint_path, "finetune") if resume else None
    run = FitRun(
        seed=params.seed + 1,
        checkpoint_path=checkpoint_path,
        record=_record(params, device_data),
        step_offset=len(warm["history"]),
        resume=resumed,
        on_checkpoint=on_checkpoint,
        until=until,
        deadline=deadline,
        warmup_accuracy=warm["history"][-1]["test_accuracy"] if warm["history"] else None,
    )
    return fit(model, finetune_phase(params), device_data, run)
