"""What an untrusted data source or image may cost, and the one way to open an untrusted image.

Each ``MAX_*`` cap is checked before the bytes or pixels it bounds are read; each refusal is a
:class:`TooLargeError` that names the file and the cap to raise if the data is what the user means. Images open
as PNG or JPEG only, whatever their names say, so no other Pillow decoder (EPS runs Ghostscript) is reached.
"""

from __future__ import annotations

from pathlib import Path
from typing import BinaryIO

from PIL import Image

from mobitune.errors import MobituneError

# What an untrusted source may cost. Each refusal names the cap; raise it here for a genuine data set above it.
# One archive member or folder file read whole into memory: the official archive's largest member is a 31 MB
# batch and a data set's image is kilobytes; 256 MiB is 8x that batch.
MAX_MEMBER_BYTES = 256 * 2**20
# All the members of an archive together as they unpack (the ones skipped too: passing them inflates them as
# well), or all the image files of a folder read: the official archive unpacks to 178 MB and its JPEG copy to
# less; 4 GiB leaves room for data sets of larger images and stops a gzip bomb before it is inflated.
MAX_UNPACKED_BYTES = 4 * 2**30
# One image's pixels, known from its header before any is decoded: CIFAR-10's are 32x32 and a photo for
# `mobitune predict` is up to ~60 MP (a 9504x6336 full-frame camera); 64 Mi pixels (192 MiB as RGB) holds
# both and stays under Pillow's own bomb warning (89 M pixels).
MAX_IMAGE_PIXELS = 64 * 2**20
# All the decoded images of an image-folder data set together, as uint8 RGB: CIFAR-10's 60,000 32x32 images
# are 184 MB; 4 GiB holds 96x96 images by the hundred thousand (decoding keeps ~3 copies at its peak).
MAX_PIXEL_BYTES = 4 * 2**30
IMAGE_FORMATS = ("PNG", "JPEG")  # the formats Pillow may try: no other decoder (EPS runs Ghostscript) is reached


class DataError(MobituneError):
    """The data source cannot be fetched or is not a valid data set."""


class TooLargeError(DataError):
    """An untrusted source (archive, member, file, image) goes over one of the ``MAX_*`` caps."""


def mib(size: int) -> str:
    return f"{size / 2**20:g} MiB"


def over_cap(subject: str, limit: str, cap: str) -> TooLargeError:
    """The refusal of ``subject`` (which names the file), saying which cap it passes and what to do."""
    return TooLargeError(
        f"{subject}: over the {limit} cap ({cap} in mobitune/training/untrusted.py), refused; "
        "if this is the data you mean, raise that cap"
    )


class Budget:
    """What one source has cost so far against a cap; the claim that takes it past the cap is refused."""

    def __init__(self, limit: int, cap: str, source: str, measure: str) -> None:
        self.limit, self.cap = limit, cap
        self.source, self.measure = source, measure  # "x.tar.gz", "unpacks to": what the whole source comes to
        self.used = 0

    def take(self, size: int, at: str) -> None:
        self.used += size
        if self.used > self.limit:
            subject = f"{self.source}: {self.measure} {mib(self.used)} with {at}"
            raise over_cap(subject, mib(self.limit), self.cap)


def open_image(source: Path | BinaryIO, name: str) -> Image.Image:
    """Open an untrusted image for decoding: as PNG or JPEG only, whatever ``name``'s suffix says (Pillow's
    ``UnidentifiedImageError`` for any other format: no other decoder is reached), and refused with
    :class:`TooLargeError` past ``MAX_IMAGE_PIXELS``, from its header, before any pixel is decoded."""
    try:
        image = Image.open(source, formats=IMAGE_FORMATS)
    except Image.DecompressionBombError as exc:  # Pillow's own cap, above ours: a header past both
        subject = f"{name} declares more pixels than Pillow allows ({str(exc).rstrip('.')})"
        raise over_cap(subject, f"{MAX_IMAGE_PIXELS:,}-pixel", "MAX_IMAGE_PIXELS") from None
    if image.width * image.height > MAX_IMAGE_PIXELS:
        image.close()
        subject = f"{name} is {image.width}x{image.height} pixels"
        raise over_cap(subject, f"{MAX_IMAGE_PIXELS:,}-pixel", "MAX_IMAGE_PIXELS")
    return image
