"""Fetch a data set once and decode it into compact arrays (the download stage).

Sources: the official ``cifar-10-python.tar.gz`` (or any copy of it) and
image-folder trees (``train/<class>/*.png|jpg``, ``test/<class>/*``), as a
folder or a tarball, from a local path, ``file://``, ``http(s)://`` or
``s3://``. Archives are read member by member straight from the tar stream:
nothing is ever extracted to disk, and members that would escape the tree
(absolute paths, ``..``, links pointing outside) are refused outright.

A source is untrusted input: what it may cost is capped (the ``MAX_*``
constants of :mod:`mobitune.training.untrusted`) and checked before the bytes or pixels are read, and images
are decoded as PNG or JPEG only, whatever their names say.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import pickle
import re
import shutil
import tarfile
import tempfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
from PIL import UnidentifiedImageError
from tqdm import tqdm

from mobitune.storage import stores as storage
from mobitune.storage.fetch import fetch
from mobitune.training.untrusted import (
    MAX_MEMBER_BYTES,
    MAX_PIXEL_BYTES,
    MAX_UNPACKED_BYTES,
    Budget,
    DataError,
    mib,
    open_image,
    over_cap,
)

CIFAR_DIR = "cifar-10-batches-py"
CIFAR_TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
CIFAR_TEST_BATCH = "test_batch"
CIFAR_META = "batches.meta"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
SPLITS = ("train", "test")
FOLDER_SHUFFLE_SEED = 0  # image folders are class-sorted: shuffle so that `*_limit` keeps every class


@dataclass(frozen=True)
class Split:
    images: np.ndarray  # (N, 3, H, W) uint8
    labels: np.ndarray  # (N,) int64


@dataclass(frozen=True)
class Dataset:
    train: Split
    test: Split
    classes: list[str]
    meta: dict[str, Any]


def file_digest(path: Path, algorithm: str) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, algorithm).hexdigest()


def verify_md5(path: Path, expected: str | None) -> None:
    if expected is None:
        return
    if path.is_dir():
        raise DataError(f"data.md5 is set but {path} is a folder; set data.md5 to null for image folders")
    actual = file_digest(path, "md5")
    if actual.lower() != expected.lower():
        raise DataError(
            f"{path.name}: MD5 checksum mismatch (expected {expected}, got {actual}); the file "
            "is corrupt or a different archive. Download it again, or if it is the archive you "
            f"mean to use, set data.md5 to {actual} (or null)"
        )


# -------------------------------------------------------------------- decode


class _ArraysOnlyUnpickler(pickle.Unpickler):
    """CIFAR-10 batches are pickles; allow numpy arrays and nothing that runs code."""

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
        ("_codecs", "encode"),
    }

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}")


def _unpickle(raw: bytes, name: str) -> dict[str, Any]:
    try:
        obj = _ArraysOnlyUnpickler(io.BytesIO(raw), encoding="latin1").load()
    except Exception as exc:  # any malformed pickle is a data error, whatever it raised
        raise DataError(f"{name}: not a CIFAR-10 batch ({exc})") from None
    if not isinstance(obj, dict):
        raise DataError(f"{name}: not a CIFAR-10 batch (expected a dict)")
    return {k.decode() if isinstance(k, bytes) else k: v for k, v in obj.items()}


def _safe_members(tar: tarfile.TarFile, archive: Path) -> Iterator[tarfile.TarInfo]:
    """The archive's members, each checked before its data is inflated: where it lands, what it is, and what
    the archive has unpacked to with it (a member skipped is inflated all the same, to pass it)."""
    unpacked = Budget(MAX_UNPACKED_BYTES, "MAX_UNPACKED_BYTES", archive.name, "unpacks to")
    for member in tar:
        unpacked.take(member.size, f"member {member.name!r}")
        parts = PurePosixPath(member.name).parts
        if member.name.startswith(("/", "\\")) or ".." in parts or re.match(r"^[A-Za-z]:", member.name):
            raise DataError(
                f"{archive.name}: member {member.name!r} would escape the target folder; refusing this archive"
            )
        if member.issym() or member.islnk():
            target = PurePosixPath(member.name).parent / member.linkname
            if member.linkname.startswith("/") or ".." in target.parts:
                raise DataError(
                    f"{archive.name}: link {member.name!r} -> {member.linkname!r} points outside "
                    "the archive; refusing this archive"
                )
            continue
        if member.isdev() or member.isfifo():
            raise DataError(f"{archive.name}: member {member.name!r} is a device or pipe")
        yield member


_TAR_ERRORS = (tarfile.TarError, EOFError, zlib.error, OSError)


def _open_tar(path: Path) -> tarfile.TarFile:
    try:
        return tarfile.open(path, "r:*")
    except _TAR_ERRORS as exc:
        raise DataError(
            f"{path.name}: not a (gzip/bzip2/xz) tar archive or truncated ({exc}); "
            "download it again or point data.source at the right file"
        ) from None


def decode(path: Path) -> tuple[Split, Split, list[str], str]:
    """Decode a fetched source into train/test splits; returns them, classes, format."""
    if path.is_dir():
        train, test, classes = _decode_folder_tree(path)
        return train, test, classes, "image-folder"
    with _open_tar(path) as tar:
        try:
            return _decode_tar(tar, path)
        except _TAR_ERRORS as exc:
            raise DataError(f"{path.name}: archive is truncated or corrupt ({exc}); download it again") from None


def _decode_tar(tar: tarfile.TarFile, path: Path) -> tuple[Split, Split, list[str], str]:
    batches: dict[str, bytes] = {}
    images: dict[tuple[str, str], list[tuple[str, bytes]]] = {}
    class_dirs: set[tuple[str, str]] = set()
    roots: set[str] = set()
    for member in _safe_members(tar, path):
        parts = PurePosixPath(member.name).parts
        if len(parts) >= 2 and parts[-2] == CIFAR_DIR and member.isfile():
            batches[parts[-1]] = _read_member(tar, member, path)
            continue
        layout = _folder_position(parts)
        if layout is None:
            continue
        root, split, cls, name = layout
        roots.add(root)
        if member.isdir() and name is None:
            class_dirs.add((split, cls))
        elif member.isfile() and name is not None and name.lower().endswith(IMAGE_SUFFIXES):
            class_dirs.add((split, cls))
            images.setdefault((split, cls), []).append((member.name, _read_member(tar, member, path)))
    if CIFAR_TRAIN_BATCHES[0] in batches:
        train, test, classes = _decode_cifar_batches(batches, path)
        return train, test, classes, "cifar10-python"
    if len(roots) > 1:
        raise DataError(f"{path.name}: several image-folder roots found ({sorted(roots)}); keep one")
    train, test, classes = _assemble_folder(class_dirs, images, path.name)
    return train, test, classes, "image-folder"


def _read_member(tar: tarfile.TarFile, member: tarfile.TarInfo, path: Path) -> bytes:
    """The member's bytes, refused by its declared size before any is read (tarfile reads no more than that)."""
    if member.size > MAX_MEMBER_BYTES:
        subject = f"{path.name}: member {member.name!r} is {mib(member.size)}"
        raise over_cap(subject, mib(MAX_MEMBER_BYTES), "MAX_MEMBER_BYTES")
    handle = tar.extractfile(member)
    if handle is None:
        raise DataError(f"{path.name}: member {member.name!r} cannot be read")
    return handle.read()


def _folder_position(parts: tuple[str, ...]) -> tuple[str, str, str, str | None] | None:
    """Locate ``[root/]split/class[/file]`` in a path; None when it is elsewhere."""
    for i, part in enumerate(parts):
        if part in SPLITS and len(parts) - i in (2, 3):
            name = parts[i + 2] if len(parts) - i == 3 else None
            return "/".join(parts[:i]), part, parts[i + 1], name
    return None


def _decode_cifar_batches(batches: dict[str, bytes], path: Path) -> tuple[Split, Split, list[str]]:
    missing = [b for b in (*CIFAR_TRAIN_BATCHES, CIFAR_TEST_BATCH, CIFAR_META) if b not in batches]
    if missing:
        raise DataError(f"{path.name}: {CIFAR_DIR}/ lacks {', '.join(missing)}; the archive is incomplete")

    def load(names: tuple[str, ...]) -> Split:
        xs, ys = [], []
        for name in names:
            batch = _unpickle(batches[name], f"{path.name}:{CIFAR_DIR}/{name}")
            try:
                data = np.asarray(batch["data"], dtype=np.uint8)
                labels = np.asarray(batch["labels"], dtype=np.int64)
                xs.append(data.reshape(-1, 3, 32, 32))
            except (KeyError, ValueError) as exc:
                raise DataError(f"{path.name}:{CIFAR_DIR}/{name}: malformed batch ({exc})") from None
            if len(labels) != len(xs[-1]):
                raise DataError(f"{path.name}:{CIFAR_DIR}/{name}: {len(labels)} labels for {len(xs[-1])} images")
            ys.append(labels)
        return Split(np.concatenate(xs), np.concatenate(ys))

    meta = _unpickle(batches[CIFAR_META], f"{path.name}:{CIFAR_DIR}/{CIFAR_META}")
    classes = [c.decode() if isinstance(c, bytes) else str(c) for c in meta.get("label_names", [])]
    if not classes:
        raise DataError(f"{path.name}:{CIFAR_DIR}/{CIFAR_META}: no label_names")
    train, test = load(CIFAR_TRAIN_BATCHES), load((CIFAR_TEST_BATCH,))
    for split in (train, test):
        if split.labels.min() < 0 or split.labels.max() >= len(classes):
            raise DataError(f"{path.name}: labels outside 0..{len(classes) - 1}")
    return train, test, classes


def _decode_folder_tree(root: Path) -> tuple[Split, Split, list[str]]:
    candidates = [root, *(p for p in sorted(root.iterdir()) if p.is_dir())]
    base = next((c for c in candidates if all((c / s).is_dir() for s in SPLITS)), None)
    if base is None:
        raise DataError(
            f"{root}: wrong layout; expected train/<class>/*.png|jpg and test/<class>/* (directly or one folder down)"
        )
    class_dirs: set[tuple[str, str]] = set()
    images: dict[tuple[str, str], list[tuple[str, bytes]]] = {}
    read = Budget(MAX_UNPACKED_BYTES, "MAX_UNPACKED_BYTES", str(root), "its image files come to")
    for split in SPLITS:
        for cls_dir in sorted(p for p in (base / split).iterdir() if p.is_dir()):
            class_dirs.add((split, cls_dir.name))
            files = [f for f in sorted(cls_dir.iterdir()) if f.suffix.lower() in IMAGE_SUFFIXES]
            images[(split, cls_dir.name)] = [(str(file), _read_image_file(file, read)) for file in files]
    return _assemble_folder(class_dirs, images, str(root))


def _read_image_file(file: Path, read: Budget) -> bytes:
    """The file's bytes, refused by its size before any is read; a plain file only (a link to /dev/zero or a
    pipe named ``*.png`` would never end)."""
    try:
        if not file.is_file():
            raise DataError(f"{file}: not a plain file; remove it from the data set")
        size = file.stat().st_size
        if size > MAX_MEMBER_BYTES:
            raise over_cap(f"{file} is {mib(size)}", mib(MAX_MEMBER_BYTES), "MAX_MEMBER_BYTES")
        read.take(size, str(file))
        return file.read_bytes()
    except OSError as exc:
        raise DataError(f"{file}: cannot be read ({exc.strerror})") from None


def _assemble_folder(
    class_dirs: set[tuple[str, str]],
    images: dict[tuple[str, str], list[tuple[str, bytes]]],
    label: str,
) -> tuple[Split, Split, list[str]]:
    per_split = {s: sorted(c for sp, c in class_dirs if sp == s) for s in SPLITS}
    if not per_split["train"] or not per_split["test"]:
        raise DataError(
            f"{label}: wrong layout; expected a CIFAR-10 python archive ({CIFAR_DIR}/data_batch_*) "
            "or image folders train/<class>/*.png|jpg and test/<class>/*"
        )
    if per_split["train"] != per_split["test"]:
        raise DataError(
            f"{label}: train and test have different class folders "
            f"(train: {per_split['train']}, test: {per_split['test']})"
        )
    classes = per_split["train"]
    for split in SPLITS:
        for cls in classes:
            if not images.get((split, cls)):
                raise DataError(f"{label}: class folder {split}/{cls} has no .png/.jpg images")
    splits = []
    shape: tuple[int, ...] | None = None
    pixels = Budget(MAX_PIXEL_BYTES, "MAX_PIXEL_BYTES", label, "its decoded images come to")
    for split in SPLITS:
        xs, ys = [], []
        count = sum(len(images[(split, cls)]) for cls in classes)
        with tqdm(total=count, desc=f"decoding {split} images", unit="img", disable=None) as bar:
            for index, cls in enumerate(classes):
                for name, raw in sorted(images[(split, cls)]):
                    array = _decode_image(name, raw, pixels)
                    if shape is None:
                        shape = array.shape
                    elif array.shape != shape:
                        raise DataError(
                            f"{name}: image is {array.shape[2]}x{array.shape[1]}, the others are "
                            f"{shape[2]}x{shape[1]}; all images must have one size"
                        )
                    xs.append(array)
                    ys.append(index)
                    bar.update()
        order = np.random.default_rng(FOLDER_SHUFFLE_SEED).permutation(len(xs))
        splits.append(Split(np.stack(xs)[order], np.asarray(ys, dtype=np.int64)[order]))
    return splits[0], splits[1], classes


def _decode_image(name: str, raw: bytes, pixels: Budget) -> np.ndarray:
    try:
        with open_image(io.BytesIO(raw), name) as image:
            pixels.take(3 * image.width * image.height, name)
            return np.asarray(image.convert("RGB"), dtype=np.uint8).transpose(2, 0, 1)
    except UnidentifiedImageError:
        raise DataError(
            f"{name}: not a readable image; only PNG and JPEG files are read, whatever the name says: "
            "convert it or remove it"
        ) from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise DataError(f"{name}: not a readable image ({exc}); remove or replace it") from None


# ------------------------------------------------------------------ prepare


ARRAY_FILES = ("train_images", "train_labels", "test_images", "test_labels")


def prepare(source: str, md5: str | None, out_dir: Path) -> dict[str, Any]:
    """Fetch, verify and decode ``source`` into ``out_dir`` atomically; return meta."""
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        download_dir = staging / "download"
        download_dir.mkdir()
        local = fetch(source, download_dir, key="data.source")
        verify_md5(local, md5)
        train, test, classes, fmt = decode(local)
        arrays_dir = staging / "arrays"
        arrays_dir.mkdir()
        arrays = dict(zip(ARRAY_FILES, (train.images, train.labels, test.images, test.labels), strict=True))
        for name, array in arrays.items():
            np.save(arrays_dir / f"{name}.npy", np.ascontiguousarray(array))
        meta = {
            "source": storage.public_uri(source),
            "format": fmt,
            "sha256": None if local.is_dir() else file_digest(local, "sha256"),
            "classes": classes,
            "image_shape": list(train.images.shape[1:]),
            "train_count": int(len(train.labels)),
            "test_count": int(len(test.labels)),
            "train_class_counts": np.bincount(train.labels, minlength=len(classes)).tolist(),
            "test_class_counts": np.bincount(test.labels, minlength=len(classes)).tolist(),
        }
        (arrays_dir / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
        if out_dir.exists():
            shutil.rmtree(out_dir)
        os.replace(arrays_dir, out_dir)
        return meta
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def load_dataset(data_dir: Path, train_limit: int | None = None, test_limit: int | None = None) -> Dataset:
    """Read the download stage's arrays, keeping the first ``*_limit`` images."""
    data_dir = Path(data_dir)
    try:
        meta = json.loads((data_dir / "meta.json").read_text())
        arrays = {name: np.load(data_dir / f"{name}.npy", mmap_mode="r") for name in ARRAY_FILES}
    except (OSError, ValueError) as exc:
        raise DataError(f"{data_dir}: prepared data missing or unreadable ({exc}); run `dvc repro download`") from None
    # memory-mapped: only the kept images are read from disk
    train = Split(np.array(arrays["train_images"][:train_limit]), np.array(arrays["train_labels"][:train_limit]))
    test = Split(np.array(arrays["test_images"][:test_limit]), np.array(arrays["test_labels"][:test_limit]))
    return Dataset(train=train, test=test, classes=list(meta["classes"]), meta=meta)
