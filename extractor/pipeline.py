"""The embed pipeline: scan -> decode (thread pool) -> preprocess -> ONNX backbone -> store.

Decoding overlaps inference: a bounded window of decode jobs, kept in path order, runs on
worker threads (Pillow and hashlib release the GIL) while the main thread feeds the model,
so the model is busy and memory stays flat however many images there are.
"""

from __future__ import annotations

import logging
import os
import time
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from .backbone import CachedBackbone, cache_root, ensure_backbone, parse_weights
from .decode import DecodedImage, DecodeError, UnchangedImage, load_image
from .errors import SettingError
from .fingerprint import make_fingerprint
from .preprocess import stack_pixels
from .runtime import BackboneSession, check_device
from .scan import ImageFile, scan_images
from .store import FeatureRows, FeatureStore

log = logging.getLogger("headstart")

MIN_IMAGE_SIZE = 75  # InceptionV3's smallest input
# On CPU, batches of 16 run as fast per image as 64 (38.8 vs 38.9 images/s at 299 px on
# 2 cores) and the first, slower call costs +0.06 s instead of +0.3 s; GPUs want big batches.
DEFAULT_BATCH_SIZE = {"cpu": 16, "cuda": 64, "tensorrt": 64}


@dataclass
class EmbedSummary:
    embedded: int = 0
    skipped: int = 0
    already_present: int = 0
    removed: int = 0
    errors: list[tuple[str, str]] = field(default_factory=list)
    device: str = ""
    seconds: float = 0.0

    def line(self) -> str:
        return (
            f"embedded {self.embedded}, skipped {self.skipped}, "
            f"already present {self.already_present}"
        )


def default_workers() -> int:
    return max(1, min(8, os.cpu_count() or 1))


def embed(
    images_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    weights: str = "imagenet",
    seed: int = 0,
    image_size: int = 299,
    batch_size: int | None = None,
    workers: int | None = None,
    device: str = "auto",
    overwrite: bool = False,
    rows_per_part: int = 1000,
    progress: bool = False,
) -> EmbedSummary:
    """Embed every image under `images_dir` into the feature store `out_dir`.

    Incremental: files already in the store (same path and sha256) are not embedded again;
    rows of deleted or changed files are removed. Unreadable images are recorded in
    `_errors.csv` and counted as skipped; the run goes on.
    """
    started = time.monotonic()
    workers = workers or default_workers()
    _check_settings(image_size, batch_size, workers, rows_per_part)
    check_device(device)
    weights_spec = parse_weights(weights, seed)
    scan = scan_images(images_dir)
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise SettingError(f"-o {out}: exists and is not a folder")

    store = FeatureStore(out)
    with store.locked():
        backbone = ensure_backbone(weights_spec)
        fingerprint = make_fingerprint(backbone.manifest, image_size)
        session = _open_session(backbone, device)
        store.prepare(fingerprint, overwrite)
        stored = store.index(fingerprint)

        batch_size = batch_size or DEFAULT_BATCH_SIZE.get(session.device, 64)
        summary = EmbedSummary(device=session.device)
        summary.errors = [(item.path, item.reason) for item in scan.rejected]
        embedder = BatchEmbedder(session, store, fingerprint, batch_size, rows_per_part, summary)
        outcomes = _decode_in_order(scan.images, stored, image_size, workers, batch_size)
        bar = tqdm(
            total=len(scan.images),
            unit="img",
            desc="embed",
            smoothing=0.1,
            disable=None if progress else True,
        )  # None: shown on a terminal only
        with closing(outcomes), bar:
            for image, outcome in outcomes:
                embedder.add(image, outcome)
                bar.update(1)
            embedder.finish()

        summary.removed = store.remove_stale_rows(embedder.current)
        summary.errors.sort()
        summary.skipped = len(summary.errors)
        summary.seconds = time.monotonic() - started
        store.write_errors(summary.errors)
        store.write_summary(fingerprint, _last_run(images_dir, summary))
    return summary


class BatchEmbedder:
    """Turns decode outcomes into store rows: batches decoded images through the model,
    records failures and unchanged files, and writes a part every `rows_per_part` rows."""

    def __init__(
        self,
        session: BackboneSession,
        store: FeatureStore,
        fingerprint: dict,
        batch_size: int,
        rows_per_part: int,
        summary: EmbedSummary,
    ):
        self.session, self.store, self.fingerprint = session, store, fingerprint
        self.batch_size, self.rows_per_part, self.summary = batch_size, rows_per_part, summary
        self.current: dict[str, str] = {}  # path -> sha256 of every readable image seen
        self._batch: list[tuple[ImageFile, DecodedImage]] = []
        self._pending = FeatureRows.empty()  # embedded, not yet written to a part

    def add(self, image: ImageFile, outcome: DecodedImage | UnchangedImage | DecodeError) -> None:
        if isinstance(outcome, DecodeError):
            self.summary.errors.append((image.path, str(outcome)))
            return
        self.current[image.path] = outcome.sha256
        if isinstance(outcome, UnchangedImage):
            self.summary.already_present += 1
            return
        self._batch.append((image, outcome))
        if len(self._batch) == self.batch_size:
            self._run_batch()

    def finish(self) -> None:
        self._run_batch()
        self._flush()

    def _run_batch(self) -> None:
        if not self._batch:
            return
        features = self.session.run(stack_pixels([decoded.pixels for _, decoded in self._batch]))
        rows = self._pending
        for (image, decoded), vector in zip(self._batch, features):
            rows.paths.append(image.path)
            rows.labels.append(image.label)
            rows.sha256s.append(decoded.sha256)
            rows.widths.append(decoded.width)
            rows.heights.append(decoded.height)
            rows.features.append(vector[np.newaxis])
        self.summary.embedded += len(self._batch)
        self._batch.clear()
        while len(self._pending) >= self.rows_per_part:
            part, self._pending = self._pending.split(self.rows_per_part)
            self.store.write_part(part, self.fingerprint)

    def _flush(self) -> None:
        if len(self._pending):
            self.store.write_part(self._pending, self.fingerprint)
            self._pending = FeatureRows.empty()


def _decode_in_order(
    images: list[ImageFile],
    stored: dict[str, set[str]],
    size: int,
    workers: int,
    batch_size: int,
) -> Iterator[tuple[ImageFile, DecodedImage | UnchangedImage | DecodeError]]:
    """Decode on a thread pool, yielding in input order. At most two batches are decoded
    ahead of the model: enough to keep it busy, bounded so memory stays flat."""
    window = max(2 * batch_size, 2 * workers)
    queue: deque[tuple[ImageFile, Future]] = deque()
    upcoming = iter(images)
    pool = ThreadPoolExecutor(workers, thread_name_prefix="decode")
    try:
        for image in upcoming:
            queue.append((image, pool.submit(_load, image, stored, size)))
            if len(queue) >= window:
                break
        while queue:
            image, job = queue.popleft()
            following = next(upcoming, None)
            if following is not None:
                queue.append((following, pool.submit(_load, following, stored, size)))
            yield image, job.result()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _load(image: ImageFile, stored: dict[str, set[str]], size: int):
    try:
        return load_image(image.location, size, stored.get(image.path, ()))
    except DecodeError as error:
        return error
    except Exception as error:  # a decoder bug must cost one image, not the run
        return DecodeError(f"unexpected decoder error: {type(error).__name__}: {error}")


def _open_session(backbone: CachedBackbone, device: str) -> BackboneSession:
    session = BackboneSession(backbone.onnx_path, device, cache_dir=cache_root() / "tensorrt")
    log.info("running the backbone on %s", session.device)
    return session


def _check_settings(
    image_size: int, batch_size: int | None, workers: int, rows_per_part: int
) -> None:
    if image_size < MIN_IMAGE_SIZE:
        raise SettingError(
            f"--image-size {image_size} is too small; InceptionV3 needs at least {MIN_IMAGE_SIZE}"
        )
    counts = {"--batch-size": batch_size, "--workers": workers, "--rows-per-part": rows_per_part}
    for name, value in counts.items():
        if value is None:  # --batch-size: the device's default, chosen once the session runs
            continue
        if value < 1:
            raise SettingError(f"{name} must be at least 1, got {value}")


def _last_run(images_dir, summary: EmbedSummary) -> dict:
    return {
        "status": "complete",
        "images_dir": str(Path(images_dir).resolve()),
        "embedded": summary.embedded,
        "skipped": summary.skipped,
        "already_present": summary.already_present,
        "removed": summary.removed,
        "device": summary.device,
        "seconds": round(summary.seconds, 3),
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
