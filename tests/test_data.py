"""The download stage's library: every source kind, and every way a source can be bad.

Archives are built in the official format by tests/datasets.py and served from
a local file, a loopback HTTP server and the loopback S3 server.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest
from datasets import CLASSES, tar_folder, write_image_folder
from helpers import closed_port_url

from mobitune.storage.fetch import FetchError
from mobitune.training.data import DataError, decode, load_dataset, prepare


def md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def assert_nothing_written(out: Path) -> None:
    assert not out.exists()
    assert [p.name for p in out.parent.iterdir()] == [], "staging files were left behind"


def test_official_archive_from_a_local_path(cifar_archive: Path, tmp_path: Path) -> None:
    out = tmp_path / "data" / "cifar10"
    meta = prepare(str(cifar_archive), md5(cifar_archive), out)
    assert meta["format"] == "cifar10-python"
    assert meta["classes"] == CLASSES
    assert (meta["train_count"], meta["test_count"]) == (1000, 500)
    assert meta["sha256"] == hashlib.sha256(cifar_archive.read_bytes()).hexdigest()
    assert sorted(p.name for p in out.iterdir()) == [
        "meta.json",
        "test_images.npy",
        "test_labels.npy",
        "train_images.npy",
        "train_labels.npy",
    ]
    dataset = load_dataset(out)
    assert dataset.train.images.dtype == np.uint8 and dataset.train.images.shape == (1000, 3, 32, 32)
    assert dataset.train.labels.dtype == np.int64
    # pixels are the archive's, row-major RGB planes exactly as the official batches store them
    with tarfile.open(cifar_archive) as tar:
        batch = pickle.loads(tar.extractfile("cifar-10-batches-py/data_batch_1").read(), encoding="bytes")
    assert np.array_equal(dataset.train.images[:200].reshape(200, -1), batch[b"data"])
    assert dataset.train.labels[:200].tolist() == batch[b"labels"]
    assert json.loads((out / "meta.json").read_text())["train_class_counts"] == [100] * 10


def test_limits_keep_the_first_images(cifar_archive: Path, tmp_path: Path) -> None:
    prepare(str(cifar_archive), None, tmp_path / "c")
    full, limited = load_dataset(tmp_path / "c"), load_dataset(tmp_path / "c", 30, 20)
    assert len(limited.train.labels) == 30 and len(limited.test.labels) == 20
    assert np.array_equal(limited.train.images, full.train.images[:30])


def test_file_url_and_http_mirror(cifar_archive: Path, tmp_path: Path, http_root: tuple[str, Path]) -> None:
    base, root = http_root
    (root / "mirror").mkdir(exist_ok=True)
    (root / "mirror" / cifar_archive.name).write_bytes(cifar_archive.read_bytes())
    by_url = prepare(cifar_archive.as_uri(), md5(cifar_archive), tmp_path / "a")
    by_http = prepare(f"{base}/mirror/{cifar_archive.name}", md5(cifar_archive), tmp_path / "b")
    assert by_url["sha256"] == by_http["sha256"]
    assert np.array_equal(np.load(tmp_path / "a/train_images.npy"), np.load(tmp_path / "b/train_images.npy"))


def test_s3_object(cifar_archive: Path, tmp_path: Path, s3) -> None:
    s3.client().put_object(Bucket=s3.bucket("datasets"), Key="cifar/c.tar.gz", Body=cifar_archive.read_bytes())
    meta = prepare("s3://datasets/cifar/c.tar.gz", md5(cifar_archive), tmp_path / "c")
    assert meta["source"] == "s3://datasets/cifar/c.tar.gz" and meta["train_count"] == 1000


def test_image_folder_tree_and_tarball(tmp_path: Path) -> None:
    tree = write_image_folder(tmp_path / "images", train_per_class=6, test_per_class=3)
    archive = tar_folder(tree, tmp_path / "images.tar.gz", arcname="my-images")
    from_tree = prepare(str(tree), None, tmp_path / "t")
    from_tar = prepare(str(archive), None, tmp_path / "a")
    for meta in (from_tree, from_tar):
        assert meta["format"] == "image-folder"
        assert meta["classes"] == sorted(CLASSES)
        assert (meta["train_count"], meta["test_count"]) == (60, 30)
    assert np.array_equal(np.load(tmp_path / "t/train_images.npy"), np.load(tmp_path / "a/train_images.npy"))
    labels = np.load(tmp_path / "t/train_labels.npy")
    assert len(set(labels[:20].tolist())) > 5, "image folders are shuffled so that a limit keeps every class"


def test_jpeg_folder_one_level_down(tmp_path: Path) -> None:
    write_image_folder(tmp_path / "download" / "cifar10-jpeg", 2, 1, fmt="jpg")
    train, test, classes, fmt = decode(tmp_path / "download")
    assert fmt == "image-folder" and train.images.shape == (20, 3, 32, 32) and len(test.labels) == 10


# ------------------------------------------------------------------ bad input


def test_unreachable_http_source(tmp_path: Path) -> None:
    url = closed_port_url()
    with pytest.raises(FetchError) as caught:
        prepare(url, None, tmp_path / "data" / "cifar10")
    assert f"data.source {url} is unreachable" in str(caught.value)
    assert "dvc exp run -S data.source=/path/to/file" in str(caught.value)
    assert_nothing_written(tmp_path / "data" / "cifar10")


def test_http_404(http_root: tuple[str, Path], tmp_path: Path) -> None:
    with pytest.raises(FetchError, match="the server answered HTTP 404"):
        prepare(f"{http_root[0]}/missing.tar.gz", None, tmp_path / "data" / "cifar10")
    assert_nothing_written(tmp_path / "data" / "cifar10")


def test_missing_local_file(tmp_path: Path) -> None:
    with pytest.raises(FetchError, match=r"data.source .*nope.tar.gz: no such file or folder"):
        prepare(str(tmp_path / "nope.tar.gz"), None, tmp_path / "data" / "cifar10")


def test_missing_s3_object_and_unreachable_endpoint(tmp_path: Path, s3, monkeypatch) -> None:
    s3.bucket("datasets")
    with pytest.raises(FetchError, match="s3://datasets/none.tar.gz not found"):
        prepare("s3://datasets/none.tar.gz", None, tmp_path / "data" / "cifar10")
    endpoint = closed_port_url("")
    monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint)
    with pytest.raises(FetchError, match=f"S3 endpoint {endpoint} is unreachable"):
        prepare("s3://datasets/c.tar.gz", None, tmp_path / "data" / "cifar10")
    assert_nothing_written(tmp_path / "data" / "cifar10")


def test_wrong_checksum(cifar_archive: Path, tmp_path: Path) -> None:
    with pytest.raises(DataError) as caught:
        prepare(str(cifar_archive), "c58f30108f718f92721af3b95e74349a", tmp_path / "data" / "cifar10")
    message = str(caught.value)
    assert "MD5 checksum mismatch (expected c58f30108f718f92721af3b95e74349a" in message
    assert f"set data.md5 to {md5(cifar_archive)}" in message
    assert_nothing_written(tmp_path / "data" / "cifar10")


def test_truncated_archive(cifar_archive: Path, tmp_path: Path) -> None:
    truncated = tmp_path / "truncated.tar.gz"
    truncated.write_bytes(cifar_archive.read_bytes()[: cifar_archive.stat().st_size // 2])
    out = tmp_path / "data" / "cifar10"
    with pytest.raises(DataError, match="truncated or corrupt"):
        prepare(str(truncated), None, out)
    assert_nothing_written(out)


def test_not_an_archive(tmp_path: Path) -> None:
    bogus = tmp_path / "cifar.tar.gz"
    bogus.write_text("<html>not found</html>")
    out = tmp_path / "data" / "cifar10"
    with pytest.raises(DataError, match="cifar.tar.gz: not a .*tar archive"):
        prepare(str(bogus), None, out)
    assert_nothing_written(out)


def _tar_with(path: Path, members: list[tuple[tarfile.TarInfo, bytes | None]]) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for info, payload in members:
            if payload is not None:
                info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload) if payload is not None else None)
    return path


def test_wrong_layout(tmp_path: Path) -> None:
    archive = _tar_with(tmp_path / "x.tar.gz", [(tarfile.TarInfo("photos/cat.png"), b"x")])
    with pytest.raises(DataError, match="wrong layout; expected a CIFAR-10 python archive"):
        prepare(str(archive), None, tmp_path / "data" / "cifar10")
    (tmp_path / "tree" / "pictures").mkdir(parents=True)
    with pytest.raises(DataError, match="wrong layout; expected train/<class>"):
        prepare(str(tmp_path / "tree"), None, tmp_path / "data" / "cifar10")


def test_incomplete_official_archive(cifar_archive: Path, tmp_path: Path) -> None:
    with tarfile.open(cifar_archive) as tar:
        kept = [(m, tar.extractfile(m).read() if m.isfile() else None) for m in tar if "test_batch" not in m.name]
    archive = _tar_with(tmp_path / "partial.tar.gz", kept)
    with pytest.raises(DataError, match="cifar-10-batches-py/ lacks test_batch"):
        prepare(str(archive), None, tmp_path / "data" / "cifar10")


def test_empty_class_folder(tmp_path: Path) -> None:
    tree = write_image_folder(tmp_path / "images", 2, 1)
    for image in (tree / "test" / "dog").iterdir():
        image.unlink()
    with pytest.raises(DataError, match="class folder test/dog has no .png/.jpg images"):
        prepare(str(tree), None, tmp_path / "data" / "cifar10")
    with pytest.raises(DataError, match="class folder test/dog has no .png/.jpg images"):
        prepare(str(tar_folder(tree, tmp_path / "i.tar.gz")), None, tmp_path / "data" / "cifar10")
    assert_nothing_written(tmp_path / "data" / "cifar10")


def test_unreadable_image(tmp_path: Path) -> None:
    tree = write_image_folder(tmp_path / "images", 2, 1)
    (tree / "train" / "cat" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    with pytest.raises(DataError, match=r"broken.png: not a readable image"):
        prepare(str(tree), None, tmp_path / "data" / "cifar10")


def test_mixed_image_sizes(tmp_path: Path) -> None:
    from PIL import Image

    tree = write_image_folder(tmp_path / "images", 2, 1)
    Image.new("RGB", (64, 64)).save(tree / "train" / "cat" / "zzz.png")
    with pytest.raises(DataError, match="zzz.png: image is 64x64, the others are 32x32"):
        prepare(str(tree), None, tmp_path / "data" / "cifar10")


@pytest.mark.parametrize(
    ("member", "message"),
    [
        ("../evil.txt", "would escape the target folder"),
        ("/etc/evil.txt", "would escape the target folder"),
        ("images/train/../../evil.txt", "would escape the target folder"),
    ],
)
def test_path_escaping_members_are_refused(tmp_path: Path, member: str, message: str) -> None:
    archive = _tar_with(tmp_path / "evil.tar.gz", [(tarfile.TarInfo(member), b"owned")])
    work = tmp_path / "work"
    work.mkdir()
    with pytest.raises(DataError, match=message):
        prepare(str(archive), None, work / "data" / "cifar10")
    assert not (tmp_path / "evil.txt").exists() and not list(work.rglob("evil.txt"))


def test_symlink_out_of_the_tree_is_refused(tmp_path: Path) -> None:
    link = tarfile.TarInfo("images/train/cat/escape.png")
    link.type, link.linkname = tarfile.SYMTYPE, "../../../../etc/passwd"
    archive = _tar_with(tmp_path / "link.tar.gz", [(link, None)])
    with pytest.raises(DataError, match="points outside the archive"):
        prepare(str(archive), None, tmp_path / "data" / "cifar10")


def test_pickles_that_would_run_code_are_refused(cifar_archive: Path, tmp_path: Path) -> None:
    class Exploit:
        def __reduce__(self):
            return (os.system, ("touch pwned",))

    with tarfile.open(cifar_archive) as tar:
        kept = [(m, tar.extractfile(m).read() if m.isfile() else None) for m in tar]
    kept = [(m, pickle.dumps(Exploit()) if m.name.endswith("data_batch_1") else p) for m, p in kept]
    archive = _tar_with(tmp_path / "evil.tar.gz", kept)
    with pytest.raises(DataError, match="data_batch_1: not a CIFAR-10 batch .*refusing to load"):
        prepare(str(archive), None, tmp_path / "data" / "cifar10")
    assert not Path("pwned").exists()


def test_folder_source_with_an_md5(tmp_path: Path) -> None:
    tree = write_image_folder(tmp_path / "images", 1, 1)
    with pytest.raises(DataError, match="data.md5 is set but .* is a folder; set data.md5 to null"):
        prepare(str(tree), "c58f30108f718f92721af3b95e74349a", tmp_path / "data" / "cifar10")


def test_a_failed_download_keeps_the_previous_output(cifar_archive: Path, tmp_path: Path) -> None:
    out = tmp_path / "data" / "cifar10"
    prepare(str(cifar_archive), None, out)
    before = (out / "train_images.npy").read_bytes()
    with pytest.raises(FetchError):
        prepare(closed_port_url(), None, out)
    assert (out / "train_images.npy").read_bytes() == before
