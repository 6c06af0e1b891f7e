"""Attacks from outside, each tried against the real component (issue 37): every one must be refused with a
clear error, and nothing written, deleted or leaked where it does not belong. One section per kind of attack."""

from __future__ import annotations

import http.server
import io
import struct
import tarfile
import threading
import zlib
from collections.abc import Iterator
from pathlib import Path

import pytest
from datasets import tar_folder, write_image_folder
from PIL import Image

from mobitune.errors import MobituneError
from mobitune.export.predict import read_image
from mobitune.storage import fetch as fetch_module
from mobitune.storage.fetch import DownloadTooLarge, fetch
from mobitune.training import data as data_module
from mobitune.training.data import DataError, TooLargeError, prepare

# --- untrusted files (issue 37 item 4) ---
# Archives, image folders, downloads and the images a user predicts on are untrusted: each cap of
# mobitune/training/data.py and mobitune/storage/fetch.py is lowered here (monkeypatched) so that a few KiB
# stand for the gigabytes of a real attack, and image decoding must reach no Pillow plugin but PNG and JPEG.

_MIB = 2**20


def _assert_nothing_prepared(out: Path) -> None:
    """The download stage's output is absent and no staging folder is left beside it."""
    assert not out.exists()
    assert [p.name for p in out.parent.iterdir()] == [], "staging files were left behind"


def _zero_member(name: str, size: int) -> tuple[tarfile.TarInfo, io.BytesIO]:
    """A member of ``size`` zero bytes: kilobytes once gzipped, ``size`` once unpacked."""
    info = tarfile.TarInfo(name)
    info.size = size
    return info, io.BytesIO(bytes(size))


def _archive_of_zeros(path: Path, members: dict[str, int]) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for name, size in members.items():
            tar.addfile(*_zero_member(name, size))
    return path


def _png_claiming(width: int, height: int) -> bytes:
    """A valid PNG header that declares ``width`` x ``height`` pixels, with almost no pixel data behind it."""

    def chunk(kind: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")


def _image_bytes(fmt: str) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (32, 32), (200, 30, 30)).save(out, fmt)
    return out.getvalue()


@pytest.fixture
def eps_reached(monkeypatch: pytest.MonkeyPatch) -> list[bytes]:
    """Every time Pillow asks its EPS plugin (which runs Ghostscript) whether it takes a file; must stay empty."""
    Image.init()  # every plugin registered now, so none registers again over the spy
    calls: list[bytes] = []

    def accept(prefix: bytes) -> bool:
        calls.append(prefix[:16])
        return False

    factory, _ = Image.OPEN["EPS"]
    monkeypatch.setitem(Image.OPEN, "EPS", (factory, accept))
    return calls


@pytest.mark.parametrize("where", ["official batch in an archive", "image in an archive", "image in a folder"])
def test_a_member_or_file_over_the_member_cap_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, where: str
) -> None:
    monkeypatch.setattr(data_module, "MAX_MEMBER_BYTES", _MIB)
    if where == "official batch in an archive":
        big = "cifar-10-batches-py/data_batch_1"
        source = _archive_of_zeros(tmp_path / "cifar.tar.gz", {big: 2 * _MIB})
    else:
        tree = write_image_folder(tmp_path / "images", 1, 1)
        (tree / "train" / "cat" / "big.png").write_bytes(bytes(2 * _MIB))
        big = "images/train/cat/big.png"
        source = tree if where == "image in a folder" else tar_folder(tree, tmp_path / "images.tar.gz")
    out = tmp_path / "work" / "cifar10"
    with pytest.raises(TooLargeError) as refused:
        prepare(str(source), None, out)
    message = str(refused.value)
    assert big in message and "is 2 MiB: over the 1 MiB cap (MAX_MEMBER_BYTES" in message
    assert "raise that cap" in message
    _assert_nothing_prepared(out)


def test_an_archive_unpacking_past_the_total_cap_is_refused_before_it_is_inflated(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Members never read count too: skipping one inflates it all the same. The cap is checked on each header,
    so the member that takes the archive past it is refused by its declared size, before it is inflated."""
    monkeypatch.setattr(data_module, "MAX_UNPACKED_BYTES", 3 * _MIB)
    archive = _archive_of_zeros(tmp_path / "bomb.tar.gz", {f"padding/{i}": _MIB for i in range(6)})
    assert archive.stat().st_size < 64 * 1024
    out = tmp_path / "work" / "cifar10"
    with pytest.raises(
        TooLargeError,
        match=r"bomb.tar.gz: unpacks to 4 MiB with member 'padding/3': over the "
        r"3 MiB cap \(MAX_UNPACKED_BYTES",
    ):
        prepare(str(archive), None, out)
    _assert_nothing_prepared(out)


def test_an_image_folder_reading_past_the_total_cap_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    tree = write_image_folder(tmp_path / "images", 2, 1)
    total = sum(f.stat().st_size for f in tree.rglob("*.png"))
    monkeypatch.setattr(data_module, "MAX_UNPACKED_BYTES", total - 1)
    out = tmp_path / "work" / "cifar10"
    with pytest.raises(
        TooLargeError,
        match=r"images: its image files come to .* MiB with .*\.png: over the "
        r".* cap \(MAX_UNPACKED_BYTES",
    ):
        prepare(str(tree), None, out)
    _assert_nothing_prepared(out)
    monkeypatch.setattr(data_module, "MAX_UNPACKED_BYTES", total)
    assert prepare(str(tree), None, out)["train_count"] == 20, "a folder just at the cap is read"


def test_decoded_images_past_the_pixel_total_cap_are_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    tree = write_image_folder(tmp_path / "images", 2, 1)  # 30 images of 32x32 RGB
    monkeypatch.setattr(data_module, "MAX_PIXEL_BYTES", 29 * 3 * 32 * 32)
    out = tmp_path / "work" / "cifar10"
    with pytest.raises(
        TooLargeError,
        match=r"images: its decoded images come to 0.087890\d* MiB with .*\.png: "
        r"over the .* MiB cap \(MAX_PIXEL_BYTES",
    ):
        prepare(str(tree), None, out)
    _assert_nothing_prepared(out)


@pytest.mark.parametrize("fmt", ["EPS", "GIF", "BMP"])
def test_an_image_of_another_format_named_png_is_refused_unread(
    tmp_path: Path, fmt: str, eps_reached: list[bytes]
) -> None:
    tree = write_image_folder(tmp_path / "images", 2, 1)
    disguised = tree / "train" / "cat" / "zzz.png"
    disguised.write_bytes(_image_bytes(fmt))
    out = tmp_path / "work" / "cifar10"
    with pytest.raises(DataError, match=r"zzz.png: not a readable image; only PNG and JPEG files are read"):
        prepare(str(tree), None, out)
    _assert_nothing_prepared(out)
    with pytest.raises(MobituneError, match=r"zzz.png: not an image mobitune reads \(JPEG or PNG"):
        read_image(disguised)
    assert eps_reached == [], "Pillow's EPS plugin was asked to open the file"


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_the_formats_accepted_still_decode(tmp_path: Path, fmt: str, eps_reached: list[bytes]) -> None:
    """The control of the test above: the refusal is of the format, not of every image."""
    path = tmp_path / "photo.png"
    path.write_bytes(_image_bytes(fmt))
    assert read_image(path).shape == (3, 32, 32)
    assert eps_reached == []


def test_a_png_declaring_more_pixels_than_pillow_allows_is_refused(tmp_path: Path) -> None:
    """Pillow's own DecompressionBombError (a header past twice Image.MAX_IMAGE_PIXELS) becomes our refusal."""
    assert 100_000 * 100_000 > 2 * Image.MAX_IMAGE_PIXELS
    tree = write_image_folder(tmp_path / "images", 2, 1)
    bomb = tree / "train" / "cat" / "zzz.png"
    bomb.write_bytes(_png_claiming(100_000, 100_000))
    out = tmp_path / "work" / "cifar10"
    expected = r"zzz.png declares more pixels than Pillow allows .*: over the 67,108,864-pixel cap \(MAX_IMAGE_PIXELS"
    with pytest.raises(TooLargeError, match=expected):
        prepare(str(tree), None, out)
    _assert_nothing_prepared(out)
    with pytest.raises(TooLargeError, match=expected):
        read_image(bomb)


def test_an_image_past_the_pixel_cap_is_refused_from_its_header(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Below Pillow's own limit, the project's cap refuses: checked on the header, before any pixel is decoded."""
    monkeypatch.setattr(data_module, "MAX_IMAGE_PIXELS", 48 * 48)
    tree = write_image_folder(tmp_path / "images", 2, 1)
    (tree / "train" / "cat" / "zzz.png").write_bytes(_png_claiming(64, 64))  # no pixel data: decoding would fail
    out = tmp_path / "work" / "cifar10"
    expected = r"zzz.png is 64x64 pixels: over the 2,304-pixel cap \(MAX_IMAGE_PIXELS in mobitune/training/data.py"
    with pytest.raises(TooLargeError, match=expected):
        prepare(str(tree), None, out)
    _assert_nothing_prepared(out)
    with pytest.raises(TooLargeError, match=expected):
        read_image(tree / "train" / "cat" / "zzz.png")
    assert read_image(next((tree / "test" / "cat").iterdir())).shape == (3, 32, 32), "an image under the cap"


def _download_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "download"
    folder.mkdir()
    return folder


@pytest.mark.e2e
def test_a_download_announcing_more_than_the_cap_is_refused_up_front(
    http_root: tuple[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    base, served = http_root
    monkeypatch.setattr(fetch_module, "MAX_DOWNLOAD_BYTES", 64 * 1024)
    (served / "security-big.tar.gz").write_bytes(bytes(_MIB))
    (served / "security-at-cap.tar.gz").write_bytes(bytes(64 * 1024))
    folder = _download_folder(tmp_path)
    with pytest.raises(DownloadTooLarge) as refused:
        fetch(f"{base}/security-big.tar.gz", folder, key="data.source")
    message = str(refused.value)
    assert message.startswith(f"data.source {base}/security-big.tar.gz: the server announces 1,048,576 bytes")
    assert "the download cap is 65,536 bytes (MAX_DOWNLOAD_BYTES in mobitune/storage/fetch.py)" in message
    assert list(folder.iterdir()) == [], "a partial or scratch file was left behind"
    got = fetch(f"{base}/security-at-cap.tar.gz", folder, key="data.source")
    assert got.stat().st_size == 64 * 1024 and list(folder.iterdir()) == [got], "a file just at the cap is kept"


class _UnannouncedBody(http.server.BaseHTTPRequestHandler):
    """Answers ``GET /<n>`` with n zero bytes and no Content-Length: the body ends when the connection closes,
    so only counting what arrives can bound it."""

    def do_GET(self) -> None:
        size = int(self.path.rsplit("/", 1)[-1])
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.end_headers()
        try:
            for start in range(0, size, 64 * 1024):
                self.wfile.write(bytes(min(64 * 1024, size - start)))
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client stopped reading: what a capped download does

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def unannounced_server() -> Iterator[str]:
    """A loopback HTTP/1.0 server that never says how large its answers are; returns its base URL."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _UnannouncedBody)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.mark.e2e
def test_a_download_sending_past_the_cap_without_a_size_is_cut_off(
    unannounced_server: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(fetch_module, "MAX_DOWNLOAD_BYTES", 64 * 1024)
    folder = _download_folder(tmp_path)
    with pytest.raises(DownloadTooLarge) as refused:
        fetch(f"{unannounced_server}/{4 * _MIB}", folder, key="model.pretrained")
    message = str(refused.value)
    assert f"model.pretrained {unannounced_server}/{4 * _MIB}: the server kept sending past the cap" in message
    assert "download it yourself and point model.pretrained at the copy, or raise that cap" in message
    assert list(folder.iterdir()) == [], "a partial or scratch file was left behind"
    out = tmp_path / "work" / "cifar10"
    with pytest.raises(DownloadTooLarge):
        prepare(f"{unannounced_server}/{4 * _MIB}", None, out)
    _assert_nothing_prepared(out)
    got = fetch(f"{unannounced_server}/{64 * 1024}", folder, key="model.pretrained")
    assert got.stat().st_size == 64 * 1024, "an answer just at the cap is kept whole"
