"""``mobitune predict``: the top classes of image files, from an exported ONNX file or a mobitune checkpoint.

Any JPEG or PNG (by its content: a file of another format is refused, whatever its suffix) of up to
``MAX_IMAGE_PIXELS`` (mobitune/training/untrusted.py: 64 Mi pixels), RGB or not (grayscale, palette and alpha
images are converted to RGB); each image is answered on its own, so one that cannot be read gets its own
error and the others still get their answer.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import UnidentifiedImageError

from mobitune.errors import MobituneError
from mobitune.export.onnx_model import CLASSES_KEY, INPUT, OUTPUT, PackagedModel, session
from mobitune.params import params_from_dict
from mobitune.training.checkpoints import load_trained_model
from mobitune.training.model import load_checkpoint
from mobitune.training.untrusted import open_image

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


class ModelFileError(MobituneError):
    """A model file mobitune predict cannot use."""


@dataclass
class Prediction:
    image: Path
    top: list[tuple[str, float]] = field(default_factory=list)  # (class, probability), most likely first
    error: str | None = None


class OnnxPredictor:
    """A file written by the export stage or ``mobitune export``: uint8 images (N, 3, H, W) in, logits out."""

    def __init__(self, path: Path) -> None:
        try:
            self.session = session(path)
        except Exception as exc:  # ONNX Runtime raises its own types for files it cannot load
            reason = str(exc).splitlines()[0]
            raise ModelFileError(f"{path}: not an ONNX model ONNX Runtime can load ({reason})") from None
        inputs, outputs = self.session.get_inputs(), self.session.get_outputs()
        names = ([i.name for i in inputs], [o.name for o in outputs])
        if names != ([INPUT], [OUTPUT]) or inputs[0].type != "tensor(uint8)" or len(inputs[0].shape) != 4:
            found = ", ".join(f"{i.name} {i.type} {i.shape}" for i in inputs)
            raise ModelFileError(
                f"{path}: takes {found}; mobitune predict needs a file of the export stage or `mobitune export` "
                f"({INPUT}: uint8 images (N, 3, H, W), {OUTPUT}: one score per class)"
            )
        metadata = self.session.get_modelmeta().custom_metadata_map
        if CLASSES_KEY not in metadata:
            raise ModelFileError(f"{path}: no class names in its metadata ({CLASSES_KEY}); export it with mobitune")
        self.classes: list[str] = json.loads(metadata[CLASSES_KEY])

    def logits(self, image: np.ndarray) -> np.ndarray:
        return self.session.run([OUTPUT], {INPUT: image[None]})[0][0]


class CheckpointPredictor:
    """A mobitune checkpoint (``finetune.pt``, a sweep's trial): its params and class names are inside it."""

    def __init__(self, path: Path) -> None:
        state = load_checkpoint(path)
        if "params" not in state or "classes" not in state:
            raise ModelFileError(f"{path}: not a mobitune checkpoint (no params/classes); give a trained model")
        params = params_from_dict(state["params"])
        self.classes = list(state["classes"])
        model, _ = load_trained_model(path, params, len(self.classes))
        self.model = PackagedModel(model.eval(), params.model.image_size, params.augment.test_flip).eval()

    @torch.inference_mode()
    def logits(self, image: np.ndarray) -> np.ndarray:
        return self.model(torch.from_numpy(image[None])).numpy()[0]


def load_predictor(path: Path) -> OnnxPredictor | CheckpointPredictor:
    if not path.is_file():
        raise ModelFileError(f"{path}: no such model file; run `dvc repro export` or give --model FILE")
    return OnnxPredictor(path) if path.suffix == ".onnx" else CheckpointPredictor(path)


def read_image(path: Path) -> np.ndarray:
    """The image as uint8 RGB (3, H, W); a clear :class:`MobituneError` for anything else: a format other than
    JPEG or PNG whatever the suffix, or more pixels than ``MAX_IMAGE_PIXELS`` (see :func:`open_image`)."""
    try:
        with open_image(path, str(path)) as image:
            image.load()
            return np.ascontiguousarray(np.asarray(image.convert("RGB")).transpose(2, 0, 1))
    except FileNotFoundError:
        raise MobituneError(f"{path}: no such file") from None
    except UnidentifiedImageError:
        raise MobituneError(f"{path}: not an image mobitune reads (JPEG or PNG, whatever the suffix)") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise MobituneError(f"{path}: a truncated or damaged image ({exc})") from None


def image_files(paths: Iterable[Path]) -> list[Path]:
    """The files given, and the JPEG/PNG files under the folders given (sorted), in order."""
    found: list[Path] = []
    for path in paths:
        if path.is_dir():
            found += sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        else:
            found.append(path)
    return found


def predict(predictor: OnnxPredictor | CheckpointPredictor, images: list[Path], top: int) -> list[Prediction]:
    answers = []
    for path in images:
        try:
            logits = predictor.logits(read_image(path)).astype(np.float64)
        except MobituneError as exc:
            answers.append(Prediction(path, error=str(exc)))
            continue
        probabilities = np.exp(logits - logits.max())
        probabilities /= probabilities.sum()
        best = np.argsort(-probabilities)[:top]
        answers.append(Prediction(path, [(predictor.classes[i], float(probabilities[i])) for i in best]))
    return answers


def csv_rows(answers: list[Prediction], top: int) -> list[dict[str, Any]]:
    """One row per image: its top classes and probabilities, or its error."""
    rows = []
    for answer in answers:
        row: dict[str, Any] = {"image": str(answer.image)}
        for rank in range(1, top + 1):
            name, probability = answer.top[rank - 1] if rank <= len(answer.top) else ("", "")
            row[f"class_{rank}"] = name
            row[f"probability_{rank}"] = probability if probability == "" else round(probability, 6)
        row["error"] = answer.error or ""
        rows.append(row)
    return rows
