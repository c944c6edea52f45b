"""Generators for the images tests need: good ones in every mode and format, and the
corpus of bad inputs listed in DESIGN.md ("Testing")."""

from __future__ import annotations

import io
import os
import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

ORIENTATION_TAG = 0x0112


def gradient(width: int, height: int, seed: int = 0) -> np.ndarray:
    """A smooth colour image with a random blob: resizing it is a real test of resampling."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    base = np.stack(
        [
            x * 255 / max(width - 1, 1),
            y * 255 / max(height - 1, 1),
            (x + y) * 127 / max(width + height - 2, 1),
        ],
        axis=-1,
    )
    noise = rng.normal(0, 20, size=(height, width, 3))
    return np.clip(base + noise, 0, 255).astype(np.uint8)


def write_mixed_good_images(folder: Path, count: int = 24) -> list[Path]:
    """`count` readable images of mixed sizes, formats and modes, in two class folders."""
    writers = [
        _jpeg_rgb,
        _png_rgb,
        _png_rgba,
        _png_palette,
        _png_gray,
        _bmp,
        _webp,
        _tiff,
        _jpeg_cmyk,
        _gif_still,
        _png_la,
    ]
    paths = []
    for index in range(count):
        label = "a" if index % 2 else "b"
        (folder / label).mkdir(parents=True, exist_ok=True)
        width, height = 40 + (index * 37) % 300, 50 + (index * 53) % 250
        pixels = gradient(width, height, seed=index)
        writer = writers[index % len(writers)]
        paths.append(writer(folder / label / f"img_{index:03d}", pixels))
    return paths


def _jpeg_rgb(stem, pixels):
    return _save(Image.fromarray(pixels), stem.with_suffix(".jpg"), quality=92)


def _png_rgb(stem, pixels):
    return _save(Image.fromarray(pixels), stem.with_suffix(".png"))


def _png_rgba(stem, pixels):
    alpha = np.full(pixels.shape[:2], 128, np.uint8)
    return _save(Image.fromarray(np.dstack([pixels, alpha])), stem.with_suffix(".png"))


def _png_la(stem, pixels):
    return _save(Image.fromarray(pixels).convert("LA"), stem.with_suffix(".png"))


def _png_palette(stem, pixels):
    return _save(
        Image.fromarray(pixels).convert("P", palette=Image.Palette.ADAPTIVE),
        stem.with_suffix(".png"),
    )


def _png_gray(stem, pixels):
    return _save(Image.fromarray(pixels).convert("L"), stem.with_suffix(".png"))


def _bmp(stem, pixels):
    return _save(Image.fromarray(pixels), stem.with_suffix(".bmp"))


def _webp(stem, pixels):
    return _save(Image.fromarray(pixels), stem.with_suffix(".webp"), lossless=True)


def _tiff(stem, pixels):
    return _save(Image.fromarray(pixels), stem.with_suffix(".tiff"))


def _jpeg_cmyk(stem, pixels):
    return _save(Image.fromarray(pixels).convert("CMYK"), stem.with_suffix(".jpg"))


def _gif_still(stem, pixels):
    return _save(Image.fromarray(pixels).convert("P"), stem.with_suffix(".gif"))


def _save(image: Image.Image, path: Path, **options) -> Path:
    image.save(path, **options)
    return path


# --- odd but readable ---------------------------------------------------------------------


def png_16bit(path: Path, width=64, height=48) -> np.ndarray:
    """A 16-bit grayscale PNG; returns its 16-bit values."""
    values = (np.arange(width * height).reshape(height, width) * 20 % 65536).astype(np.uint16)
    Image.fromarray(values).save(path)
    return values


def jpeg_with_orientation(path: Path, pixels: np.ndarray, orientation: int) -> None:
    exif = Image.Exif()
    exif[ORIENTATION_TAG] = orientation
    Image.fromarray(pixels).save(path, exif=exif.tobytes(), quality=95)


def animated_gif(path: Path, size=(50, 40)) -> list[np.ndarray]:
    """Two frames: red then blue. Returns the frames' RGB pixels."""
    frames = [Image.new("RGB", size, (255, 0, 0)), Image.new("RGB", size, (0, 0, 255))]
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=100, loop=0)
    return [np.asarray(frame) for frame in frames]


# --- bad inputs ---------------------------------------------------------------------------


def decompression_bomb_png(path: Path, side: int = 20_000) -> None:
    """A PNG whose header claims side x side pixels (over Pillow's limit); a few bytes long."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data))
            + kind
            + data
            + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
        )

    header = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)
    body = zlib.compress(b"\x00" * 64)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", body) + chunk(b"IEND", b"")
    )


def truncated_jpeg(path: Path) -> None:
    buffer = io.BytesIO()
    Image.fromarray(gradient(200, 150)).save(buffer, format="JPEG")
    path.write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])


def write_bad_inputs(folder: Path) -> dict[str, str]:
    """Every kind of unreadable input, in one class folder. Returns path -> expected reason
    fragment (paths relative to `folder`)."""
    bad = folder / "bad"
    bad.mkdir(parents=True, exist_ok=True)
    (bad / "empty.jpg").write_bytes(b"")
    truncated_jpeg(bad / "truncated.jpg")
    (bad / "text.jpg").write_text("this is not an image\n")
    decompression_bomb_png(bad / "bomb.png")
    os.symlink(bad / "gone.jpg", bad / "dangling.jpg")  # unreadable: points nowhere
    Image.new("RGB", (30, 30)).save(bad / os.fsdecode(b"caf\xe9.jpg"))  # latin-1 name
    return {
        "bad/empty.jpg": "empty file (0 bytes)",
        "bad/truncated.jpg": "corrupt or truncated image",
        "bad/text.jpg": "not an image Pillow can read",
        "bad/bomb.png": "decompression-bomb limit",
        "bad/dangling.jpg": "broken symbolic link",
        "bad/caf\\xe9.jpg": "file name is not valid UTF-8",
    }


COLOURS = {"red": (200, 30, 30), "green": (30, 180, 40), "blue": (40, 50, 210)}


def colour_images(folder: Path, per_class: int = 50, seed: int = 0) -> Path:
    """Clearly separable classes: noisy 80 px images of one dominant colour each."""
    rng = np.random.default_rng(seed)
    for name, colour in COLOURS.items():
        (folder / name).mkdir(parents=True, exist_ok=True)
        for index in range(per_class):
            pixels = np.clip(np.array(colour) + rng.normal(0, 40, (80, 80, 3)), 0, 255)
            Image.fromarray(pixels.astype(np.uint8)).save(folder / name / f"{index:03d}.png")
    return folder
