"""Decode stage: every mode to RGB, EXIF orientation, 16-bit scaling, and a readable reason
for every kind of bad input."""

from __future__ import annotations

import errno
import os

import numpy as np
import pytest
from PIL import Image

import corpus
from headstart.extractor.decode import DecodedImage, DecodeError, UnchangedImage, load_image


def test_sixteen_bit_png_is_scaled_not_clipped(tmp_path):
    values = corpus.png_16bit(tmp_path / "deep.png", width=64, height=48)
    decoded = load_image(tmp_path / "deep.png", size=80)
    eight_bit = Image.fromarray((values >> 8).astype(np.uint8)).convert("RGB")
    expected = np.asarray(eight_bit.resize((80, 80), Image.Resampling.BILINEAR))
    np.testing.assert_array_equal(decoded.pixels, expected)
    assert 0 < decoded.pixels.mean() < 250  # Pillow's plain convert("RGB") clips to ~255


def test_exif_orientation_is_applied(tmp_path):
    pixels = corpus.gradient(120, 80)
    corpus.jpeg_with_orientation(tmp_path / "rotated.jpg", pixels, orientation=6)  # 90° CW
    decoded = load_image(tmp_path / "rotated.jpg", size=100)
    assert (decoded.width, decoded.height) == (80, 120)  # as displayed
    upright = Image.open(tmp_path / "rotated.jpg").transpose(Image.Transpose.ROTATE_270)
    expected = np.asarray(upright.convert("RGB").resize((100, 100), Image.Resampling.BILINEAR))
    np.testing.assert_array_equal(decoded.pixels, expected)


def test_animated_gif_gives_its_first_frame(tmp_path):
    first, _ = corpus.animated_gif(tmp_path / "anim.gif", size=(50, 40))
    decoded = load_image(tmp_path / "anim.gif", size=75)
    assert (decoded.width, decoded.height) == (50, 40)
    assert np.abs(decoded.pixels.astype(int) - first[0, 0]).max() <= 2  # red, not blue


@pytest.mark.parametrize("mode", ["RGBA", "P", "L", "LA", "CMYK", "1", "I;16"])
def test_every_mode_becomes_rgb(tmp_path, mode):
    image = Image.fromarray(corpus.gradient(90, 60)).convert("RGB")
    image = image.convert("L").convert(mode) if mode in ("1", "I;16") else image.convert(mode)
    suffix = ".jpg" if mode == "CMYK" else ".png" if mode != "I;16" else ".tiff"
    image.save(tmp_path / f"img{suffix}")
    decoded = load_image(tmp_path / f"img{suffix}", size=80)
    assert decoded.pixels.shape == (80, 80, 3) and decoded.pixels.dtype == np.uint8


def test_sha256_is_of_the_file_bytes_and_unchanged_files_are_not_decoded(tmp_path):
    import hashlib

    Image.fromarray(corpus.gradient(50, 50)).save(tmp_path / "a.png")
    sha = hashlib.sha256((tmp_path / "a.png").read_bytes()).hexdigest()
    assert isinstance(load_image(tmp_path / "a.png", 75), DecodedImage)
    assert load_image(tmp_path / "a.png", 75).sha256 == sha
    assert load_image(tmp_path / "a.png", 75, known_sha256={sha}) == UnchangedImage(sha)


def test_every_bad_input_gets_a_readable_reason(tmp_path):
    expected = corpus.write_bad_inputs(tmp_path)
    for relative, reason in expected.items():
        if "\\x" in relative:
            continue  # a name problem, found by the scan (test_scan)
        with pytest.raises(DecodeError) as caught:
            load_image(tmp_path / relative, size=75)
        assert reason in str(caught.value), (relative, str(caught.value))


def test_unreadable_file_reason(tmp_path, monkeypatch):
    # Tests run as root in CI, where chmod 000 does not stop reads: make the read fail.
    Image.new("RGB", (10, 10)).save(tmp_path / "locked.png")

    real_open = os.open

    def denied(path, *args, **kwargs):
        if str(path).endswith("locked.png"):
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(os, "open", denied)
    with pytest.raises(DecodeError, match="^cannot read file: Permission denied$"):
        load_image(tmp_path / "locked.png", size=75)


def test_grayscale_mode_gives_the_luma_of_the_resized_rgb_image(tmp_path):
    path = tmp_path / "colour.png"
    Image.fromarray(corpus.gradient(90, 60)).save(path)
    decoded = load_image(path, 40, color_mode="grayscale")
    assert decoded.pixels.shape == (40, 40, 1) and decoded.pixels.dtype == np.uint8
    with Image.open(path) as image:
        resized = image.convert("RGB").resize((40, 40), Image.Resampling.BILINEAR)
        expected = np.asarray(resized.convert("L"))
    np.testing.assert_array_equal(decoded.pixels[..., 0], expected)
    rgb = load_image(path, 40).pixels.astype(np.float64)
    luma = rgb @ [0.299, 0.587, 0.114]  # ITU-R 601, as Pillow's "L"
    assert np.abs(decoded.pixels[..., 0] - luma).max() <= 1
