"""Feature streams: images in, rows of features out, batch by batch in the list's order.

Every engine's stream (the local one here, Ray's in ray_engine) is a `Stream`: it yields
FeatureRows from `batches(images, on_image)` and counts what it saw the same way. Images
that fail to decode are recorded in `errors`; images whose (path, sha256) is in `stored`
are counted as `already_present`, not embedded; a plain view whose features are not finite
makes its image an error.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import closing

import numpy as np

from .ahead import run_ahead
from .augment import augmented_views
from .decode import DecodedImage, DecodeError, UnchangedImage
from .decode_pool import DECODE_TIMEOUT_S, decoded_in_order
from .feature_rows import FeatureRows
from .runtime import BackboneSession
from .scan import ImageFile
from .settings import default_workers, images_per_batch
from .spec import ExtractorSpec

log = logging.getLogger("headstart")

# On CPU, batches of 16 run as fast per image as 64 (38.8 vs 38.9 images/s at 299 px on
# 2 cores) and the first, slower call costs +0.06 s instead of +0.3 s; GPUs want big batches.
# Those are at 299 px: larger images make smaller batches of as many pixels (5 at 528 px on
# CPU), which keeps the memory near 299 px's (default_batch_size).
DEFAULT_BATCH_SIZE = {"cpu": 16, "cuda": 64, "tensorrt": 64}


def default_batch_size(device: str, image_size: int) -> int:
    """Images a batch when --batch-size is not given."""
    return images_per_batch(DEFAULT_BATCH_SIZE.get(device, 64), image_size)


NOT_FINITE = "the network gave features that are not finite numbers (NaN or infinity)"


class Stream:
    """What every stream counts, and how: the engines differ only in how they decode and
    run the network."""

    device: str  # where the network runs (cpu, cuda, tensorrt)

    def __init__(self, stored: dict[str, set[str]] | None = None):
        self.stored = stored or {}
        self.errors: list[tuple[str, str]] = []
        self.current: dict[str, str] = {}  # path -> sha256 of every readable image seen
        self.hashed: list[str] = []  # the images read (and hashed) so far, in order
        self.embedded = self.already_present = 0
        self.not_finite: set[str] = set()  # images whose plain view gave NaN or infinity

    def batches(
        self, images: list[ImageFile], on_image: Callable[[int], object] = lambda n: None
    ) -> Iterator[FeatureRows]:
        """Yield the rows of each batch; `on_image(1)` is called as each image is done."""
        raise NotImplementedError

    def _to_embed(self, path: str, outcome: DecodedImage | UnchangedImage | DecodeError) -> bool:
        """Count one image's decoding; whether its features are to be made."""
        if isinstance(outcome, DecodeError):
            self.errors.append((path, str(outcome)))
            return False
        self.current[path] = outcome.sha256
        self.hashed.append(path)
        if isinstance(outcome, UnchangedImage):
            self.already_present += 1
            return False
        self.embedded += 1
        return True

    def trust(self, unchanged: dict[str, str]) -> None:
        """Count images known unchanged without reading them (path -> sha256 stored)."""
        self.current.update(unchanged)
        self.already_present += len(unchanged)

    def _finite_only(self, rows: FeatureRows) -> FeatureRows:
        """The rows whose features are finite. A network that overflows (fp16, a stranger's
        model) gives no row: a plain view that fails makes the image an error (its augmented
        views, which come after it, are dropped too); an augmented view that fails is left
        out with a warning."""
        finite = np.isfinite(np.stack(rows.features).reshape(len(rows), -1)).all(axis=1)
        keep = []
        for path, view, ok in zip(rows.paths, rows.views or [0] * len(rows), finite):
            if not ok and view == 0:
                self.not_finite.add(path)
                self.errors.append((path, NOT_FINITE))
                self.embedded -= 1
            elif not ok:
                log.warning("%s: augmented view %d gave features that are not finite numbers; "
                            "left out", path, view)  # fmt: skip
            keep.append(bool(ok) and path not in self.not_finite)
        return rows if all(keep) else rows.select(keep)


class FeatureStream(Stream):
    """The local engine: decoding runs on worker threads while the network runs."""

    def __init__(
        self,
        session: BackboneSession,
        spec: ExtractorSpec,
        batch_size: int | None,
        workers: int | None,
        stored: dict[str, set[str]] | None = None,
    ):
        super().__init__(stored)
        self.session, self.spec, self.recipe = session, spec, spec.views
        self.batch_size = batch_size or default_batch_size(session.device, spec.image_size)
        self.workers = workers or default_workers()
        # Batches handed to the network's thread at a time: one running, one ready, so it
        # never waits for the main thread (1: no overlap, what bench/overlap.py compares).
        self.ahead = 2

    @property
    def device(self) -> str:
        return self.session.device

    def batches(
        self, images: list[ImageFile], on_image: Callable[[int], object] = lambda n: None
    ) -> Iterator[FeatureRows]:
        decode, stored = self.spec.decoder(), self.stored

        def load(image: ImageFile) -> DecodedImage | UnchangedImage | DecodeError:
            return decode(image.location, known_sha256=stored.get(image.path, ()))

        outcomes = decoded_in_order(
            images, load, self.workers, self.batch_size, timeout=DECODE_TIMEOUT_S
        )
        with closing(outcomes):
            host = self._host_batches(outcomes, on_image)
            with closing(host):
                network = lambda host_batch: self.session.run(host_batch[1])  # noqa: E731
                for (batch, _), features in run_ahead(host, network, "network", self.ahead):
                    yield self._rows(batch, features)

    def _host_batches(
        self, outcomes: Iterator, on_image: Callable[[int], object]
    ) -> Iterator[tuple[list[tuple[ImageFile, DecodedImage, int]], np.ndarray]]:
        """The batches the network is to run, each image copied into a batch buffer as it
        is decoded: (what each row is, the uint8 pixels). The buffers are reused in turn,
        one more than run_ahead hands over at a time."""
        buffers: np.ndarray | None = None
        batch: list[tuple[ImageFile, DecodedImage, int]] = []
        turn = 0
        for image, outcome in outcomes:
            to_embed = self._to_embed(image.path, outcome)
            on_image(1)  # after: the image is counted (and its sha256 known) when it is said
            if not to_embed:
                continue
            for view, pixels in enumerate(self._views_of(outcome)):
                if buffers is None:
                    shape = (self.ahead + 1, self.batch_size, *pixels.shape)
                    buffers = np.empty(shape, pixels.dtype)
                buffers[turn, len(batch)] = pixels
                batch.append((image, outcome, view))
                if len(batch) >= self.batch_size:
                    yield batch, buffers[turn]
                    batch, turn = [], (turn + 1) % len(buffers)
        if batch:
            yield batch, buffers[turn, : len(batch)]

    def _views_of(self, decoded: DecodedImage) -> Iterator[np.ndarray]:
        """The decoded pixels (view 0), then its augmented views, made as batches need them."""
        yield decoded.pixels
        if self.recipe:
            yield from augmented_views(
                decoded.pixels,
                self.recipe["views"],
                tuple(self.recipe["augment"]),
                self.recipe["seed"],
                decoded.sha256,
            )

    def _rows(
        self, batch: list[tuple[ImageFile, DecodedImage, int]], features: np.ndarray
    ) -> FeatureRows:
        return self._finite_only(
            FeatureRows(
                paths=[image.path for image, *_ in batch],
                labels=[image.label for image, *_ in batch],
                sha256s=[decoded.sha256 for _, decoded, _ in batch],
                widths=[decoded.width for _, decoded, _ in batch],
                heights=[decoded.height for _, decoded, _ in batch],
                features=list(features),
                views=[view for *_, view in batch] if self.recipe else [],
            )
        )
