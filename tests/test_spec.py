"""The extractor spec: one value from embed's options or from recorded features, with its
defaults in one place and a fingerprint that reads back to the same spec and network."""

from __future__ import annotations

import pytest

from headstart.extractor.errors import SettingError
from headstart.extractor.fingerprint import fingerprint_differences
from headstart.extractor.settings import (
    DEFAULT_COLOR_MODE,
    DEFAULT_DECODE,
    DEFAULT_IMAGE_SIZE,
    DEFAULT_PRECISION,
)
from headstart.extractor.spec import ExtractorSpec
from helpers import IMAGE_SIZE


def test_options_left_out_take_the_defaults():
    spec = ExtractorSpec.from_options(weights="random")
    assert (spec.image_size, spec.color_mode, spec.precision, spec.decode, spec.views) == (
        DEFAULT_IMAGE_SIZE,
        DEFAULT_COLOR_MODE,
        DEFAULT_PRECISION,
        DEFAULT_DECODE,
        None,
    )
    fast = ExtractorSpec.from_options(weights="random", fast_decode=True, views=2)
    assert fast.fast_decode and fast.decode == "fast"
    assert fast.views == {"views": 2, "augment": ["flip", "crop", "rotate", "color"],
                          "seed": 0, "version": 1}  # fmt: skip


@pytest.mark.parametrize(
    ("options", "named"),
    [
        ({"image_size": 20}, "--image-size 20 is too small"),
        ({"image_size": 5000}, "--image-size must be"),
        ({"precision": "fp8"}, "--precision"),
        ({"views": 100}, "--views must be"),
        ({"augment": "blur"}, "--augment blur"),
        ({"seed": -1}, "--seed must be"),
        ({"backbone": "no-such-folder"}, "unknown backbone 'no-such-folder'; choose one of"),
        ({"backbone": "missing.onnx", "weights": None}, "--backbone missing.onnx: no such file"),
        ({"backbone": "missing.onnx"}, "--weights applies to backbones given by name"),
    ],
)
def test_options_that_cannot_work_are_refused_by_name(options, named):
    with pytest.raises(SettingError, match=named):
        ExtractorSpec.from_options(**{"weights": "random", **options})


def test_recorded_features_read_back_to_the_same_spec_and_network(weights_file):
    made = ExtractorSpec.from_options(
        weights=str(weights_file), image_size=IMAGE_SIZE, fast_decode=True, views=1
    )
    network = made.network()
    fingerprint = made.fingerprint(network)

    back = ExtractorSpec.of_features(fingerprint)
    assert (back.image_size, back.color_mode, back.precision, back.decode, back.views) == (
        made.image_size,
        made.color_mode,
        made.precision,
        made.decode,
        made.views,
    )
    found = back.network()  # found by identity: another cache entry of the same network
    assert found.manifest["weights_sha256"] == network.manifest["weights_sha256"]
    assert fingerprint_differences(fingerprint, back.fingerprint(found)) == []


def test_a_spec_of_pixels_has_no_network_of_its_own():
    pixels = ExtractorSpec.of_pixels(64, "grayscale")
    assert pixels.channels == 1
    with pytest.raises(ValueError):
        pixels.network()
