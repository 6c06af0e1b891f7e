"""Tiny data sets in the exact official formats, with structure a model can learn.

Each class has its own colour and a bright square in a class-specific corner,
plus noise: a from-scratch MobileNetV2 separates them within a few epochs.
"""

from __future__ import annotations

import io
import pickle
import tarfile
from pathlib import Path

import numpy as np
from PIL import Image

CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def learnable_images(labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """(N, 3, 32, 32) uint8 images whose colour and pattern depend on the label."""
    palette = np.random.default_rng(1234).integers(0, 256, size=(len(CLASSES), 3))
    n = len(labels)
    images = palette[labels][:, :, None, None] + rng.normal(0, 20, size=(n, 3, 32, 32))
    for i, label in enumerate(labels):
        y, x = divmod(int(label) % 4, 2)
        images[i, :, y * 16 : y * 16 + 12, x * 16 : x * 16 + 12] = 255 if label < 5 else 0
    return np.clip(images, 0, 255).astype(np.uint8)


def _split(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % len(CLASSES)
    rng.shuffle(labels)
    return learnable_images(labels, rng), labels


def _add(tar: tarfile.TarFile, name: str, payload: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(payload)
    tar.addfile(info, io.BytesIO(payload))


def write_cifar_archive(path: Path, train_per_batch: int = 40, test: int = 100, seed: int = 0) -> Path:
    """A ``cifar-10-python.tar.gz`` like the official one: five data batches, a test batch, meta."""
    with tarfile.open(path, "w:gz") as tar:
        info = tarfile.TarInfo("cifar-10-batches-py")
        info.type = tarfile.DIRTYPE
        tar.addfile(info)
        meta = {"num_cases_per_batch": train_per_batch, "label_names": CLASSES, "num_vis": 3072}
        _add(tar, "cifar-10-batches-py/batches.meta", pickle.dumps(meta, protocol=2))
        names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
        for index, name in enumerate(names):
            images, labels = _split(test if name == "test_batch" else train_per_batch, seed + index)
            batch = {
                b"batch_label": f"{name} of 6".encode(),
                b"labels": labels.tolist(),
                b"data": images.reshape(len(labels), -1),
                b"filenames": [f"img_{i}.png".encode() for i in range(len(labels))],
            }
            _add(tar, f"cifar-10-batches-py/{name}", pickle.dumps(batch, protocol=2))
    return path


def write_image_folder(root: Path, train_per_class: int = 8, test_per_class: int = 4, fmt: str = "png") -> Path:
    """``root/train/<class>/*.png`` and ``root/test/<class>/*`` with learnable images."""
    for split, per_class, seed in (("train", train_per_class, 10), ("test", test_per_class, 11)):
        images, labels = _split(per_class * len(CLASSES), seed)
        for i, (image, label) in enumerate(zip(images, labels, strict=True)):
            folder = root / split / CLASSES[label]
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(image.transpose(1, 2, 0)).save(folder / f"{i:05d}.{fmt}")
    return root


def tar_folder(root: Path, archive: Path, arcname: str = "images") -> Path:
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(root, arcname=arcname)
    return archive
