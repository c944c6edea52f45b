"""The embed command as a library call: scan -> feature stream (decode, ONNX network) ->
store parts, incremental, with the run's summary and errors written beside them.

This module only orchestrates: the extractor spec (spec), the streams (stream,
ray_engine), the decode threads (decode_pool) and the store (store) do the work.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from .backbone import (
    BACKBONE,
)
from .decode import CANNOT_READ
from .errors import FingerprintMismatchError, SettingError, StoreError
from .feature_rows import store_dtype as store_dtype_of
from .file_record import FileRecord
from .fingerprint import known_differences
from .images_folder import ImagesFolder
from .progress import Progress
from .providers import check_device, check_device_for_precision
from .ray_engine import RayFeatureStream, check_engine
from .runtime import open_session
from .safe_files import user_path
from .safe_folders import check_outside_artifacts
from .scan import CANNOT_LIST, scan_images
from .settings import (
    DEFAULT_AUGMENT,
    DEFAULT_PRECISION,
    STORE_DTYPES,
    check_counts,
    check_workers,
)
from .shard import parse_shard
from .spec import ExtractorSpec
from .store import FeatureStore, PartWriter, is_feature_store
from .stream import FeatureStream, default_batch_size

log = logging.getLogger("headstart")


@dataclass
class EmbedSummary:
    embedded: int = 0
    skipped: int = 0
    already_present: int = 0
    not_read: int = 0  # of those: trusted by their size and times (extractor.file_record)
    removed: int = 0  # rows of deleted or changed files
    copies_removed: int = 0  # second copies of rows (a killed compaction, overlapping shards)
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


def embed(
    images_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    weights: str | None = None,
    seed: int = 0,
    image_size: int | None = None,
    backbone: str = BACKBONE,
    backbone_output: str | None = None,
    precision: str = DEFAULT_PRECISION,
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
    store_dtype: str | None = None,
    rehash: bool = False,
) -> EmbedSummary:
    """Embed every image under `images_dir` into the feature store `out_dir`.

    Incremental: files already in the store (same path and sha256) are not embedded again;
    rows of deleted or changed files are removed. A file whose size and times are those the
    store's file record holds is not even read (extractor.file_record); `rehash` reads and
    hashes every file. Unreadable images are recorded in `_errors.csv` and counted as
    skipped; the run goes on. The store records the images
    folder it holds: another folder is refused unless `overwrite`, or `images_moved` (the
    same folder at a new path, which is also accepted when its files match the stored ones).
    `store_dtype`: how the store keeps the features, float32 or float16 (half the size);
    None keeps an existing store's (float32 for a new one).
    """
    started, started_ns = time.monotonic(), time.time_ns()  # before any file is looked at
    spec = ExtractorSpec.from_options(
        backbone=backbone,
        weights=weights,
        seed=seed,
        image_size=image_size,
        backbone_output=backbone_output,
        precision=precision,
        fast_decode=fast_decode,
        views=views,
        augment=augment,
    )
    check_workers(workers)
    check_counts({"--batch-size": batch_size, "--rows-per-part": rows_per_part})
    check_device(device)
    check_device_for_precision(device, precision)
    check_engine(engine)
    check_store_dtype(store_dtype)
    if spec.views and engine != "local":
        raise SettingError("--views works with --engine local only, for now")
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
    store_dtype = store_dtype or _stored_dtype(store) or STORE_DTYPES[0]
    if not overwrite:
        _check_known_fingerprint(store, spec, store_dtype)
    with store.locked():
        network = spec.network()
        fingerprint = spec.fingerprint(network)
        if store_dtype != STORE_DTYPES[0]:  # absent: float32, as in stores made before
            fingerprint["store_dtype"] = store_dtype
        store.prepare(fingerprint, overwrite, images)
        if repair:
            for corrupt, aside in store.move_aside_unreadable_parts():
                log.info("%s is unreadable: moved aside as %s; its images are embedded "
                         "again", corrupt, aside.name)  # fmt: skip
        stored = store.index(fingerprint)
        record = FileRecord(store.folder, part, scan.images, started_ns)
        unchanged = {} if rehash else record.trusted(stored)
        to_read = [image for image in scan.images if image.path not in unchanged]
        if engine == "ray":
            stream = RayFeatureStream(network, spec, batch_size, stored, device, ray_address)
        else:
            largest = batch_size or default_batch_size("tensorrt", spec.image_size)  # its profile
            batch_shape = (largest, spec.image_size, spec.image_size, spec.channels)
            session = open_session(network.onnx_path, device, spec.precision, batch_shape)
            stream = FeatureStream(session, spec, batch_size, workers, stored)
        stream.trust(unchanged)
        bar = Progress(len(scan.images), "embed", shown=progress, initial=len(unchanged))

        def done(images: int) -> None:  # counted, and what was read saved in time
            bar.update(images)
            record.save_if_due(stream.hashed, stream.current)

        with PartWriter(store, fingerprint, rows_per_part) as parts:
            with bar:
                for rows in stream.batches(to_read, on_image=done):
                    parts.add(rows)
            parts.finish()

        rejected = [(r.path, r.reason) for r in scan.rejected]
        unreadable = _present_but_unreadable(stored, unlistable, rejected + stream.errors)
        removed, copies = store.remove_stale_rows({**unreadable, **stream.current})
        summary = EmbedSummary(
            embedded=stream.embedded,
            already_present=stream.already_present,
            not_read=len(unchanged),
            removed=removed,
            copies_removed=copies,
            kept=len(unreadable),
            errors=sorted(rejected + stream.errors),
            not_images=len(scan.not_images),
            own_outputs=scan.own_outputs,
            device=stream.device,
        )
        summary.skipped = len(summary.errors)
        summary.seconds = time.monotonic() - started
        record.finish(stream.current)
        store.write_errors(summary.errors)
        store.write_summary(fingerprint, _last_run(images_dir, summary), images)
    return summary


def check_store_dtype(store_dtype: str | None) -> None:
    if store_dtype is not None and store_dtype not in STORE_DTYPES:
        raise SettingError(
            f"--store-dtype must be one of {', '.join(STORE_DTYPES)}, got {store_dtype!r}"
        )


def _stored_dtype(store: FeatureStore) -> str | None:
    """An existing store's --store-dtype: a re-run without the option keeps it."""
    try:
        stored = store.fingerprint()
    except StoreError:
        return None  # said by the full check, under the lock
    return None if stored is None else store_dtype_of(stored)


def _check_known_fingerprint(store: FeatureStore, spec: ExtractorSpec, dtype: str) -> None:
    """Refuse a store of another extractor on what is known before the network is exported
    (the full fingerprint is compared again once it is)."""
    try:
        stored = store.fingerprint()
    except StoreError:
        return  # said by the full check, under the lock
    if stored is None:
        return
    stored_dtype = store_dtype_of(stored)
    if stored_dtype != dtype:
        raise FingerprintMismatchError(
            f"{store.root} keeps its features as {stored_dtype} and a store never mixes two: "
            f"leave --store-dtype out to keep {stored_dtype}, or use --overwrite to replace "
            f"them (store_dtype: {stored_dtype} (store) vs {dtype} (this run))"
        )
    differences = known_differences(stored, {**spec.known_fields(), "store_dtype": dtype})
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


def _last_run(images_dir, summary: EmbedSummary) -> dict:
    return {
        "status": "complete",
        "images_dir": str(Path(images_dir).resolve()),
        "embedded": summary.embedded,
        "skipped": summary.skipped,
        "already_present": summary.already_present,
        "not_read": summary.not_read,
        "not_images": summary.not_images,
        "removed": summary.removed,
        "copies_removed": summary.copies_removed,
        "device": summary.device,
        "seconds": round(summary.seconds, 3),
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
