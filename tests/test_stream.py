"""The feature streams' shared interface: the local and the Ray engine count what they see
the same way (extractor/stream.py), down to features that are not finite numbers."""

from __future__ import annotations

import numpy as np
import pytest

from headstart.extractor.decode import DecodedImage, DecodeError, UnchangedImage
from headstart.extractor.feature_rows import FeatureRows
from headstart.extractor.ray_engine import RayFeatureStream, _outcome
from headstart.extractor.stream import NOT_FINITE, FeatureStream, Stream


def _rows(paths, views, features) -> FeatureRows:
    count = len(paths)
    return FeatureRows(
        paths=list(paths),
        labels=[None] * count,
        sha256s=["0" * 64] * count,
        widths=[8] * count,
        heights=[8] * count,
        features=[np.asarray(f, np.float32) for f in features],
        views=list(views),
    )


def test_both_engines_are_streams():
    assert issubclass(FeatureStream, Stream) and issubclass(RayFeatureStream, Stream)


def test_a_stream_counts_each_decoding_outcome():
    stream = Stream(stored={"same.jpg": {"a" * 64}})
    pixels = np.zeros((2, 2, 3), np.uint8)
    assert not stream._to_embed("bad.jpg", DecodeError("not an image"))
    assert not stream._to_embed("same.jpg", UnchangedImage("a" * 64))
    assert stream._to_embed("new.jpg", DecodedImage("b" * 64, 2, 2, pixels))
    assert stream.errors == [("bad.jpg", "not an image")]
    assert stream.current == {"same.jpg": "a" * 64, "new.jpg": "b" * 64}
    assert (stream.embedded, stream.already_present) == (1, 1)


def test_features_that_are_not_finite_never_become_rows():
    stream = Stream()
    for path in ("a.jpg", "b.jpg"):
        stream._to_embed(path, DecodedImage("c" * 64, 2, 2, np.zeros((2, 2, 3), np.uint8)))
    nan = [np.nan, 0.0]
    rows = _rows(
        ["a.jpg", "a.jpg", "b.jpg", "b.jpg"],
        [0, 1, 0, 1],
        [[1.0, 2.0], nan, nan, [3.0, 4.0]],
    )
    kept = stream._finite_only(rows)
    # a.jpg keeps its plain view and loses its broken augmented one; b.jpg, whose plain
    # view broke, is an error and none of its views is kept
    assert (kept.paths, kept.views) == (["a.jpg"], [0])
    assert stream.errors == [("b.jpg", NOT_FINITE)]
    assert stream.embedded == 1


def test_a_ray_decode_task_outcome_reads_as_the_local_decoder_says_it():
    batch = {
        "status": np.array(["error", "unchanged", "decoded"]),
        "error": np.array(["truncated file", "", ""]),
        "sha256": np.array(["", "d" * 64, "e" * 64]),
        "width": np.array([0, 0, 640], np.int32),
        "height": np.array([0, 0, 480], np.int32),
    }
    error, unchanged, decoded = (_outcome(batch, index) for index in range(3))
    assert isinstance(error, DecodeError) and str(error) == "truncated file"
    assert unchanged == UnchangedImage("d" * 64)
    assert isinstance(decoded, DecodedImage)
    assert (decoded.sha256, decoded.width, decoded.height) == ("e" * 64, 640, 480)


# --- the network in the background ----------------------------------------------------------


class _NetworkThatWaits:
    """A stand-in session: its first run waits (at most 30 s) until the main thread has
    taken in images of the next batch, which it can only do while that run is under way."""

    device = "cpu"

    def __init__(self, next_batch_started):
        self.next_batch_started = next_batch_started
        self.saw_overlap: list[bool] = []
        self.inputs: list[np.ndarray] = []

    def run(self, pixels):
        if not self.saw_overlap:
            self.saw_overlap.append(self.next_batch_started.wait(30))
        self.inputs.append(pixels.copy())
        return pixels.reshape(len(pixels), -1)[:, :4].astype(np.float32)


def test_the_next_batch_is_decoded_while_the_network_runs(tmp_path):
    import threading

    from headstart.extractor.samples import make_sample_images
    from headstart.extractor.scan import scan_images
    from headstart.extractor.spec import ExtractorSpec

    folder = make_sample_images(tmp_path / "images", per_class=5, size_range=(16, 32))
    images = scan_images(folder).images
    started = threading.Event()
    network = _NetworkThatWaits(started)
    spec = ExtractorSpec.of_pixels(8, "rgb")
    stream = FeatureStream(network, spec, batch_size=4, workers=2)
    taken = []

    def on_image(count):
        taken.append(count)
        if len(taken) > 4 + 1:  # the second image of the second batch is in
            started.set()

    rows = list(stream.batches(images, on_image))
    assert network.saw_overlap == [True]
    assert [len(r) for r in rows] == [len(b) for b in network.inputs] == [4, 4, 4, 3]
    # every row holds its own image's pixels, though the batch buffers are reused in turn
    decode = spec.decoder()
    locations = {image.path: image.location for image in images}
    for batch in rows:
        for path, features in zip(batch.paths, batch.features):
            pixels = decode(locations[path]).pixels
            assert list(features) == list(pixels.reshape(-1)[:4].astype(np.float32))
    assert sorted(path for batch in rows for path in batch.paths) == sorted(locations)


class _NetworkThatCounts:
    device = "cpu"

    def __init__(self):
        self.batch_sizes: list[int] = []

    def run(self, pixels):
        self.batch_sizes.append(len(pixels))
        return np.ones((len(pixels), 4), np.float32)


@pytest.mark.parametrize(("size", "batch_sizes"), [(299, [10]), (598, [4, 4, 2])])
def test_larger_images_make_default_batches_of_fewer_images(tmp_path, size, batch_sizes):
    # 16 images of 299 px a batch on CPU, as many pixels at other sizes: a network's memory
    # grows with a batch's pixels (EfficientNet-B6 at 528 px)
    from headstart.extractor.samples import make_sample_images
    from headstart.extractor.scan import scan_images
    from headstart.extractor.spec import ExtractorSpec

    folder = make_sample_images(tmp_path / "images", classes=2, per_class=5, size_range=(16, 32))
    network = _NetworkThatCounts()
    stream = FeatureStream(network, ExtractorSpec.of_pixels(size, "rgb"), None, workers=2)

    rows = list(stream.batches(scan_images(folder).images))

    assert network.batch_sizes == batch_sizes
    assert sum(len(r) for r in rows) == 10
