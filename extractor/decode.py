"""Decode stage: one image file -> its sha256 and uint8 RGB pixels at the target size
(or grayscale ones, for CNNs trained with --color-mode grayscale).

Pixels equal `keras.utils.load_img(path, target_size=(s, s), interpolation="bilinear")`
for every image Keras reads correctly. Two deliberate differences, both fixes:
- the EXIF orientation tag is applied (a phone photo is embedded the way it is seen);
- 16-bit images are scaled to 8 bits (Pillow's plain conversion clips them to white).
Pillow's decompression-bomb limit stays in force: such files are refused, not decoded.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import stat
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .settings import DEFAULT_COLOR_MODE

log = logging.getLogger("headstart")

ORIENTATION_TAG = 0x0112
_SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N")
_TRANSPOSING_ORIENTATIONS = (5, 6, 7, 8)  # rotated by 90 degrees: width and height swap


@dataclass(frozen=True)
class DecodedImage:
    sha256: str
    width: int  # original size, as displayed (after EXIF orientation)
    height: int
    pixels: np.ndarray  # uint8, (size, size, 3), or (size, size, 1) in grayscale


@dataclass(frozen=True)
class UnchangedImage:
    """The file's bytes match the row already in the store: nothing to decode."""

    sha256: str


class DecodeError(Exception):
    """The file could not be turned into pixels; the message is the readable reason."""


def open_regular_file(location: Path) -> BinaryIO:
    """Open a file for reading; anything but a regular file (a FIFO, a device, a socket
    swapped in since the scan) is refused before a byte is read (O_NONBLOCK: a FIFO cannot
    stall the open)."""
    from .safe_files import kind_of

    try:
        fd = os.open(location, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as error:
        if isinstance(error, FileNotFoundError) and os.path.islink(location):
            raise DecodeError("broken symbolic link") from None
        raise DecodeError(f"{CANNOT_READ}: {error.strerror or error}") from None
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode):
        os.close(fd)
        raise DecodeError(f"not a regular file (a {kind_of(info)}); skipped")
    os.set_blocking(fd, True)
    return open(fd, "rb")


def file_sha256(location: Path) -> str:
    """The sha256 of a file's bytes, read in chunks (memory stays flat for any size)."""
    with open_regular_file(location) as handle:
        try:
            return hashlib.file_digest(handle, "sha256").hexdigest()
        except OSError as error:
            raise DecodeError(f"{CANNOT_READ}: {error.strerror or error}") from None


def is_image_file(location: Path) -> bool:
    """Whether Pillow recognises the file's header as an image (only the header is read).
    Raises DecodeError when the file cannot be read at all."""
    with open_regular_file(location) as handle:
        try:
            _check_header(handle)
        except DecodeError as error:
            if str(error).startswith(CANNOT_READ):
                raise
            return False
    return True


CANNOT_READ = "cannot read file"  # the reason's start when the file is there but unreadable


def decode_outcome(
    location: Path,
    size: int,
    known_sha256: Collection[str] = (),
    color_mode: str = DEFAULT_COLOR_MODE,
    fast: bool = False,
) -> DecodedImage | UnchangedImage | DecodeError:
    """load_image's result, or the DecodeError saying why not: a decoder bug or a hostile
    file costs one image, never the run."""
    try:
        return load_image(location, size, known_sha256, color_mode, fast)
    except DecodeError as error:
        return error
    except Exception as error:
        return DecodeError(f"unexpected decoder error: {type(error).__name__}: {error}")


def load_image(
    location: Path,
    size: int,
    known_sha256: Collection[str] = (),
    color_mode: str = DEFAULT_COLOR_MODE,
    fast: bool = False,
) -> DecodedImage | UnchangedImage:
    """Read, hash and decode one file. Raises DecodeError with a readable reason.

    When the sha256 is one of `known_sha256` (its rows in the store), decoding is skipped
    (and the file is only hashed, in chunks). A file whose header is not an image's is
    refused after reading its header, not its whole content.
    """
    if known_sha256:
        sha256 = file_sha256(location)
        if sha256 in known_sha256:
            return UnchangedImage(sha256)
    with open_regular_file(location) as handle:
        _check_header(handle)
        try:
            handle.seek(0)
            data = handle.read()
        except OSError as error:
            raise DecodeError(f"{CANNOT_READ}: {error.strerror or error}") from None
    sha256 = hashlib.sha256(data).hexdigest()
    if sha256 in known_sha256:  # changed between the two reads, back to the stored bytes
        return UnchangedImage(sha256)
    width, height, pixels = decode_image(data, size, color_mode, fast)
    if width * height > (Image.MAX_IMAGE_PIXELS or width * height):
        log.warning("%s is a very large image (%d megapixels); decoded, slowly", location,
                    width * height // 10**6)  # fmt: skip
    return DecodedImage(sha256, width, height, pixels)


def _check_header(handle: BinaryIO) -> None:
    """Raise DecodeError for an empty file or one no Pillow format recognises. The file's
    first bytes are matched against each format's signature, as Pillow does first; only
    when none matches is the header parsed by the formats that have no signature (TGA...)."""
    try:
        prefix = handle.read(16)
        handle.seek(0)
    except OSError as error:
        raise DecodeError(f"{CANNOT_READ}: {error.strerror or error}") from None
    if not prefix:
        raise DecodeError("empty file (0 bytes)")
    if _has_image_signature(prefix):
        return  # decode_image reports a broken image with its reason
    try:
        Image.open(handle)  # reads the header only
    except UnidentifiedImageError:
        raise DecodeError(
            "not an image Pillow can read (unknown format or corrupt header)"
        ) from None
    except Exception:  # recognised but broken, or a bomb: decode_image says why
        return


def _has_image_signature(prefix: bytes) -> bool:
    Image.init()
    for _, accept in Image.OPEN.values():
        try:
            if accept is not None and accept(prefix):
                return True
        except Exception:  # a plug-in's check that cannot handle this prefix
            continue
    return False


def decode_image(
    data: bytes, size: int, color_mode: str = DEFAULT_COLOR_MODE, fast: bool = False
) -> tuple[int, int, np.ndarray]:
    """Bytes -> (width, height, uint8 pixels of shape (size, size, 3)); in grayscale the
    resized RGB image's luma (Pillow's "L", as keras load_img's color_mode="grayscale"),
    shape (size, size, 1). With `fast`, a JPEG at least twice `size` on its short side is
    decoded at 1/2, 1/4 or 1/8 scale by libjpeg (Pillow's draft mode), never below `size`,
    then resized as usual: much less decoding work for slightly different pixels."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            orientation = image.getexif().get(ORIENTATION_TAG, 1)
            width, height = image.size
            if orientation in _TRANSPOSING_ORIENTATIONS:
                width, height = height, width  # the size as displayed
            if fast and image.format == "JPEG" and min(image.size) >= 2 * size:
                image.draft("RGB", (size, size))
            if orientation != 1:
                image = ImageOps.exif_transpose(image)  # (without a tag it only copies)
            rgb = _to_rgb(image)
            if rgb.size != (size, size):
                rgb = rgb.resize((size, size), Image.Resampling.BILINEAR)
            if color_mode == "grayscale":
                return width, height, np.asarray(rgb.convert("L"), dtype=np.uint8)[..., None]
            return width, height, np.asarray(rgb, dtype=np.uint8)
    except Image.DecompressionBombError as error:
        raise DecodeError(f"refused by Pillow's decompression-bomb limit: {error}") from None
    except UnidentifiedImageError:
        raise DecodeError(
            "not an image Pillow can read (unknown format or corrupt header)"
        ) from None
    except (OSError, SyntaxError, ValueError, EOFError) as error:
        raise DecodeError(f"corrupt or truncated image: {error}") from None


def _to_rgb(image: Image.Image) -> Image.Image:
    if image.mode in _SIXTEEN_BIT_MODES:
        # Scale 0..65535 to 0..255; Pillow's convert("RGB") would clip at 255 instead.
        values = np.asarray(image, dtype=np.int64)
        gray = (np.clip(values, 0, 65535) >> 8).astype(np.uint8)
        return Image.fromarray(gray).convert("RGB")
    if image.mode != "RGB":
        return image.convert("RGB")
    return image
