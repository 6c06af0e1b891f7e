"""Shipping the model: ONNX files run by ONNX Runtime and `mobitune predict` on real image files. `mobitune
export` of a sweep's best trial is tested in test_sweep_flows.py, on the local backend's sweep."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mobitune import cli
from mobitune.export.onnx_model import export_onnx, onnx_logits, torch_logits
from mobitune.export.predict import CheckpointPredictor, OnnxPredictor, predict
from mobitune.params import Params
from mobitune.training.model import build_model

CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


@pytest.fixture(scope="module")
def model_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A small model (random weights) as an ONNX file and as a mobitune checkpoint."""
    folder = tmp_path_factory.mktemp("model")
    params = Params().override(["model.pretrained=none", "model.hidden_units=16", "model.image_size=48"])
    torch.manual_seed(0)
    model = build_model(params.model, len(CLASSES)).eval()
    export_onnx(model, params.model.image_size, CLASSES, folder / "model.onnx")
    state = {"params": params.to_dict(), "classes": CLASSES, "model": model.state_dict(), "history": []}
    torch.save(state, folder / "finetune.pt")
    return {"onnx": folder / "model.onnx", "checkpoint": folder / "finetune.pt"}


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """JPEG and PNG files of several sizes and modes, a truncated JPEG, a text file named .jpg, and notes."""
    folder = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (30, 40, 3), dtype=np.uint8)).save(folder / "rgb.png")
    Image.fromarray(rng.integers(0, 256, (48, 64), dtype=np.uint8)).save(folder / "gray.jpg")
    Image.fromarray(rng.integers(0, 256, (20, 20, 4), dtype=np.uint8), "RGBA").save(folder / "alpha.png")
    (folder / "nested").mkdir()
    Image.fromarray(rng.integers(0, 256, (300, 200, 3), dtype=np.uint8)).save(folder / "nested" / "large.JPG")
    whole = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(whole, "JPEG")
    (folder / "truncated.jpg").write_bytes(whole.getvalue()[: len(whole.getvalue()) // 2])
    (folder / "fake.jpg").write_text("not an image\n")
    (folder / "notes.txt").write_text("skipped: not a JPEG or PNG\n")
    return folder


def test_predict_answers_every_image_and_names_each_bad_one(
    model_files: dict[str, Path], images: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "answers.csv"
    with pytest.raises(SystemExit) as exited:
        cli.main(["predict", str(images), "--model", str(model_files["onnx"]), "--csv", str(out)])
    assert exited.value.code == 1, "an image could not be read"
    errors = capsys.readouterr().err.splitlines()
    assert len(errors) == 2
    assert "truncated.jpg: a truncated or damaged image" in errors[1] or "truncated.jpg: a truncated" in errors[0]
    assert any("fake.jpg: not an image" in line for line in errors)
    rows = {Path(row["image"]).name: row for row in csv.DictReader(out.open())}
    assert set(rows) == {"rgb.png", "gray.jpg", "alpha.png", "large.JPG", "truncated.jpg", "fake.jpg"}
    for name in ("rgb.png", "gray.jpg", "alpha.png", "large.JPG"):
        row = rows[name]
        probabilities = [float(row[f"probability_{rank}"]) for rank in (1, 2, 3)]
        assert row["error"] == "" and {row[f"class_{rank}"] for rank in (1, 2, 3)} <= set(CLASSES)
        assert probabilities == sorted(probabilities, reverse=True) and 0 < sum(probabilities) <= 1 + 1e-6
    assert rows["fake.jpg"]["class_1"] == "" and "not an image" in rows["fake.jpg"]["error"]

    cli.main(["predict", str(images / "rgb.png"), "--model", str(model_files["onnx"]), "--top", "2"])
    line = capsys.readouterr().out.strip()
    assert line.startswith(f"{images / 'rgb.png'}: ") and line.count("%") == 2


def test_the_onnx_file_answers_as_the_checkpoint_does(model_files: dict[str, Path], images: Path) -> None:
    """Normalisation and resize inside the graph: any size in, PyTorch's probabilities out."""
    files = [images / "rgb.png", images / "gray.jpg", images / "alpha.png", images / "nested" / "large.JPG"]
    onnx = predict(OnnxPredictor(model_files["onnx"]), files, 10)
    checkpoint = predict(CheckpointPredictor(model_files["checkpoint"]), files, 10)
    for ours, theirs in zip(onnx, checkpoint, strict=True):
        assert [name for name, _ in ours.top] == [name for name, _ in theirs.top]
        assert np.allclose([p for _, p in ours.top], [p for _, p in theirs.top], atol=1e-5)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # the legacy exporter, for a model of another shape
def test_a_model_file_of_another_shape_is_refused_by_name(
    images: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    other = tmp_path / "other.onnx"
    torch.onnx.export(torch.nn.Conv2d(3, 4, 3), (torch.zeros(1, 3, 8, 8),), str(other), dynamo=False)
    not_a_model = tmp_path / "model.onnx"
    not_a_model.write_text("hello\n")
    not_a_checkpoint = tmp_path / "model.pt"
    not_a_checkpoint.write_bytes(b"\0" * 64)
    for model, message in (
        (other, "mobitune predict needs a file of the export stage"),
        (not_a_model, "not an ONNX model ONNX Runtime can load"),
        (not_a_checkpoint, "not a PyTorch checkpoint"),
        (tmp_path / "missing.onnx", "no such model file; run `dvc repro export`"),
    ):
        with pytest.raises(SystemExit) as exited:
            cli.main(["predict", str(images / "rgb.png"), "--model", str(model)])
        stderr = capsys.readouterr().err
        assert exited.value.code == 2 and str(model) in stderr and message in stderr, stderr


def test_with_test_flips_the_file_answers_the_mean_of_each_image_and_its_mirror(
    calibrated_weights: Path, tmp_path: Path
) -> None:
    """As the training's evaluation with ``augment.test_flip`` scores the model."""
    model = build_model(Params().override([f"model.pretrained={calibrated_weights}"]).model, len(CLASSES)).eval()
    export_onnx(model, 32, CLASSES, tmp_path / "model.onnx", test_flip=True)
    images = np.random.default_rng(0).integers(0, 256, (4, 3, 32, 40), dtype=np.uint8)
    plain = torch_logits(model, 32, images)
    mirrored = torch_logits(model, 32, np.ascontiguousarray(images[..., ::-1]))
    np.testing.assert_allclose(onnx_logits(tmp_path / "model.onnx", images), (plain + mirrored) / 2, atol=1e-4)
    assert not np.allclose(plain, mirrored, atol=1e-3)
