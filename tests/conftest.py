"""Shared fixtures. The backbone is the real InceptionV3 with random, seeded weights, saved
to a Keras weights file and exported to ONNX once per test session (~30 s); images are
generated, small (75-139 px inputs) and never downloaded."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from helpers import IMAGE_SIZE


@pytest.fixture(scope="session", autouse=True)
def model_cache(tmp_path_factory):
    """One ONNX cache for the whole session, so each backbone is exported once."""
    cache = tmp_path_factory.mktemp("headstart-cache")
    previous = os.environ.get("HEADSTART_CACHE")
    os.environ["HEADSTART_CACHE"] = str(cache)
    yield cache
    if previous is None:
        os.environ.pop("HEADSTART_CACHE", None)
    else:
        os.environ["HEADSTART_CACHE"] = previous


@pytest.fixture(scope="session")
def keras_backbone():
    """The Keras InceptionV3 (no top, avg pooling) with seeded random weights."""
    from headstart.extractor.backbone import WeightsSpec, build_keras_backbone

    return build_keras_backbone(WeightsSpec("random", seed=0))


@pytest.fixture(scope="session")
def weights_file(keras_backbone, tmp_path_factory, model_cache):
    """Those weights as a Keras weights file, with its ONNX export already in the cache."""
    from headstart.extractor.backbone import ensure_backbone, parse_weights

    path = tmp_path_factory.mktemp("weights") / "inception_random.weights.h5"
    keras_backbone.save_weights(path)
    ensure_backbone(parse_weights(str(path)))
    return path


@pytest.fixture
def sample_images(tmp_path):
    from headstart.extractor.samples import make_sample_images

    return make_sample_images(tmp_path / "images", classes=2, per_class=6, size_range=(60, 140))


@pytest.fixture
def run_embed(weights_file):
    """Run `headstart embed` through click's CliRunner with the test weights and size."""
    from click.testing import CliRunner

    from headstart.cli import main

    def run(images, out, *extra, image_size=IMAGE_SIZE):
        args = [
            "embed",
            str(images),
            "-o",
            str(out),
            "--weights",
            str(weights_file),
            "--image-size",
            str(image_size),
            *map(str, extra),
        ]
        return CliRunner().invoke(main, args, catch_exceptions=False)

    return run
