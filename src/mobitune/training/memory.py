"""How much device memory a trial needs, known before it runs, and the check that refuses to overpack a GPU.

Several small trials share one GPU well (MobileNetV2 at CIFAR sizes leaves
most of an H100 idle), until their memory does not fit: then one of them dies
with an out-of-memory error halfway through. The estimate runs the model on
PyTorch's ``meta`` device (shapes only: no memory, no compute, well under a
second) and adds up what training keeps for the backward pass, the largest
evaluation step, the weights with their gradients and Adam's two moments, the
data and the CUDA context. It counts float32 activations: under bfloat16
autocast a trial needs less.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from mobitune.errors import MobituneError
from mobitune.params import Params
from mobitune.provenance import machine_gpu
from mobitune.training.batches import EVAL_BATCH_SIZE
from mobitune.training.data import Dataset
from mobitune.training.model import MobileNetClassifier, set_trainable_layers
from mobitune.training.phases import finetune_phase

CUDA_CONTEXT_BYTES = 600 * 2**20  # per process: the CUDA context, cuBLAS and cuDNN workspaces, about
TRANSIENT_FACTOR = 1.25  # a training step's temporaries (its outputs, gradients in flight) on top of what it saves
GIB = 2**30


class DeviceMemoryError(MobituneError):
    """A trial that would not fit in its GPU's memory beside the trials already there."""


def trial_memory_bytes(params: Params, num_classes: int, images: int, image_shape: tuple[int, ...]) -> int:
    """About the most device memory a trial of ``params`` holds at once: the finetune phase (the warmup, with
    every feature layer frozen, needs less) or its evaluation at :data:`EVAL_BATCH_SIZE`, whichever is more,
    and ``images`` uint8 images of ``image_shape`` (C, H, W) kept on the device."""
    with torch.device("meta"):
        model = MobileNetClassifier(num_classes, params.model.hidden_units, params.model.dropout)
    phase = finetune_phase(params)
    set_trainable_layers(model, phase.trainable_layers, phase.unfreeze_from, phase.last_conv)
    side = params.model.image_size
    saved = saved_for_backward_bytes(model, torch.empty(phase.batch_size, 3, side, side, device="meta"))
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    trained = sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad)
    steps = max(int(TRANSIENT_FACTOR * saved), _eval_peak(model, side))
    return CUDA_CONTEXT_BYTES + images * math.prod(image_shape) + weights + 3 * trained + steps


def saved_for_backward_bytes(model: nn.Module, batch: torch.Tensor) -> int:
    """What a training forward pass of ``batch`` keeps for the backward pass, in bytes."""
    saved = 0

    def count(tensor: torch.Tensor) -> torch.Tensor:
        nonlocal saved
        saved += tensor.numel() * tensor.element_size()
        return tensor

    model.train()
    with torch.autograd.graph.saved_tensors_hooks(count, lambda tensor: tensor):
        model(batch)
    return saved


def _eval_peak(model: nn.Module, side: int) -> int:
    """The largest input plus output of one layer when the model evaluates a batch of :data:`EVAL_BATCH_SIZE`."""
    peak = 0

    def layer(module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
        nonlocal peak
        size = sum(t.numel() * t.element_size() for t in inputs if isinstance(t, torch.Tensor))
        peak = max(peak, size + output.numel() * output.element_size())

    hooks = [m.register_forward_hook(layer) for m in model.modules() if not any(m.children())]
    model.eval()
    with torch.inference_mode():
        model(torch.empty(EVAL_BATCH_SIZE, 3, side, side, device="meta"))
    for hook in hooks:
        hook.remove()
    return peak


def packing_problem(need: int, trials: int, available: int, device: str) -> str | None:
    """Why ``trials`` trials of ``need`` bytes each do not fit in the ``available`` bytes of ``device``, or None
    when they do."""
    if trials * need <= available:
        return None
    fit = available // need
    return (
        f"{device}: {trials} trial(s) of about {need / GIB:.1f} GiB each need {trials * need / GIB:.1f} GiB, "
        f"{available / GIB:.1f} GiB is free there"
        + (f"; {fit} fit at once" if fit else "")
        + ". Run fewer trials per device (--parallel; on workers, the --limit of the GPU's worker: prefect worker "
        "start --limit, on a docker pool that of the worker of the GPU's queue gpu-<index>) or lower batch_size / "
        "model.image_size"
    )


def gpu_label(device: torch.device) -> str:
    """``device`` as this process names it, with the machine's index of its GPU where that is another (a slot
    container pinned to GPU 1 sees it as cuda:0; so does a worker under CUDA_VISIBLE_DEVICES=1)."""
    index = torch.cuda.current_device() if device.index is None else device.index
    machine = machine_gpu(index)
    return str(device) if machine == index else f"{device} (GPU {machine} of the machine)"


def available_bytes(device: torch.device) -> int:
    """What a new trial in this process can have of ``device``'s memory: the device's free memory, and what this
    process's allocator keeps cached but unused (an earlier trial's)."""
    free, _ = torch.cuda.mem_get_info(device)
    return free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)


def check_trial_fits(params: Params, device: torch.device, dataset: Dataset) -> None:
    """Refuse, before it loads anything, a trial whose GPU has not the memory left for it: the trials already
    there keep theirs, be they in this process, in others or in other containers pinned to the same GPU (the free
    memory is the whole GPU's). Nothing to check on a CPU."""
    if device.type != "cuda":
        return
    images = len(dataset.train.labels) + len(dataset.test.labels)
    need = trial_memory_bytes(params, len(dataset.classes), images, dataset.train.images.shape[1:])
    problem = packing_problem(need, 1, available_bytes(device), gpu_label(device))
    if problem:
        raise DeviceMemoryError(problem)


def check_packing(trials: list[Params], devices: list[str]) -> None:
    """Refuse a local sweep that would put more trials on a GPU than its free memory holds: each device of
    ``devices`` (one entry per trial slot) runs as many trials at once as it has entries, each as big as the
    largest of ``trials``. The data is counted as CIFAR-10's 32x32 images (``data.*_limit`` of them)."""
    for name in sorted(set(devices)):
        device = torch.device(name)
        if device.type != "cuda":
            continue
        need = max(
            trial_memory_bytes(p, 10, (p.data.train_limit or 50_000) + (p.data.test_limit or 10_000), (3, 32, 32))
            for p in _distinct_shapes(trials)
        )
        problem = packing_problem(need, devices.count(name), available_bytes(device), gpu_label(device))
        if problem:
            raise DeviceMemoryError(problem)


def _distinct_shapes(trials: list[Params]) -> list[Params]:
    """One trial of each size that the estimate tells apart: a sweep's trials mostly differ in other params."""
    distinct = {}
    for p in trials:
        shape = (p.batch_size, p.model.image_size, p.model.hidden_units, p.trainable_layers, p.model.unfreeze_from)
        distinct.setdefault((*shape, p.data.train_limit, p.data.test_limit), p)
    return list(distinct.values())
