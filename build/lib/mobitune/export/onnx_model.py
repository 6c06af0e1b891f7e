"""The fine-tuned model as ONNX files a caller feeds raw images to, and their check against PyTorch.

``model.onnx`` takes uint8 RGB images, ``images`` of shape (N, 3, H, W), any N, H and W, and returns
``logits`` (N, classes): the ImageNet normalisation and the bilinear resize to ``model.image_size`` are inside
the graph, as the training's test transform does them (and, with ``augment.test_flip``, the mean with the mirror
images' logits). ``model.int8.onnx`` is ONNX Runtime's static
quantization of it (QDQ, int8 weights per channel, uint8 activations), calibrated on training images; the
preprocessing before the first convolution stays in float.
"""

from __future__ import annotations

import json
import statistics
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
import torch.nn.functional as F
from torch import nn

from mobitune.provenance import provenance
from mobitune.storage.stores import atomic_path
from mobitune.training.batches import IMAGENET_MEAN, IMAGENET_STD
from mobitune.training.data import Dataset
from mobitune.training.model import MobileNetClassifier

INPUT, OUTPUT = "images", "logits"
CLASSES_KEY = "classes"  # metadata: the class names, in the order of the logits
OPSET = 17
CALIBRATION_IMAGES = 320  # training images ONNX Runtime calibrates the int8 ranges on
CALIBRATION_BATCH = 32
LATENCY_BATCHES = (1, 64)
LATENCY_REPEATS = 30


class PackagedModel(nn.Module):
    """The classifier behind its preprocessing: uint8 RGB images of any size in, logits out."""

    def __init__(self, model: MobileNetClassifier, image_size: int, test_flip: bool = False) -> None:
        super().__init__()
        self.model = model
        self.image_size = image_size
        self.test_flip = test_flip
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1))
        self.register_buffer("inv_std", 1 / torch.tensor(IMAGENET_STD).view(1, 3, 1, 1))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """As :class:`~mobitune.training.batches.BatchTransform` at test time, but always resizing: a traced
        graph keeps only the branch its example took, and a resize to the same size changes nothing."""
        x = (images.float() - self.mean) * self.inv_std
        x = F.interpolate(x, size=(self.image_size, self.image_size), mode="bilinear", align_corners=False)
        if self.test_flip:
            return (self.model(x) + self.model(x.flip(3))) / 2
        return self.model(x)


def export_onnx(
    model: MobileNetClassifier, image_size: int, classes: list[str], path: Path, test_flip: bool = False
) -> None:
    """``model`` (evaluation mode, on the CPU) as ``path``, written whole or not at all, its class names in the
    file's metadata (``classes``, a JSON list) for whoever runs it."""
    packaged = PackagedModel(model.cpu().eval(), image_size, test_flip).eval()
    example = torch.zeros(1, 3, image_size, image_size, dtype=torch.uint8)
    with atomic_path(path) as scratch, warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # the TorchScript exporter's: see dynamo=False
        torch.onnx.export(
            packaged,
            (example,),
            str(scratch),
            input_names=[INPUT],
            output_names=[OUTPUT],
            dynamic_axes={INPUT: {0: "batch", 2: "height", 3: "width"}, OUTPUT: {0: "batch"}},
            opset_version=OPSET,
            # TorchScript's exporter, deprecated since torch 2.9 but here in 2.14: 1 s on this CPU, against 10 s
            # for the torch.export-based one (which also splits the weights into a second file by default)
            dynamo=False,
        )
        graph = onnx.load(str(scratch))
        onnx.helper.set_model_props(graph, {CLASSES_KEY: json.dumps(classes), "image_size": str(image_size)})
        onnx.save(graph, str(scratch))


def quantize_int8(fp32: Path, path: Path, calibration: np.ndarray) -> None:
    """The int8 copy of ``fp32``, its activation ranges calibrated on ``calibration`` (uint8 images)."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Batches(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter(np.array_split(calibration, max(1, len(calibration) // CALIBRATION_BATCH)))

        def get_next(self) -> dict[str, np.ndarray] | None:
            batch = next(self.batches, None)
            return None if batch is None else {INPUT: batch}

    with tempfile.TemporaryDirectory() as work, atomic_path(path) as scratch:
        prepared = Path(work) / "prepared.onnx"
        quant_pre_process(str(fp32), str(prepared))
        nodes = onnx.load(str(prepared)).graph.node
        first_conv = next(i for i, node in enumerate(nodes) if node.op_type == "Conv")
        quantize_static(
            str(prepared),
            str(scratch),
            Batches(),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            # every layer of the network, residual additions and pooling included (quantizing only the
            # convolutions and dense layers left a float round trip at each addition: slower than float32);
            # not the preprocessing before the first convolution, which works on the raw pixel values
            nodes_to_exclude=[node.name for node in nodes[:first_conv]],
        )


def session(path: Path) -> Any:
    import onnxruntime

    return onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def onnx_logits(path: Path, images: np.ndarray, batch: int = 256) -> np.ndarray:
    """The file's logits for uint8 ``images`` (N, 3, H, W), ``batch`` at a time."""
    runner = session(path)
    chunks = [runner.run([OUTPUT], {INPUT: images[i : i + batch]})[0] for i in range(0, len(images), batch)]
    return np.concatenate(chunks)


@torch.inference_mode()
def torch_logits(
    model: MobileNetClassifier, image_size: int, images: np.ndarray, test_flip: bool = False, batch: int = 256
) -> np.ndarray:
    packaged = PackagedModel(model.cpu().eval(), image_size, test_flip).eval()
    chunks = [packaged(torch.from_numpy(images[i : i + batch])).numpy() for i in range(0, len(images), batch)]
    return np.concatenate(chunks)


def latency_ms(path: Path, batch: int, image_shape: tuple[int, ...]) -> float:
    """Median milliseconds of one run of ``batch`` images on this CPU, after a warm-up."""
    runner = session(path)
    images = np.zeros((batch, *image_shape), dtype=np.uint8)
    for _ in range(3):
        runner.run([OUTPUT], {INPUT: images})
    times = []
    for _ in range(LATENCY_REPEATS):
        started = time.perf_counter()
        runner.run([OUTPUT], {INPUT: images})
        times.append(time.perf_counter() - started)
    return 1000 * statistics.median(times)


def export_model(
    model: MobileNetClassifier, image_size: int, dataset: Dataset, fp32: Path, int8: Path, test_flip: bool = False
) -> dict[str, Any]:
    """Both files, and how they compare on ``dataset``'s test images with PyTorch: accuracy, top-1 agreement,
    size and CPU latency (``dataset``'s first training images calibrate the int8 copy)."""
    export_onnx(model, image_size, dataset.classes, fp32, test_flip)
    quantize_int8(fp32, int8, dataset.train.images[:CALIBRATION_IMAGES])
    images, labels = dataset.test.images, dataset.test.labels
    reference = torch_logits(model, image_size, images, test_flip).argmax(1)
    report: dict[str, Any] = {
        "test_images": len(labels),
        "test_flip": test_flip,  # the files answer the mean logits of each image and its mirror: a flipped view
        "pytorch_test_accuracy": float((reference == labels).mean()),
    }
    for name, path in (("fp32", fp32), ("int8", int8)):
        predicted = onnx_logits(path, images).argmax(1)
        report[name] = {
            "file": path.name,
            "bytes": path.stat().st_size,
            "test_accuracy": float((predicted == labels).mean()),
            "agreement_with_pytorch": float((predicted == reference).mean()),
            **{f"latency_ms_batch_{b}": latency_ms(path, b, images.shape[1:]) for b in LATENCY_BATCHES},
        }
    report["int8_smaller"] = report["fp32"]["bytes"] / report["int8"]["bytes"]
    report["int8_speedup_batch_1"] = report["fp32"]["latency_ms_batch_1"] / report["int8"]["latency_ms_batch_1"]
    report["provenance"] = provenance(device="cpu", threads=torch.get_num_threads())  # ONNX Runtime's CPU too
    return report
