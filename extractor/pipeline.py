"""The embed pipeline: scan -> decode (thread pool) -> preprocess -> ONNX backbone -> store.

Decoding overlaps inference: a bounded window of decode jobs, kept in path order, runs on
worker threads (Pillow and hashlib release the GIL) while the main thread feeds the model,
so the model is busy and memory stays flat however many images there are.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from contextlib import closing
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from queue import SimpleQueue

import numpy as np
from tqdm import tqdm

from .augment import augmented_views, parse_augment, recipe
from .backbone import (
    BACKBONE,
    MIN_IMAGE_SIZE,
    CachedBackbone,
    WeightsSpec,
    ensure_backbone,
    parse_weights,
)
from .cnn_backbone import cnn_input, ensure_cnn_backbone, is_cnn_model_dir
from .decode import CANNOT_READ, DecodedImage, DecodeError, UnchangedImage, load_image
from .errors import FingerprintMismatchError, SettingError, StoreError
from .fingerprint import known_differences, make_fingerprint
from .images_folder import ImagesFolder
from .precision import check_precision, with_precision
from .preprocess import stack_pixels
from .ray_engine import RayFeatureStream, check_engine
from .runtime import (
    BackboneSession,
    check_device,
    check_device_for_precision,
    open_session,
)
from .safe_files import user_path
from .safe_folders import check_outside_artifacts
from .scan import CANNOT_LIST, ImageFile, scan_images
from .settings import (
    DEFAULT_AUGMENT,
    MAX_IMAGE_SIZE,
    MAX_VIEWS,
    check_counts,
    check_range,
    check_seed,
    check_workers,
    default_workers,
)
from .shard import parse_shard
from .store import FeatureRows, FeatureStore, is_feature_store

log = logging.getLogger("headstart")

# On CPU, batches of 16 run as fast per image as 64 (38.8 vs 38.9 images/s at 299 px on
# 2 cores) and the first, slower call costs +0.06 s instead of +0.3 s; GPUs want big batches.
DEFAULT_BATCH_SIZE = {"cpu": 16, "cuda": 64, "tensorrt": 64}


@dataclass
class EmbedSummary:
    embedded: int = 0
    skipped: int = 0
    already_present: int = 0
    removed: int = 0
    kept: int = 0  # stored rows kept of files there but unreadable this time
    errors: list[tuple[str, str]] = field(default_factory=list)
    not_images: int = 0  # files that are not images (other suffixes, no image header)
    own_outputs: list[str] = field(default_factory=list)  # headstart's outputs, not embedded
    device: str = ""
    seconds: float = 0.0

    def line(self) -> str:
        line = (
            f"embedded {self.embedded}, skipped {self.skipped}, "
            f"already present {self.already_present}"
        )
        return line + (f", not images {self.not_images}" if self.not_images else "")


DECODE_NICENESS = 19
# Pillow decodes even a 100-megapixel JPEG in seconds; a file that takes minutes is hostile.
DECODE_TIMEOUT_S = 120.0


def embed(
    images_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    weights: str = "imagenet",
    seed: int = 0,
    image_size: int | None = None,
    backbone: str = BACKBONE,
    precision: str = "fp32",
    fast_decode: bool = False,
    shard: str | None = None,
    engine: str = "local",
    ray_address: str | None = None,
    follow_links: bool = False,
    repair: bool = False,
    images_moved: bool = False,
    views: int = 0,
    augment: str = DEFAULT_AUGMENT,
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
    `_errors.csv` and counted as skipped; the run goes on. The store records the images
    folder it holds: another folder is refused unless `overwrite`, or `images_moved` (the
    same folder at a new path, which is also accepted when its files match the stored ones).
    """
    started = time.monotonic()
    check_seed(seed)
    check_workers(workers)
    workers = workers or default_workers()
    source = _backbone_source(backbone, weights, seed, image_size)
    _check_settings(source, batch_size, workers, rows_per_part)
    check_device(device)
    check_precision(precision)
    check_device_for_precision(device, precision)
    check_engine(engine)
    views_recipe = _views_recipe(views, augment, seed, engine)
    part = parse_shard(shard)
    out = _check_store_folder(user_path(out_dir), images_dir)
    scan = scan_images(images_dir, follow_links, exclude=[out])
    unlistable = [r.path for r in scan.rejected if r.reason.startswith(CANNOT_LIST)]
    unstatable = [r.path for r in scan.rejected if r.reason.startswith(CANNOT_READ)]
    images = ImagesFolder(
        os.path.realpath(images_dir),
        {image.path: image.location for image in scan.images},
        moved=images_moved,
        unreadable=(*unlistable, *unstatable),
    )
    if part is not None:  # this job's share: the rest belongs to the array's other jobs
        scan.images = [image for image in scan.images if part.holds(image.path)]
        scan.rejected = [item for item in scan.rejected if part.holds(item.path)]
        scan.not_images = [path for path in scan.not_images if part.holds(path)]
    for output in scan.own_outputs:
        log.info("skipped %s: headstart's own output, not images", output)

    store = FeatureStore(out, part)
    if not overwrite:
        _check_known_fingerprint(store, source, precision, fast_decode, views_recipe)
    with store.locked():
        cached = with_precision(source.ensure(), precision)
        decode = "fast" if fast_decode else "exact"
        fingerprint = make_fingerprint(cached.manifest, source.image_size, decode)
        if views_recipe:
            fingerprint["views"] = views_recipe
        store.prepare(fingerprint, overwrite, images)
        if repair:
            for corrupt, aside in store.move_aside_unreadable_parts():
                log.info("%s is unreadable: moved aside as %s; its images are embedded "
                         "again", corrupt, aside.name)  # fmt: skip
        stored = store.index(fingerprint)
        if engine == "ray":
            stream = RayFeatureStream(
                cached.onnx_path,
                fingerprint["dim"],
                source.image_size,
                batch_size,
                stored,
                source.color_mode,
                fast_decode,
                device,
                precision,
                ray_address,
            )
        else:
            stream = FeatureStream(
                open_session(cached.onnx_path, device, precision),
                source.image_size,
                batch_size,
                workers,
                stored=stored,
                color_mode=source.color_mode,
                fast_decode=fast_decode,
                views_recipe=views_recipe,
            )
        parts = PartWriter(store, fingerprint, rows_per_part)
        with progress_bar(len(scan.images), "embed", progress) as bar:
            for rows in stream.batches(scan.images, on_image=bar.update):
                parts.add(rows)
        parts.finish()

        rejected = [(r.path, r.reason) for r in scan.rejected]
        unreadable = _present_but_unreadable(stored, unlistable, rejected + stream.errors)
        summary = EmbedSummary(
            embedded=stream.embedded,
            already_present=stream.already_present,
            removed=store.remove_stale_rows({**unreadable, **stream.current}),
            kept=len(unreadable),
            errors=sorted(rejected + stream.errors),
            not_images=len(scan.not_images),
            own_outputs=scan.own_outputs,
            device=stream.device,
        )
        summary.skipped = len(summary.errors)
        summary.seconds = time.monotonic() - started
        store.write_errors(summary.errors)
        store.write_summary(fingerprint, _last_run(images_dir, summary), images)
    return summary


def _check_known_fingerprint(
    store: FeatureStore, source: BackboneSource, precision: str, fast: bool, views: dict | None
) -> None:
    """Refuse a store of another extractor on what is known before the network is exported
    (the full fingerprint is compared again once it is)."""
    try:
        stored = store.fingerprint()
    except StoreError:
        return  # said by the full check, under the lock
    if stored is None:
        return
    planned = {
        "image_size": source.image_size,
        "precision": precision,
        "decode": "fast" if fast else "exact",
        "views": views,
    }
    if source.weights is not None:
        planned["backbone"] = BACKBONE
        if source.weights.kind != "file":  # a file is known by its arrays' hash only
            planned["weights"] = source.weights.name
    differences = known_differences(stored, planned)
    if differences:
        raise FingerprintMismatchError(
            f"{store.root} holds features of another extractor ({'; '.join(differences)}). "
            "Use --overwrite to replace them, or choose another output folder"
        )


def _check_store_folder(out: Path, images_dir) -> Path:
    """-o must be a folder of its own: not a file, not IMAGES_DIR, not a folder of IMAGES_DIR
    holding files (its images would be skipped as the store's), not inside an artifact."""
    if out.exists() and not out.is_dir():
        raise SettingError(f"-o {out}: exists and is not a folder")
    check_outside_artifacts(out)
    images = os.path.realpath(images_dir)
    if not out.is_dir() or not os.path.isdir(images):
        return out
    if os.path.samefile(out, images):
        raise SettingError(
            f"-o {out} is IMAGES_DIR itself; the store goes in a folder of its own (beside "
            "the images, or a new subfolder of them, which the scan then skips)"
        )
    inside = str(out).startswith(images + os.sep)
    if inside and any(out.iterdir()) and not is_feature_store(out):
        raise SettingError(
            f"-o {out}: is a folder of IMAGES_DIR that holds files and is not a feature "
            "store; its images would be skipped as the store's: choose a new folder"
        )
    return out


def _present_but_unreadable(
    stored: dict[str, set[str]], unlistable: list[str], errors: list[tuple[str, str]]
) -> dict[str, str]:
    """The stored rows to keep of files that are there but could not be read this time (no
    permission, an I/O error, a folder that could not be listed): not deleted, so their
    rows stay until a run can read them again. path -> the sha256 kept."""
    unreadable = {path for path, reason in errors if reason.startswith(CANNOT_READ)}
    folders = tuple(unlistable)  # relative paths ending in "/"
    return {
        path: min(sha256s)
        for path, sha256s in stored.items()
        if path in unreadable or (folders and path.startswith(folders))
    }


@dataclass(frozen=True)
class BackboneSource:
    """Which network embeds, at which size and colour mode; `ensure()` exports it if needed."""

    image_size: int
    color_mode: str
    weights: WeightsSpec | None = None  # InceptionV3
    model_dir: Path | None = None  # a train-cnn model

    def ensure(self) -> CachedBackbone:
        if self.model_dir is not None:
            return ensure_cnn_backbone(self.model_dir)
        return ensure_backbone(self.weights)


def _backbone_source(backbone: str, weights: str, seed: int, image_size: int | None):
    if backbone == BACKBONE:
        size = 299 if image_size is None else image_size
        return BackboneSource(size, "rgb", weights=parse_weights(weights, seed))
    if not is_cnn_model_dir(backbone):
        raise SettingError(
            f"--backbone {backbone}: neither {BACKBONE} nor a model folder from train-cnn "
            "(with model.json and model.keras)"
        )
    model_input = cnn_input(Path(backbone))
    trained_size = int(model_input["image_size"])
    if image_size not in (None, trained_size):
        raise SettingError(
            f"--backbone {backbone} was trained on {trained_size} px images; leave "
            f"--image-size out or set it to {trained_size}"
        )
    return BackboneSource(trained_size, model_input["color_mode"], model_dir=Path(backbone))


class FeatureStream:
    """Features of a list of images, batch by batch and in the list's order: decoding runs
    on worker threads while the model runs. Images that fail to decode are recorded in
    `errors`, images whose (path, sha256) is in `stored` are counted, not embedded."""

    def __init__(
        self,
        session: BackboneSession,
        image_size: int,
        batch_size: int | None,
        workers: int | None,
        stored: dict[str, set[str]] | None = None,
        color_mode: str = "rgb",
        fast_decode: bool = False,
        views_recipe: dict | None = None,
    ):
        self.session, self.image_size, self.color_mode = session, image_size, color_mode
        self.fast_decode, self.recipe = fast_decode, views_recipe
        self.batch_size = batch_size or DEFAULT_BATCH_SIZE.get(session.device, 64)
        self.workers = workers or default_workers()
        self.stored = stored or {}
        self.errors: list[tuple[str, str]] = []
        self.not_finite: set[str] = set()  # images whose plain view gave NaN or infinity
        self.current: dict[str, str] = {}  # path -> sha256 of every readable image seen
        self.embedded = self.already_present = 0

    @property
    def device(self) -> str:
        return self.session.device

    def batches(
        self, images: list[ImageFile], on_image: Callable[[int], object] = lambda n: None
    ) -> Iterator[FeatureRows]:
        """Yield the rows of each model batch; `on_image(1)` is called as each image is done."""
        load = partial(
            _load,
            stored=self.stored,
            size=self.image_size,
            color_mode=self.color_mode,
            fast=self.fast_decode,
        )
        outcomes = _decode_in_order(
            images, load, self.workers, self.batch_size, timeout=DECODE_TIMEOUT_S
        )
        batch: list[tuple[ImageFile, DecodedImage, int, np.ndarray]] = []
        with closing(outcomes):
            for image, outcome in outcomes:
                on_image(1)
                if isinstance(outcome, DecodeError):
                    self.errors.append((image.path, str(outcome)))
                    continue
                self.current[image.path] = outcome.sha256
                if isinstance(outcome, UnchangedImage):
                    self.already_present += 1
                    continue
                self.embedded += 1
                for view, pixels in enumerate(self._views_of(outcome)):
                    batch.append((image, outcome, view, pixels))
                    if len(batch) >= self.batch_size:
                        yield self._embed(batch)
                        batch = []
            if batch:
                yield self._embed(batch)

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

    def _embed(self, batch: list[tuple[ImageFile, DecodedImage, int, np.ndarray]]) -> FeatureRows:
        features = self.session.run(stack_pixels([pixels for *_, pixels in batch]))
        keep = np.isfinite(features.reshape(len(batch), -1)).all(axis=1)
        # A network that overflows (fp16, a stranger's model) gives no row: a plain view
        # that fails makes the image an error (its augmented views, which come after it,
        # are dropped too); an augmented view that fails is left out with a warning.
        for index, (image, _, view, _) in enumerate(batch):
            if not keep[index] and view == 0:
                self.not_finite.add(image.path)
                self.errors.append((image.path, NOT_FINITE))
                self.embedded -= 1
            elif not keep[index]:
                log.warning("%s: augmented view %d gave features that are not finite numbers; "
                            "left out", image.path, view)  # fmt: skip
            keep[index] &= image.path not in self.not_finite
        if not keep.all():
            batch = [row for row, kept in zip(batch, keep) if kept]
            features = features[keep]
        return FeatureRows(
            paths=[image.path for image, *_ in batch],
            labels=[image.label for image, *_ in batch],
            sha256s=[decoded.sha256 for _, decoded, *_ in batch],
            widths=[decoded.width for _, decoded, *_ in batch],
            heights=[decoded.height for _, decoded, *_ in batch],
            features=list(features),
            views=[view for _, _, view, _ in batch] if self.recipe else [],
        )


NOT_FINITE = "the network gave features that are not finite numbers (NaN or infinity)"


class PartWriter:
    """Collects rows and writes a store part every `rows_per_part` rows."""

    def __init__(self, store: FeatureStore, fingerprint: dict, rows_per_part: int):
        self.store, self.fingerprint, self.rows_per_part = store, fingerprint, rows_per_part
        self._pending = FeatureRows.empty()

    def add(self, rows: FeatureRows) -> None:
        self._pending = self._pending.concat(rows)
        while len(self._pending) >= self.rows_per_part:
            part, self._pending = self._pending.split(self.rows_per_part)
            self.store.write_part(part, self.fingerprint)

    def finish(self) -> None:
        if len(self._pending):
            self.store.write_part(self._pending, self.fingerprint)
            self._pending = FeatureRows.empty()


def progress_bar(total: int, description: str, shown: bool) -> tqdm:
    """A tqdm bar (images/s, ETA), drawn only on a terminal and only when `shown`."""
    if sys.stderr is None:  # started with stderr closed (`2>&-`): tqdm would fail on it
        shown = False
    return tqdm(
        total=total,
        unit="img",
        desc=description,
        smoothing=0.1,
        disable=None if shown else True,  # None: shown on a terminal only
    )


def decode_in_order(
    images: list[ImageFile],
    size: int,
    color_mode: str = "rgb",
    workers: int | None = None,
    window: int = 32,
    fast: bool = False,
) -> Iterator[tuple[ImageFile, DecodedImage | DecodeError]]:
    """Each image decoded (or the DecodeError saying why not), in input order, with worker
    threads decoding ahead: the decode stage of embed, for other consumers (train-cnn)."""
    load = partial(_load, stored={}, size=size, color_mode=color_mode, fast=fast)
    return _decode_in_order(images, load, workers or default_workers(), window // 2)


def _decode_in_order(
    images: list[ImageFile],
    load: Callable[[ImageFile], DecodedImage | UnchangedImage | DecodeError],
    workers: int,
    batch_size: int,
    timeout: float = DECODE_TIMEOUT_S,
) -> Iterator[tuple[ImageFile, DecodedImage | UnchangedImage | DecodeError]]:
    """Decode on worker threads, yielding in input order. At most two batches are decoded
    ahead of the model: enough to keep it busy, bounded so memory stays flat. A file whose
    decoding takes longer than `timeout` seconds is given up (a DecodeError) and its
    thread replaced, so no file can stall the run."""
    window = max(2 * batch_size, 2 * workers)
    queue: deque[tuple[ImageFile, Future]] = deque()
    upcoming = iter(images)
    pool = _DecodePool(workers)
    try:
        for image in upcoming:
            queue.append((image, pool.submit(load, image)))
            if len(queue) >= window:
                break
        while queue:
            image, job = queue.popleft()
            following = next(upcoming, None)
            if following is not None:
                queue.append((following, pool.submit(load, following)))
            try:
                outcome = job.result(timeout=timeout)
            except TimeoutError:
                pool.replace_stuck_worker()
                outcome = DecodeError(f"decoding took longer than {timeout:g} s; skipped")
            yield image, outcome
    finally:
        for _, job in queue:
            job.cancel()
        pool.shutdown()


class _DecodePool:
    """Decode threads fed from a queue. They are daemon threads: one stuck in a decoder
    for good costs its thread, never the run, and never keeps the process from exiting
    (ThreadPoolExecutor joins its threads at exit)."""

    def __init__(self, workers: int):
        self._tasks: SimpleQueue = SimpleQueue()
        self._threads: list[threading.Thread] = []
        for _ in range(workers):
            self.replace_stuck_worker()

    def submit(self, function: Callable, argument) -> Future:
        future: Future = Future()
        self._tasks.put((future, function, argument))
        return future

    def replace_stuck_worker(self) -> None:
        thread = threading.Thread(target=self._work, name="decode", daemon=True)
        thread.start()
        self._threads.append(thread)

    def shutdown(self) -> None:
        for _ in self._threads:
            self._tasks.put(None)

    def _work(self) -> None:
        _yield_cores_to_the_model()
        while (task := self._tasks.get()) is not None:
            future, function, argument = task
            if not future.set_running_or_notify_cancel():
                continue  # cancelled while queued
            try:
                future.set_result(function(argument))
            except BaseException as error:  # handed to the consumer, like the executor does
                future.set_exception(error)


def _yield_cores_to_the_model() -> None:
    """Run this decode thread at the lowest CPU priority (Linux applies nice per thread).
    On a CPU node the model and the decoders share the cores: decoding then fills the
    moments the model's threads wait instead of slowing them down. Measured (2 cores,
    299 px, 500x375 JPEGs, steady state): 36.4 images/s at equal priority, 37.9 at nice 19
    without ORT spin-waiting, against 39.4 for ONNX Runtime alone. On a GPU node nothing
    else wants the cores, so it costs nothing there."""
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), DECODE_NICENESS)
    except (AttributeError, OSError):  # not Linux, or not allowed: equal priority it is
        pass


def _load(image: ImageFile, stored: dict[str, set[str]], size: int, color_mode: str, fast: bool):
    try:
        return load_image(image.location, size, stored.get(image.path, ()), color_mode, fast)
    except DecodeError as error:
        return error
    except Exception as error:  # a decoder bug must cost one image, not the run
        return DecodeError(f"unexpected decoder error: {type(error).__name__}: {error}")


def _views_recipe(views: int, augment: str, seed: int, engine: str) -> dict | None:
    check_range("--views", views, 0, MAX_VIEWS)
    if views and engine != "local":
        raise SettingError("--views works with --engine local only, for now")
    return recipe(views, parse_augment(augment), seed) if views else None


def _check_settings(
    source: BackboneSource, batch_size: int | None, workers: int, rows_per_part: int
) -> None:
    if source.weights is not None and source.image_size < MIN_IMAGE_SIZE:
        raise SettingError(
            f"--image-size {source.image_size} is too small; InceptionV3 needs at least "
            f"{MIN_IMAGE_SIZE}"
        )
    check_range("--image-size", source.image_size, 1, MAX_IMAGE_SIZE)
    check_counts(
        {"--batch-size": batch_size, "--workers": workers, "--rows-per-part": rows_per_part}
    )


def _last_run(images_dir, summary: EmbedSummary) -> dict:
    return {
        "status": "complete",
        "images_dir": str(Path(images_dir).resolve()),
        "embedded": summary.embedded,
        "skipped": summary.skipped,
        "already_present": summary.already_present,
        "not_images": summary.not_images,
        "removed": summary.removed,
        "device": summary.device,
        "seconds": round(summary.seconds, 3),
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
